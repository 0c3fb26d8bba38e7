"""Real SemanticKITTI frames as other sensors would deliver them (for ``benchmarks/bench_sensors.py`` and tests).

Every variant goes through the same reader rules a real source would (``points.py`` via a PointCloud2 message),
so it tests what a user's driver hands the pipeline: intensity 0..255 (Velodyne, Hesai, Livox drivers), points
in a random order (a voxel filter, a merging driver), every 2nd or 4th laser (a 32- or 16-beam sensor), an
organised 64 x N cloud with NaN no-return cells and a ring per row (Ouster-style), and a second camera.

The laser of each KITTI point, needed only to build the sparser and organised variants, comes from the scan's
storage order (each laser's sweep is stored in turn; a new one starts where the azimuth steps back by more than
half a turn). The method under test never sees it unless a variant passes it as ``Frame.ring``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..io.kitti import KittiSequenceReader
from ..io.pointcloud2 import cloud_to_scan, encode_pointcloud2
from ..semantickitti import read_train_ids
from ..types import Frame

KITTI_LASERS = 64


@dataclass
class LabelledFrame:
    """A frame and the 0-based train id of each of its points (-1 = ignore)."""

    name: str
    frame: Frame
    gt: np.ndarray


def kitti_frames(sequence_dir: str | Path, cameras: tuple[int, ...] = (2,), frames: slice | None = None
                 ) -> Iterator[LabelledFrame]:
    """The frames of a SemanticKITTI sequence as the KITTI reader delivers them, with their ground truth."""
    reader = KittiSequenceReader(sequence_dir, frames=frames, load_labels=True, cameras=cameras)
    root = Path(sequence_dir)
    for frame in reader:
        gt = read_train_ids(root / "labels" / f"{frame.index:06d}.label", frame.points.shape[0])
        yield LabelledFrame(f"{root.name}/{frame.index:06d}", frame, gt)


def kitti_lasers(points: np.ndarray) -> np.ndarray:
    """(N,) laser index 0..63 of a KITTI scan from its storage order (see the module doc)."""
    azimuth = np.arctan2(points[:, 1], points[:, 0])
    laser = np.r_[0, np.cumsum(np.diff(azimuth) < -np.pi)]
    return np.minimum(laser, KITTI_LASERS - 1).astype(np.int32)


def _message(cloud: np.ndarray) -> SimpleNamespace:
    """A PointCloud2-like message (the duck type the decoder reads) holding a structured array."""
    d = encode_pointcloud2(cloud)
    fields = [SimpleNamespace(name=n, offset=o, datatype=t, count=c) for n, o, t, c in d["fields"]]
    return SimpleNamespace(**{**d, "fields": fields})


def _as_read(frame: Frame, cloud: np.ndarray) -> Frame:
    """The frame whose points are what the reader makes of ``cloud`` (intensity rule, ring field or rows)."""
    scan = cloud_to_scan(_message(cloud))
    return replace(frame, points=scan.points, ring=scan.ring, layout=scan.layout, seen_labels=None)


def intensity_255(item: LabelledFrame) -> LabelledFrame:
    """Intensity published as uint8 0..255, as Velodyne, Hesai and Livox drivers do."""
    p = item.frame.points
    cloud = np.zeros(p.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "u1")])
    for i, c in enumerate("xyz"):
        cloud[c] = p[:, i]
    cloud["intensity"] = np.round(np.clip(p[:, 3], 0, 1) * 255).astype(np.uint8)
    return replace(item, frame=_as_read(item.frame, cloud))


def random_order(item: LabelledFrame, seed: int = 0) -> LabelledFrame:
    """The same points in a random order (ground truth permuted alike)."""
    perm = np.random.default_rng(seed).permutation(item.frame.points.shape[0])
    return replace(item, frame=replace(item.frame, points=item.frame.points[perm], ring=None), gt=item.gt[perm])


def every_nth_laser(item: LabelledFrame, n: int) -> LabelledFrame:
    """Only every ``n``-th laser (n = 2: a 32-beam sensor, 4: a 16-beam one), no ring field."""
    keep = kitti_lasers(item.frame.points) % n == 0
    return replace(item, frame=item.frame.subset(keep), gt=item.gt[keep])


def organised(item: LabelledFrame, width: int = 2048) -> LabelledFrame:
    """An organised 64 x ``width`` cloud (row = laser, column = azimuth bin), NaN where a cell got no return, as
    an Ouster-style driver publishes it; a cell hit twice keeps its first point (the others are dropped with
    their ground truth). The reader takes the rings from the rows."""
    p = item.frame.points
    row = kitti_lasers(p)
    col = np.floor((np.arctan2(p[:, 1], p[:, 0]) + np.pi) / (2 * np.pi) * width).astype(np.int64) % width
    cell = row * width + col
    first = np.zeros(p.shape[0], dtype=bool)
    first[np.unique(cell, return_index=True)[1]] = True
    cloud = np.zeros((KITTI_LASERS, width), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    for c in "xyz":
        cloud[c] = np.nan
    flat = cloud.reshape(-1)
    for i, c in enumerate(("x", "y", "z", "intensity")):
        flat[c][cell[first]] = p[first, i]
    gt = np.full(flat.shape[0], -1, dtype=item.gt.dtype)
    gt[cell[first]] = item.gt[first]
    return replace(item, frame=_as_read(item.frame, cloud), gt=gt)
