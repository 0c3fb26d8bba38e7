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
    tally = _Tally(unseen)
    tally.add_run(Path(run_dir), Path(gt_sequence))
    return tally.result()


def evaluate_fleet(fleet_dir: Path, gt_root: Path | None = None, unseen: list[str] | None = None) -> dict:
    """A fleet folder (``partlift label`` with several sources): {"pooled": metrics over every frame of every
    run, as if they were one run, "runs": {name: metrics of that run}, "ground_truth": {name: sequence}}.
    Each run's ground truth: ``gt_sequence_for``."""
    from .fleet import read_fleet_file

    fleet_dir = Path(fleet_dir)
    names = [s["name"] for s in read_fleet_file(fleet_dir)["sources"]]
    runs = [n for n in names if (fleet_dir / n / "labels").is_dir() and any((fleet_dir / n / "labels").iterdir())]
    if not runs:
        raise InputError(f"{fleet_dir}: no run of the fleet holds labels yet: run `partlift label` first")
    pooled, per_run, sequences = _Tally(unseen), {}, {}
    for name in runs:
        sequences[name] = gt_sequence_for(fleet_dir / name, gt_root)
        tally = _Tally(unseen)
        tally.add_run(fleet_dir / name, sequences[name])
        per_run[name] = tally.result()
        pooled.merge(tally)
    return {"pooled": pooled.result(), "runs": per_run, "ground_truth": {n: str(p) for n, p in sequences.items()}}


def gt_sequence_for(run_dir: Path, gt_root: Path | None = None) -> Path:
    """The ground-truth sequence of a run. Without ``gt_root``: the run's own source when it is a SemanticKITTI
    folder with labels/ (its ``source.yaml``). With it: ``gt_root`` itself when it holds labels/, else
    ``gt_root/sequences/<key>`` or ``gt_root/<key>``, the key being the source's folder name or bag name
    (a bag written by ``partlift kitti2bag seq/08 08.mcap`` finds sequence 08)."""
    from .label_job import read_source_spec

    source = read_source_spec(run_dir)
    path = Path(source.path if source is not None else "")
    if gt_root is None:
        if source is not None and source.kind == "kitti" and (path / "labels").is_dir():
            return path
        raise InputError(f"{run_dir}: its source {path or '(unknown: no source.yaml)'} is not a SemanticKITTI "
                         "folder with labels/; give the ground truth (GT_ROOT)")
    gt_root = Path(gt_root)
    if (gt_root / "labels").is_dir():
        return gt_root
    key = path.stem if path.suffix in (".mcap", ".db3") else path.name
    tried = [gt_root / "sequences" / key, gt_root / key]
    for candidate in tried:
        if (candidate / "labels").is_dir():
            return candidate
    raise InputError(f"{run_dir}: no ground truth for its source {path}: tried " + ", ".join(map(str, tried)))


class _Tally:
    """The sums behind the metrics, over the frames of one or several runs."""

    def __init__(self, unseen: list[str] | None) -> None:
        self.names = list(SEMANTIC_KITTI_CLASSES)
        self.unseen = list(DEFAULT_UNSEEN if unseen is None else unseen)
        c = len(self.names)
        self.front, self.everywhere, self.ceiling = ConfusionAccumulator(c), ConfusionAccumulator(c), ConfusionAccumulator(c)
        self.frames = self.labelled = self.covered = self.correct = 0
        self.superpoints: list[int] = []
        self.crop_pred: list[np.ndarray] = []
        self.crop_gt: list[np.ndarray] = []

    def merge(self, other: "_Tally") -> None:
        for mine, theirs in ((self.front, other.front), (self.everywhere, other.everywhere),
                             (self.ceiling, other.ceiling)):
            mine.confusion += theirs.confusion
            mine.frames += theirs.frames
        self.frames += other.frames
        self.labelled += other.labelled
        self.covered += other.covered
        self.correct += other.correct
        self.superpoints += other.superpoints
        self.crop_pred += other.crop_pred
        self.crop_gt += other.crop_gt

    def add_run(self, run_dir: Path, gt_sequence: Path) -> None:
        from .io.writers import read_run_classes, read_run_labels
        from .semantickitti import read_train_ids, run_to_train_ids

        classes = read_run_classes(run_dir)
        run_to_train_ids(np.zeros(0, np.int32), classes)  # refuses classes without a SemanticKITTI name up front
        indices = sorted(int(p.stem) for p in (run_dir / "labels").glob("*.label"))
        if not indices:
            raise InputError(f"{run_dir}/labels holds no .label files: run `partlift label` first")
        if not (gt_sequence / "labels").is_dir():
            raise InputError(f"{gt_sequence} has no labels/ folder with ground truth")

        in_front_view = front_view_projector(gt_sequence)
        c = len(self.names)
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
            self.front.add(pred[fv], gt[fv])
            self.everywhere.add(pred, gt)
            majority = instance_ceiling(sp[fv], gt[fv], c)
            self.ceiling.add(majority, gt[fv])
            crops = _crop_items(run_dir, index, classes, sp[fv], majority)
            if crops is not None:
                self.crop_pred.append(crops[0])
                self.crop_gt.append(crops[1])
            self.labelled += int((gt[fv] >= 0).sum())
            self.covered += int(((gt[fv] >= 0) & (pred[fv] >= 0)).sum())
            self.correct += int(((gt[fv] >= 0) & (pred[fv] == gt[fv])).sum())
            self.superpoints.append(int(sp.max()) + 1 if sp.size and sp.max() >= 0 else 0)
        self.frames += len(indices)

    def result(self) -> dict:
        names, unseen = self.names, self.unseen
        c = len(names)
        front, everywhere, ceiling = self.front, self.everywhere, self.ceiling
        unseen_ids = [names.index(u) for u in unseen if u in names]
        iou_front, iou_all, iou_ceiling = front.iou(), everywhere.iou(), ceiling.iou()
        present = (front.confusion.sum(axis=1) > 0)

        def num(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        h = front.hiou(unseen_ids) if unseen_ids else {"hiou": float("nan"), "seen": float("nan"), "unseen": float("nan")}
        return {
            "frames": self.frames,
            "miou_front": num(front.miou()),
            "miou_all": num(everywhere.miou()),
            "hiou": num(h["hiou"]),
            "miou_seen_front": num(h["seen"]),
            "miou_unseen_front": num(h["unseen"]),
            "unseen_classes": unseen,
            "accuracy": self.correct / self.covered if self.covered else None,
            "coverage": self.covered / self.labelled if self.labelled else None,
            # Runs without superpoints (a student's) have no ceiling.
            "ceiling_miou_front": num(ceiling.miou()) if max(self.superpoints) > 0 else None,
            "superpoints_per_frame_median": float(np.median(self.superpoints)),
            # CLIP's own crop classification (before affinity) per superpoint, and what chance would give.
            "crops": (agreement_beyond_chance(np.concatenate(self.crop_pred), np.concatenate(self.crop_gt), c)
                      if self.crop_pred else None),
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
    from .io.writers import frame_path, read_frame_arrays
    from .semantickitti import run_to_train_ids

    if not frame_path(run_dir, index).is_file():
        return None
    arrays = read_frame_arrays(run_dir, index, ["instance_scores", "instance_valid"])
    if arrays.get("instance_scores", np.zeros(0)).size == 0:
        return None
    scores, has_crop = arrays["instance_scores"], arrays["instance_valid"].astype(bool)
    majority_of = np.full(has_crop.size, IGNORE, dtype=np.int32)
    voted = (sp >= 0) & (sp < has_crop.size) & (majority >= 0)
    majority_of[sp[voted]] = majority[voted]  # every point of a superpoint holds the same majority
    keep = has_crop & (majority_of >= 0)
    return run_to_train_ids(scores[keep].argmax(axis=1), classes), majority_of[keep]
