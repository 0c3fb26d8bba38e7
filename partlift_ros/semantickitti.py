"""SemanticKITTI label conventions: raw ids -> the 19 training classes, colours, .label reading.

Id spaces: *raw* ids are what ``.label`` files hold (e.g. 10 car, 40 road, 252 moving car); *train* ids
are 0..18 in ``SEMANTIC_KITTI_CLASSES`` order; *run* class ids index a run's own ``classes.yaml``.
``raw_to_train_ids``, ``train_to_run_ids`` and ``run_to_train_ids`` are the only conversions; names say which space they return.

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

IGNORE_SLOT = len(SEMANTIC_KITTI_CLASSES)  # the last row of the lookup tables below holds IGNORE

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


def raw_to_train_ids(raw: np.ndarray) -> np.ndarray:
    """uint32 SemanticKITTI labels (instance << 16 | raw semantic id) -> (N,) int32 train ids, -1 = ignore.

    The only raw -> train conversion: call it once, on what a ``.label`` file or a reader's
    ``read_labels`` holds, never on train ids (train id 10 would be read as raw 10, "car").
    """
    raw = np.asarray(raw)
    if raw.dtype.kind != "u":
        # Train ids are signed (IGNORE = -1); raw labels are uint32 as stored. Refusing signed input
        # stops a second conversion, which would silently turn train ids into other classes.
        raise InputError(f"raw labels must be unsigned integers (uint32 as in .label files), got dtype {raw.dtype}")
    return _LUT[(raw.astype(np.uint32) & 0xFFFF).astype(np.int64)]


def train_to_run_ids(train: np.ndarray, class_names: list[str], only: list[str] | None = None) -> np.ndarray:
    """(N,) train ids -> (N,) int32 ids into ``class_names`` (a run's classes), matched by name.

    Train classes missing from ``class_names`` (or from ``only`` when given) and IGNORE become IGNORE.
    """
    table = np.full(IGNORE_SLOT + 1, IGNORE, dtype=np.int32)
    for k, name in enumerate(SEMANTIC_KITTI_CLASSES):
        if name in class_names and (only is None or name in only):
            table[k] = class_names.index(name)
    train = np.asarray(train)
    return table[np.where((train >= 0) & (train < IGNORE_SLOT), train, IGNORE_SLOT)]


def run_to_train_ids(run: np.ndarray, class_names: list[str]) -> np.ndarray:
    """(N,) ids into ``class_names`` (IGNORE = -1) -> (N,) int32 train ids, matched by name.

    Raises InputError for a class without a SemanticKITTI counterpart: such a run cannot be scored.
    """
    unknown = [c for c in class_names if c not in SEMANTIC_KITTI_CLASSES]
    if unknown:
        raise InputError(
            f"classes {unknown} have no SemanticKITTI counterpart; evaluation needs names from {SEMANTIC_KITTI_CLASSES}"
        )
    table = np.array([SEMANTIC_KITTI_CLASSES.index(c) for c in class_names] + [IGNORE], dtype=np.int32)
    run = np.asarray(run)
    return table[np.where((run >= 0) & (run < len(class_names)), run, len(class_names))]


def colorize(labels: np.ndarray) -> np.ndarray:
    """(N,) train ids -> (N, 3) uint8 RGB; ignored points are black."""
    labels = np.asarray(labels)
    out = np.empty((labels.shape[0], 3), dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(PALETTE))
    out[valid] = PALETTE[labels[valid]]
    out[~valid] = IGNORE_COLOR
    return out


def read_raw_labels(path: str | os.PathLike, n_points: int) -> np.ndarray:
    """Read a ``.label`` file: (n_points,) uint32 raw SemanticKITTI labels (instance << 16 | semantic id).

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
    return np.fromfile(path, dtype="<u4")


def read_train_ids(path: str | os.PathLike, n_points: int) -> np.ndarray:
    """Read a ``.label`` file: (n_points,) int32 train ids (0..18 in SEMANTIC_KITTI_CLASSES order, -1 = ignore)."""
    return raw_to_train_ids(read_raw_labels(path, n_points))

