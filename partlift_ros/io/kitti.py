"""SemanticKITTI / KITTI odometry sequence folders -> Frame, one scan at a time.

Layout (one sequence): ``velodyne/NNNNNN.bin`` (float32 x y z intensity), ``image_2/NNNNNN.png``
(left colour camera), ``calib.txt`` (P2, Tr), ``times.txt`` (seconds, line i = frame i) and, for
labels, ``labels/NNNNNN.label`` (uint32: low 16 bits semantic id, high 16 bits instance id).
The folder listing and calibration are checked up front; scans and images are read per frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..calibration import parse_kitti_calib
from ..types import CameraView, Frame, InputError

LIDAR_FRAME_ID = "velodyne"
CAMERA_FRAME_ID = "camera_color_left"


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


def read_scan(path: Path) -> np.ndarray:
    """(N, 4) float32 points of a KITTI ``.bin``, with the checks every scan must pass."""
    size = path.stat().st_size
    if size % 16:
        raise InputError(f"{path}: size {size} bytes is not a multiple of 16 (float32 x, y, z, intensity)")
    if size == 0:
        raise InputError(f"{path}: empty scan (0 points)")
    points = np.fromfile(path, dtype="<f4").reshape(-1, 4)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise InputError(f"{path}: {int(bad.sum())} of {len(points)} points have NaN/inf values")
    return points.astype(np.float32, copy=False)


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
    with one label per point (checked from the file size in ``read``).
    """

    def __init__(self, sequence_dir: str | Path, frames: slice | None = None, load_labels: bool = False) -> None:
        self.root = Path(sequence_dir)
        self.load_labels = bool(load_labels)
        if not self.root.is_dir():
            raise InputError(f"KITTI sequence folder not found: {self.root}")
        for name in ("velodyne", "image_2"):
            if not (self.root / name).is_dir():
                raise InputError(f"{self.root}: missing folder {name}/")
        for name in ("calib.txt", "times.txt"):
            if not (self.root / name).is_file():
                raise InputError(f"{self.root}: missing file {name}")

        scans = _numbered_files(self.root / "velodyne", ".bin")
        images = _numbered_files(self.root / "image_2", ".png")
        if not scans:
            raise InputError(f"{self.root / 'velodyne'}: no .bin scans")
        self._check_same_numbers(scans, images, "velodyne/*.bin", "image_2/*.png")
        all_indices = sorted(scans)
        selected = all_indices[frames] if frames is not None else all_indices
        if not selected:
            raise InputError(f"{self.root}: frame selection {frames} is empty ({len(all_indices)} frames)")
        self._indices = selected
        self._scans, self._images = scans, images

        if self.load_labels:
            if not (self.root / "labels").is_dir():
                raise InputError(f"{self.root}: missing folder labels/ (load_labels=True)")
            labels = _numbered_files(self.root / "labels", ".label")
            missing = [i for i in selected if i not in labels]
            if missing:
                raise InputError(f"{self.root / 'labels'}: no .label for frames {missing[:10]}")

        self.calib = parse_kitti_calib(self.root / "calib.txt")
        self._times = _read_times(self.root / "times.txt")
        if self._times.size <= selected[-1]:
            raise InputError(
                f"{self.root / 'times.txt'}: {self._times.size} timestamps, but frame {selected[-1]} needs "
                f"line {selected[-1] + 1}"
            )
        # Every image of a sequence comes from the same camera: the first one sets the size.
        self.image_size = _png_size(images[all_indices[0]])

    def _check_same_numbers(self, scans: dict, images: dict, scan_desc: str, image_desc: str) -> None:
        no_image = sorted(set(scans) - set(images))
        no_scan = sorted(set(images) - set(scans))
        if no_image:
            raise InputError(f"{self.root}: scans without an image ({scan_desc} but no {image_desc}): {no_image[:10]}")
        if no_scan:
            raise InputError(f"{self.root}: extra images without a scan ({image_desc} but no {scan_desc}): {no_scan[:10]}")

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
        points = read_scan(self._scans[index])
        if self.load_labels:
            self._check_label_count(index, points.shape[0])
        image = read_rgb(self._images[index])
        width, height = image.shape[1], image.shape[0]
        if (width, height) != self.image_size:
            raise InputError(
                f"{self._images[index]}: image is {width}x{height}, but the sequence's first image is "
                f"{self.image_size[0]}x{self.image_size[1]}"
            )
        camera = CameraView(
            image=image, K=self.calib.K.copy(), T_cam_lidar=self.calib.T_cam_lidar.copy(), frame_id=CAMERA_FRAME_ID
        )
        return Frame(
            points=points, cameras=[camera], stamp=float(self._times[index]), index=index, frame_id=LIDAR_FRAME_ID
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
