"""SemanticKITTI / KITTI odometry sequence folders -> Frame, one scan at a time.

Layout (one sequence): ``velodyne/NNNNNN.bin`` (float32 x y z intensity), ``image_2/NNNNNN.png``
(left colour camera) and optionally ``image_3/NNNNNN.png`` (right colour camera), ``calib.txt`` (P2, P3,
Tr), ``times.txt`` (seconds, line i = frame i) and, for labels, ``labels/NNNNNN.label`` (uint32: low
16 bits semantic id, high 16 bits instance id). The folder listing and calibration are checked up
front; scans and images are read per frame.

Cameras: ``cameras=(2,)`` (the default) reads the left colour camera, ``(2, 3)`` both colour cameras
(each projected with its own P). A frame holds the cameras that have an image of it, in the order given
(the rule the bag reader and the node follow for a missing camera); a scan no camera saw is an error.
Points follow the one rule of ``points.py``: non-finite rows are kept (they get no label) and the
intensity is normalised to 0..1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..calibration import parse_kitti_calib
from ..points import finite_points_mask, normalise_intensity
from ..types import CameraView, Frame, InputError

LIDAR_FRAME_ID = "velodyne"
CAMERA_FRAME_ID = "camera_color_left"
# KITTI camera number -> (image folder, frame id): the two colour cameras of the odometry benchmark.
KITTI_CAMERAS = {2: ("image_2", CAMERA_FRAME_ID), 3: ("image_3", "camera_color_right")}


def _numbered_files(folder: Path, suffix: str) -> dict[int, Path]:
    """File number -> path for ``folder/NNNNNN<suffix>``; other names are an error."""
    out: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.suffix != suffix or path.name.startswith("."):
            continue
        if not path.stem.isdigit():
            raise InputError(f"{path}: expected a numbered file name like 000000{suffix}")
        out[int(path.stem)] = path
    return out


def _read_times(path: Path) -> np.ndarray:
    try:
        times = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as exc:
        raise InputError(f"{path}: not one number per line ({exc})") from exc
    if times.ndim != 1:
        raise InputError(f"{path}: expected one timestamp per line, got shape {times.shape}")
    if not np.isfinite(times).all():
        raise InputError(f"{path}: contains NaN/inf timestamps")
    return times


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc


def read_scan(path: Path, intensity_scale: str | float = "auto") -> np.ndarray:
    """(N, 4) float32 points of a KITTI ``.bin`` (intensity normalised, non-finite rows kept; ``points.py``)."""
    size = path.stat().st_size
    if size % 16:
        raise InputError(f"{path}: size {size} bytes is not a multiple of 16 (float32 x, y, z, intensity)")
    if size == 0:
        raise InputError(f"{path}: empty scan (0 points)")
    points = np.fromfile(path, dtype="<f4").reshape(-1, 4).astype(np.float32)
    if not finite_points_mask(points).any():
        raise InputError(f"{path}: every one of the {len(points)} points has NaN/inf coordinates")
    points[:, 3] = normalise_intensity(points[:, 3], np.float32, intensity_scale)
    return points


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: cannot be read as an image")
    return np.ascontiguousarray(bgr[:, :, ::-1])


class KittiSequenceReader:
    """Frames of one sequence folder (e.g. ``.../sequences/08``), read lazily.

    ``frames`` slices the sorted list of frame numbers (``slice(0, 3)`` = the first three frames).
    ``read(i)`` takes a position in that selection; ``Frame.index`` and ``read_labels(index)``
    use the file number. With ``load_labels`` every selected scan must have a ``labels/`` file
    with one label per point (checked from the file size in ``read``). ``cameras``: KITTI camera
    numbers (2, 3), see the module doc.
    """

    def __init__(
        self,
        sequence_dir: str | Path,
        frames: slice | None = None,
        load_labels: bool = False,
        cameras: tuple[int, ...] | list[int] = (2,),
        intensity_scale: str | float = "auto",
    ) -> None:
        self.root = Path(sequence_dir)
        self.load_labels = bool(load_labels)
        self.intensity_scale = intensity_scale
        self.cameras = tuple(int(c) for c in cameras)
        unknown = [c for c in self.cameras if c not in KITTI_CAMERAS]
        if not self.cameras or unknown or len(set(self.cameras)) != len(self.cameras):
            raise InputError(f"cameras: expected distinct KITTI colour cameras from {sorted(KITTI_CAMERAS)}, got {list(cameras)}")
        if not self.root.is_dir():
            raise InputError(f"KITTI sequence folder not found: {self.root}")
        folders = [KITTI_CAMERAS[c][0] for c in self.cameras]
        for name in ("velodyne", *folders):
            if not (self.root / name).is_dir():
                raise InputError(f"{self.root}: missing folder {name}/")
        for name in ("calib.txt", "times.txt"):
            if not (self.root / name).is_file():
                raise InputError(f"{self.root}: missing file {name}")

        scans = _numbered_files(self.root / "velodyne", ".bin")
        if not scans:
            raise InputError(f"{self.root / 'velodyne'}: no .bin scans")
        self._images = [_numbered_files(self.root / name, ".png") for name in folders]
        for name, images in zip(folders, self._images):
            extra = sorted(set(images) - set(scans))
            if extra:
                raise InputError(f"{self.root}: extra images without a scan ({name}/*.png but no velodyne/*.bin): {extra[:10]}")
        unseen = sorted(i for i in scans if not any(i in images for images in self._images))
        if unseen:
            raise InputError(
                f"{self.root}: scans without an image (velodyne/*.bin but no {' or '.join(f'{n}/*.png' for n in folders)}): "
                f"{unseen[:10]}"
            )
        all_indices = sorted(scans)
        selected = all_indices[frames] if frames is not None else all_indices
        if not selected:
            raise InputError(f"{self.root}: frame selection {frames} is empty ({len(all_indices)} frames)")
        self._indices = selected
        self._scans = scans

        if self.load_labels:
            if not (self.root / "labels").is_dir():
                raise InputError(f"{self.root}: missing folder labels/ (load_labels=True)")
            labels = _numbered_files(self.root / "labels", ".label")
            missing = [i for i in selected if i not in labels]
            if missing:
                raise InputError(f"{self.root / 'labels'}: no .label for frames {missing[:10]}")

        self.calibs = [parse_kitti_calib(self.root / "calib.txt", c) for c in self.cameras]
        self.calib = self.calibs[0]
        self._times = _read_times(self.root / "times.txt")
        if self._times.size <= selected[-1]:
            raise InputError(
                f"{self.root / 'times.txt'}: {self._times.size} timestamps, but frame {selected[-1]} needs "
                f"line {selected[-1] + 1}"
            )
        # Every image of a camera comes from the same sensor: the first one sets its size.
        self.image_sizes = [_png_size(images[min(images)]) if images else (0, 0) for images in self._images]
        self.image_size = self.image_sizes[0]

    @property
    def frame_indices(self) -> list[int]:
        """File numbers of the selected frames, in order."""
        return list(self._indices)

    @property
    def stamps(self) -> np.ndarray:
        return self._times[self._indices]

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self.read(i)

    def read(self, i: int) -> Frame:
        """The i-th selected frame (negative i counts from the end)."""
        n = len(self._indices)
        if not -n <= i < n:
            raise IndexError(f"frame position {i} out of range for {n} frames")
        index = self._indices[i]
        points = read_scan(self._scans[index], self.intensity_scale)
        if self.load_labels:
            self._check_label_count(index, points.shape[0])
        views = []
        for camera, images, calib, size in zip(self.cameras, self._images, self.calibs, self.image_sizes):
            if index not in images:
                continue
            image = read_rgb(images[index])
            width, height = image.shape[1], image.shape[0]
            if (width, height) != size:
                raise InputError(
                    f"{images[index]}: image is {width}x{height}, but the camera's first image is {size[0]}x{size[1]}"
                )
            views.append(CameraView(
                image=image, K=calib.K.copy(), T_cam_lidar=calib.T_cam_lidar.copy(), frame_id=KITTI_CAMERAS[camera][1]
            ))
        return Frame(
            points=points, cameras=views, stamp=float(self._times[index]), index=index, frame_id=LIDAR_FRAME_ID
        )

    def _label_path(self, index: int) -> Path:
        path = self.root / "labels" / f"{index:06d}.label"
        if not path.is_file():
            raise InputError(f"label file not found: {path}")
        return path

    def _check_label_count(self, index: int, num_points: int) -> None:
        path = self._label_path(index)
        size = path.stat().st_size
        if size % 4 or size // 4 != num_points:
            raise InputError(f"{path}: {size / 4:g} labels (uint32) for {num_points} points in the scan")

    def read_labels(self, index: int) -> np.ndarray:
        """Raw uint32 SemanticKITTI labels of frame number ``index`` (one per point of its scan)."""
        if index not in self._scans:
            raise InputError(f"{self.root}: no frame {index}")
        path = self._label_path(index)
        scan_size = self._scans[index].stat().st_size
        self._check_label_count(index, scan_size // 16)
        return np.fromfile(path, dtype="<u4")
