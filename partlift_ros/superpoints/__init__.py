"""Superpoints: the over-segmentation that CLIP labels one piece at a time (one module per idea).

``segment_superpoints`` is the per-frame entry; ``image_free_cues`` computes the supervoxel method's image-free
part (``cues.py``) apart, so that a caller can run it while the images are segmented. Two methods, chosen by
``ClusteringConfig.method``:

- ``"supervoxel"`` (``supervoxel.py``): annotation-free over-segmentation of all eligible points, ground included,
  into class-pure pieces merged down to a budget that follows the view (``budget.py``), using the ground
  (``ground.py``), the scan lines (``rings.py``: given rings or traced from elevation angles, never the storage
  order), range-image cues on them (``scan.py``), initial pieces (``pieces.py``) and the merge (``merge.py``).
- ``"dbscan"`` (``dbscan.py``): RANSAC ground removal, then DBSCAN (the paper's simple baseline).

``max_range`` (off by default) gives points further from the sensor no superpoint: beyond ~50 m a KITTI scan has
a few points per object, and SemanticKITTI labels nothing there.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from ..calibration import Projection
from ..config import ClusteringConfig
from ..types import InputError
from .cues import ScanCues, scan_cues
from .dbscan import dbscan_superpoints
from .supervoxel import supervoxel_superpoints

__all__ = ["ScanCues", "image_free_cues", "segment_superpoints"]


def image_free_cues(
    points: np.ndarray,
    cfg: ClusteringConfig,
    eligible: np.ndarray | None = None,
    ring: np.ndarray | None = None,
    executor: Executor | None = None,
) -> ScanCues | None:
    """What the supervoxel method computes without the images (``cues.py``), to hand to ``segment_superpoints``
    as ``cues`` with the same arguments; None for the dbscan method. The ground fit runs on ``executor`` when
    given, beside the scan lines."""
    points, eligible = _checked_points(points, cfg, eligible, ring)
    if cfg.method != "supervoxel":
        return None
    return scan_cues(points, cfg, eligible, ring, executor)


def segment_superpoints(
    points: np.ndarray,
    cfg: ClusteringConfig,
    eligible: np.ndarray | None = None,
    views: list[tuple[Projection, np.ndarray]] | None = None,
    regions: list[np.ndarray] | None = None,
    ring: np.ndarray | None = None,
    cues: ScanCues | None = None,
) -> np.ndarray:
    """(N,) int32 superpoint ids 0..M-1, IGNORE for points that are not eligible or not clustered.

    ``eligible`` (N,) bool restricts clustering to some points (front-view points, or points without a
    seen label in the zero-shot mode). ``views`` holds, per camera, the projection of all N points and
    the image superpixel map (H, W) int32; the supervoxel method uses them as colour-boundary cues.
    ``regions`` (optional) holds, per view, a second map (H, W) of graph image regions: with
    ``ground_region_k`` > 0 the supervoxel method cuts the ground by them instead of the superpixels
    (``image_regions.segment_image`` computes both maps). ``ring`` (N,) is each point's laser index when the
    source knows it (``Frame.ring``); otherwise scan lines are traced from elevation angles (``rings.py``).
    Points must be finite (``LabelPipeline.geometry`` hands over the finite ones). ``cues`` (optional) are
    ``image_free_cues`` of the same points, eligible mask and rings, computed while the images were segmented.
    """
    points, eligible = _checked_points(points, cfg, eligible, ring)
    n = points.shape[0]
    if cues is not None and (cues.num_points != n or cues.idx.size != int(eligible.sum())):
        raise InputError(f"segment_superpoints: cues of {cues.idx.size} of {cues.num_points} points, but "
                         f"{int(eligible.sum())} of {n} points are eligible")
    for i, (proj, sp_map) in enumerate(views or []):
        if proj.in_image.shape[0] != n:
            raise InputError(f"segment_superpoints: view {i} projects {proj.in_image.shape[0]} points, expected {n}")
        if np.asarray(sp_map).ndim != 2:
            raise InputError(f"segment_superpoints: view {i} superpixel map must be (H, W), got {np.shape(sp_map)}")
    if regions is not None:
        if len(regions) != len(views or []):
            raise InputError(f"segment_superpoints: {len(regions)} region maps for {len(views or [])} views")
        for i, ((_, sp_map), region_map) in enumerate(zip(views or [], regions)):
            if np.shape(region_map) != np.shape(sp_map):
                raise InputError(
                    f"segment_superpoints: view {i} region map is {np.shape(region_map)} but its superpixel map "
                    f"{np.shape(sp_map)}"
                )
    if cfg.method == "dbscan":
        return dbscan_superpoints(points, cfg, eligible)
    return supervoxel_superpoints(points, cfg, eligible, views or [], regions, ring, cues)


def _checked_points(
    points: np.ndarray, cfg: ClusteringConfig, eligible: np.ndarray | None, ring: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(points, eligible mask with ``max_range`` applied), or InputError for arrays that do not fit."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4:
        raise InputError(f"segment_superpoints: points must be (N, 4) x y z intensity, got {points.shape}")
    n = points.shape[0]
    if eligible is None:
        eligible = np.ones(n, dtype=bool)
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.shape != (n,):
        raise InputError(f"segment_superpoints: eligible mask has shape {eligible.shape}, expected ({n},)")
    if ring is not None and np.shape(ring) != (n,):
        raise InputError(f"segment_superpoints: ring has shape {np.shape(ring)}, expected ({n},)")
    if cfg.method not in ("supervoxel", "dbscan"):
        raise InputError(f"clustering.method: expected 'supervoxel' or 'dbscan', got {cfg.method!r}")
    if cfg.max_range > 0:  # beyond it the scan is too sparse to split into objects (see the module docstring)
        eligible = eligible & (np.linalg.norm(np.asarray(points[:, :3], dtype=np.float64), axis=1) < cfg.max_range)
    return points, eligible
