"""`partlift eval`: compare a label run with SemanticKITTI ground truth.

Front-view metrics use the points that project into the camera image (the only ones a camera-lifted
labeller can label); "all" metrics use every labelled point, so points outside the image count as misses.
hIoU, accuracy and coverage are computed on front-view points. ``crops``: CLIP's class of each superpoint's
crop (before affinity) against the superpoint's majority ground-truth class, with the chance level and
Cohen's kappa (metrics.agreement_beyond_chance): it tells trained CLIP weights from untrained ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import parse_kitti_calib, project_points
from .config import DEFAULT_UNSEEN, SEMANTIC_KITTI_CLASSES
from .metrics import ConfusionAccumulator, agreement_beyond_chance, instance_ceiling
from .types import IGNORE, InputError


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
    from .semantickitti import read_train_ids, run_to_train_ids

    run_dir, gt_sequence = Path(run_dir), Path(gt_sequence)
    classes = read_run_classes(run_dir)
    run_to_train_ids(np.zeros(0, np.int32), classes)  # refuses classes without a SemanticKITTI name up front
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
    crop_pred: list[np.ndarray] = []
    crop_gt: list[np.ndarray] = []
    for index in indices:
        scan = gt_sequence / "velodyne" / f"{index:06d}.bin"
        if not scan.is_file():
            raise InputError(f"run frame {index} has no scan {scan} in the ground-truth sequence")
        points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
        gt = read_train_ids(gt_sequence / "labels" / f"{index:06d}.label", points.shape[0])
        pred_run, sp = read_run_labels(run_dir, index)
        if pred_run.shape[0] != points.shape[0]:
            raise InputError(
                f"frame {index}: run has {pred_run.shape[0]} labels but the scan has {points.shape[0]} points"
            )
        pred = run_to_train_ids(pred_run, classes)
        fv = in_front_view(points)
        front.add(pred[fv], gt[fv])
        everywhere.add(pred, gt)
        majority = instance_ceiling(sp[fv], gt[fv], c)
        ceiling.add(majority, gt[fv])
        crops = _crop_items(run_dir, index, classes, sp[fv], majority)
        if crops is not None:
            crop_pred.append(crops[0])
            crop_gt.append(crops[1])
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
        # CLIP's own crop classification (before affinity) per superpoint, and what chance would give.
        "crops": agreement_beyond_chance(np.concatenate(crop_pred), np.concatenate(crop_gt), c) if crop_pred else None,
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


def _crop_items(run_dir: Path, index: int, classes: list[str], sp: np.ndarray, majority: np.ndarray):
    """Each superpoint with a CLIP crop, once: (its crop's class before affinity, its majority GT class), as
    train ids; None for a run without crops (a student's). ``sp`` and ``majority`` are per front-view point."""
    from .io.writers import frame_path
    from .semantickitti import run_to_train_ids

    path = frame_path(run_dir, index)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if "instance_scores" not in data.files or data["instance_scores"].size == 0:
            return None
        scores, has_crop = data["instance_scores"], data["instance_valid"].astype(bool)
    majority_of = np.full(has_crop.size, IGNORE, dtype=np.int32)
    voted = (sp >= 0) & (sp < has_crop.size) & (majority >= 0)
    majority_of[sp[voted]] = majority[voted]  # every point of a superpoint holds the same majority
    keep = has_crop & (majority_of >= 0)
    return run_to_train_ids(scores[keep].argmax(axis=1), classes), majority_of[keep]
