"""`partlift eval`: compare a label run with SemanticKITTI ground truth.

Front-view metrics use the points that project into the camera image (the only ones a camera-lifted
labeller can label); "all" metrics use every labelled point, so points outside the image count as misses.
hIoU, accuracy and coverage are computed on front-view points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import parse_kitti_calib, project_points
from .config import DEFAULT_UNSEEN, SEMANTIC_KITTI_CLASSES
from .metrics import ConfusionAccumulator, instance_ceiling
from .types import IGNORE, InputError


def run_to_kitti_ids(class_names: list[str]) -> np.ndarray:
    """Lookup (C + 1,) from run class ids (last slot = IGNORE) to SemanticKITTI train ids."""
    unknown = [c for c in class_names if c not in SEMANTIC_KITTI_CLASSES]
    if unknown:
        raise InputError(
            f"classes {unknown} have no SemanticKITTI counterpart; evaluation needs names from {SEMANTIC_KITTI_CLASSES}"
        )
    return np.array([SEMANTIC_KITTI_CLASSES.index(c) for c in class_names] + [IGNORE], dtype=np.int32)


def front_view_projector(gt_sequence: Path):
    """A function points -> (N,) bool: which points project into the sequence's left colour image."""
    from PIL import Image

    calib = parse_kitti_calib(gt_sequence / "calib.txt")
    images = sorted((gt_sequence / "image_2").glob("*.png"))
    if not images:
        raise InputError(f"{gt_sequence}/image_2 has no images: cannot tell which points are in the front view")
    with Image.open(images[0]) as im:
        size = im.size
    return lambda points: project_points(points, calib.K, calib.T_cam_lidar, size).in_image


def evaluate_run(run_dir: Path, gt_sequence: Path, unseen: list[str] | None = None) -> dict:
    """Metrics of the run in ``run_dir`` against the labels of ``gt_sequence`` (see module doc)."""
    from .io.writers import read_run_classes, read_run_labels
    from .semantickitti import map_raw_labels, read_label_file

    run_dir, gt_sequence = Path(run_dir), Path(gt_sequence)
    classes = read_run_classes(run_dir)
    lut = run_to_kitti_ids(classes)
    names = list(SEMANTIC_KITTI_CLASSES)
    unseen = list(DEFAULT_UNSEEN if unseen is None else unseen)
    unseen_ids = [names.index(c) for c in unseen if c in names]
    indices = sorted(int(p.stem) for p in (run_dir / "labels").glob("*.label"))
    if not indices:
        raise InputError(f"{run_dir}/labels holds no .label files: run `partlift label` first")
    if not (gt_sequence / "labels").is_dir():
        raise InputError(f"{gt_sequence} has no labels/ folder with ground truth")

    in_front_view = front_view_projector(gt_sequence)
    c = len(names)
    front, everywhere, ceiling = ConfusionAccumulator(c), ConfusionAccumulator(c), ConfusionAccumulator(c)
    labelled = covered = correct = 0
    superpoints: list[int] = []
    for index in indices:
        scan = gt_sequence / "velodyne" / f"{index:06d}.bin"
        if not scan.is_file():
            raise InputError(f"run frame {index} has no scan {scan} in the ground-truth sequence")
        points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
        gt = map_raw_labels(read_label_file(gt_sequence / "labels" / f"{index:06d}.label", points.shape[0]))
        pred_run, sp = read_run_labels(run_dir, index)
        if pred_run.shape[0] != points.shape[0]:
            raise InputError(
                f"frame {index}: run has {pred_run.shape[0]} labels but the scan has {points.shape[0]} points"
            )
        pred = lut[np.where(pred_run >= 0, pred_run, len(classes))]
        fv = in_front_view(points)
        front.add(pred[fv], gt[fv])
        everywhere.add(pred, gt)
        ceiling.add(instance_ceiling(sp[fv], gt[fv], c), gt[fv])
        labelled += int((gt[fv] >= 0).sum())
        covered += int(((gt[fv] >= 0) & (pred[fv] >= 0)).sum())
        correct += int(((gt[fv] >= 0) & (pred[fv] == gt[fv])).sum())
        superpoints.append(int(sp.max()) + 1 if sp.size and sp.max() >= 0 else 0)

    iou_front, iou_all, iou_ceiling = front.iou(), everywhere.iou(), ceiling.iou()
    present = (front.confusion.sum(axis=1) > 0)

    def num(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    h = front.hiou(unseen_ids) if unseen_ids else {"hiou": float("nan"), "seen": float("nan"), "unseen": float("nan")}
    return {
        "frames": len(indices),
        "miou_front": num(front.miou()),
        "miou_all": num(everywhere.miou()),
        "hiou": num(h["hiou"]),
        "miou_seen_front": num(h["seen"]),
        "miou_unseen_front": num(h["unseen"]),
        "unseen_classes": unseen,
        "accuracy": correct / covered if covered else None,
        "coverage": covered / labelled if labelled else None,
        # Runs without superpoints (a student's) have no ceiling.
        "ceiling_miou_front": num(ceiling.miou()) if max(superpoints) > 0 else None,
        "superpoints_per_frame_median": float(np.median(superpoints)),
        "classes_present_front": [n for n, p in zip(names, present) if p],
        "per_class": {
            n: {
                "iou_front": num(iou_front[i]),
                "iou_all": num(iou_all[i]),
                "ceiling_iou_front": num(iou_ceiling[i]),
                "gt_points_front": int(front.confusion[i].sum()),
            }
            for i, n in enumerate(names)
        },
    }
