"""The data that flows through the pipeline: one Frame in, one LabelledCloud out.

Conventions used everywhere in the core (files use their own, see io/writers.py):
- points are (N, 4) float32: x, y, z in the LiDAR frame (metres) and intensity in 0..1 (readers normalise
  it, see ``points.normalise_intensity``); rows with non-finite x, y or z are kept in place and get no
  label (``points.finite_points_mask``), so outputs line up with the input cloud;
- class ids are 0-based indices into the run's class list, ``IGNORE`` (-1) = no label;
- superpoint ids are 0-based, ``IGNORE`` (-1) = no superpoint (ground-removed, noise, invalid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = -1


class InputError(ValueError):
    """Input data that cannot be processed (wrong shape, NaN, missing files...).

    The message says what is wrong and where; callers (CLI, nodes) report it and move on.
    """


@dataclass
class CameraView:
    """One camera looking at the scan: a rectified RGB image and its calibration."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    K: np.ndarray  # (3, 3) intrinsics
    T_cam_lidar: np.ndarray  # (4, 4) maps LiDAR-frame points into the camera frame
    D: np.ndarray | None = None  # distortion (plumb_bob k1 k2 p1 p2 k3); None = rectified
    frame_id: str = "camera"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass
class Frame:
    """One synchronized LiDAR scan with the camera(s) that see it."""

    points: np.ndarray  # (N, 4) float32 x y z intensity
    cameras: list[CameraView]
    stamp: float = 0.0  # seconds
    index: int = 0  # frame number in its source (file name for SemanticKITTI)
    frame_id: str = "lidar"
    # Generalized zero-shot: per-point class ids (IGNORE where unknown) that are kept as given.
    seen_labels: np.ndarray | None = None
    # (N,) laser (ring) index of each point when the source knows it (a ring field or the rows of an
    # organised cloud); None = unknown, the superpoint stage then estimates rings from elevation angles.
    ring: np.ndarray | None = None
    # (height, width) of an organised cloud (points are its cells, row-major); None = unorganised.
    layout: tuple[int, int] | None = None

    @property
    def camera(self) -> CameraView:
        return self.cameras[0]

    def subset(self, keep: np.ndarray) -> "Frame":
        """The same frame with only the points selected by the (N,) bool mask ``keep`` (unorganised)."""
        keep = np.asarray(keep, dtype=bool)
        return Frame(
            points=self.points[keep], cameras=self.cameras, stamp=self.stamp, index=self.index,
            frame_id=self.frame_id,
            seen_labels=None if self.seen_labels is None else np.asarray(self.seen_labels)[keep],
            ring=None if self.ring is None else np.asarray(self.ring)[keep],
        )

    def validate(self) -> None:
        """Raise InputError with a specific message if the frame cannot be labelled."""
        p = self.points
        if not isinstance(p, np.ndarray) or p.ndim != 2 or p.shape[1] < 3:
            raise InputError(f"frame {self.index}: points must be an (N, 4) array, got shape {getattr(p, 'shape', None)}")
        if p.shape[0] == 0:
            raise InputError(f"frame {self.index}: empty scan (0 points)")
        from .points import finite_points_mask  # points.py imports this module

        if not finite_points_mask(p).any():
            raise InputError(f"frame {self.index}: every one of the {p.shape[0]} points has NaN/inf coordinates")
        if self.ring is not None and np.shape(self.ring) != (p.shape[0],):
            raise InputError(f"frame {self.index}: ring has shape {np.shape(self.ring)} for {p.shape[0]} points")
        if self.layout is not None and int(self.layout[0]) * int(self.layout[1]) != p.shape[0]:
            raise InputError(f"frame {self.index}: organised layout {tuple(self.layout)} does not hold {p.shape[0]} points")
        if not self.cameras:
            raise InputError(f"frame {self.index}: no camera image")
        for cam in self.cameras:
            img = cam.image
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise InputError(
                    f"frame {self.index}: camera {cam.frame_id!r} image must be (H, W, 3) uint8 RGB, "
                    f"got {img.shape} {img.dtype}"
                )
            if img.shape[0] == 0 or img.shape[1] == 0:
                raise InputError(f"frame {self.index}: camera {cam.frame_id!r} image is empty")
            K = np.asarray(cam.K, dtype=np.float64)
            if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
                raise InputError(f"frame {self.index}: camera {cam.frame_id!r} has an invalid K: {K.tolist()}")
            T = np.asarray(cam.T_cam_lidar, dtype=np.float64)
            if T.shape != (4, 4) or not np.isfinite(T).all():
                raise InputError(f"frame {self.index}: camera {cam.frame_id!r} has an invalid T_cam_lidar")
        if self.seen_labels is not None and len(self.seen_labels) != p.shape[0]:
            raise InputError(
                f"frame {self.index}: {len(self.seen_labels)} seen labels for {p.shape[0]} points"
            )


@dataclass
class LabelledCloud:
    """Per-point result of ``LabelPipeline.process`` for one frame.

    Per point (length N): ``label`` (class id or IGNORE), ``confidence`` (0 where ignored),
    ``instance`` (superpoint id or IGNORE), ``visible`` (seen by a camera, not occluded).
    Per instance (length M, row i = superpoint i): ``instance_scores`` (CLIP softmax, before
    affinity), ``instance_refined`` (after affinity), ``instance_features`` (normalised CLIP crop
    embeddings), ``instance_valid`` (had a usable crop and took part in labelling).
    """

    frame: Frame
    class_names: list[str]
    label: np.ndarray  # (N,) int32
    confidence: np.ndarray  # (N,) float32
    instance: np.ndarray  # (N,) int32
    visible: np.ndarray  # (N,) bool
    instance_scores: np.ndarray  # (M, C) float32
    instance_refined: np.ndarray  # (M, C) float32
    instance_features: np.ndarray  # (M, D) float32
    instance_valid: np.ndarray  # (M,) bool
    instance_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))  # (M, 4) u0 v0 u1 v1
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return int(self.label.shape[0])

    @property
    def num_instances(self) -> int:
        return int(self.instance_valid.shape[0])
