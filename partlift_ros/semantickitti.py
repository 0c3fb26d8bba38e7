"""SemanticKITTI label conventions: raw ids -> the 19 training classes, colours, .label reading.

The mapping is the standard ``learning_map`` of semantic-kitti.yaml, shifted to 0-based ids in the
order of ``config.SEMANTIC_KITTI_CLASSES``; unlabeled, outlier, other-structure and other-object
become ``IGNORE`` (-1), and the moving classes (252-259) fold onto their static counterparts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .config import SEMANTIC_KITTI_CLASSES
from .types import IGNORE, InputError

# raw semantic id -> class name (None = ignored), as in semantic-kitti.yaml's learning_map.
RAW_TO_NAME: dict[int, str | None] = {
    0: None,  # unlabeled
    1: None,  # outlier
    10: "car",
    11: "bicycle",
    13: "other-vehicle",  # bus
    15: "motorcycle",
    16: "other-vehicle",  # on-rails
    18: "truck",
    20: "other-vehicle",
    30: "person",
    31: "bicyclist",
    32: "motorcyclist",
    40: "road",
    44: "parking",
    48: "sidewalk",
    49: "other-ground",
    50: "building",
    51: "fence",
    52: None,  # other-structure
    60: "road",  # lane-marking
    70: "vegetation",
    71: "trunk",
    72: "terrain",
    80: "pole",
    81: "traffic-sign",
    99: None,  # other-object
    252: "car",  # moving-car
    253: "bicyclist",  # moving-bicyclist
    254: "person",  # moving-person
    255: "motorcyclist",  # moving-motorcyclist
    256: "other-vehicle",  # moving-on-rails
    257: "other-vehicle",  # moving-bus
    258: "truck",  # moving-truck
    259: "other-vehicle",  # moving-other-vehicle
}

# raw id -> 0-based training id, -1 where ignored.
LEARNING_MAP: dict[int, int] = {
    raw: (IGNORE if name is None else SEMANTIC_KITTI_CLASSES.index(name)) for raw, name in RAW_TO_NAME.items()
}

# The usual SemanticKITTI colours (semantic-kitti.yaml lists BGR; these are RGB), row i = class i.
PALETTE = np.array(
    [
        [100, 150, 245],  # car
        [100, 230, 245],  # bicycle
        [30, 60, 150],  # motorcycle
        [80, 30, 180],  # truck
        [0, 0, 255],  # other-vehicle
        [255, 30, 30],  # person
        [255, 40, 200],  # bicyclist
        [150, 30, 90],  # motorcyclist
        [255, 0, 255],  # road
        [255, 150, 255],  # parking
        [75, 0, 75],  # sidewalk
        [175, 0, 75],  # other-ground
        [255, 200, 0],  # building
        [255, 120, 50],  # fence
        [0, 175, 0],  # vegetation
        [135, 60, 0],  # trunk
        [150, 240, 80],  # terrain
        [255, 240, 150],  # pole
        [255, 0, 0],  # traffic-sign
    ],
    dtype=np.uint8,
)
IGNORE_COLOR = np.array([0, 0, 0], dtype=np.uint8)

# Dense lookup table over the 16-bit semantic id; unknown raw ids are ignored.
_LUT = np.full(1 << 16, IGNORE, dtype=np.int32)
for _raw, _cls in LEARNING_MAP.items():
    _LUT[_raw] = _cls


def map_raw_labels(raw: np.ndarray) -> np.ndarray:
    """uint32 SemanticKITTI labels (instance << 16 | semantic) -> (N,) int32 train ids, -1 = ignore."""
    raw = np.asarray(raw)
    if raw.dtype.kind not in "ui":
        raise InputError(f"raw labels must be integers, got dtype {raw.dtype}")
    return _LUT[(raw.astype(np.uint32) & 0xFFFF).astype(np.int64)]


def colorize(labels: np.ndarray) -> np.ndarray:
    """(N,) train ids -> (N, 3) uint8 RGB; ignored points are black."""
    labels = np.asarray(labels)
    out = np.empty((labels.shape[0], 3), dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(PALETTE))
    out[valid] = PALETTE[labels[valid]]
    out[~valid] = IGNORE_COLOR
    return out


def read_label_file(path: str | os.PathLike, n_points: int) -> np.ndarray:
    """Read a ``.label`` file and return (n_points,) int32 train ids (-1 = ignore).

    Raises InputError when the file is missing, truncated, or does not hold one label per point.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"label file not found: {path}")
    size = path.stat().st_size
    if size % 4 != 0:
        raise InputError(f"{path}: size {size} bytes is not a multiple of 4 (uint32 labels); file is truncated")
    if size // 4 != n_points:
        raise InputError(f"{path}: has {size // 4} labels but the scan has {n_points} points")
    return map_raw_labels(np.fromfile(path, dtype=np.uint32))
