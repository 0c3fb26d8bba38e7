"""Segmentation metrics: confusion, IoU, mIoU, hIoU, pseudo-label accuracy/coverage, instance ceiling.

Conventions
-----------
- Class ids are 0..C-1; ``IGNORE`` (-1) in the ground truth removes the point from every metric.
- A prediction of ``IGNORE`` (or any id outside 0..C-1) on a labelled point is a miss: it counts as a
  false negative for the point's GT class and a false positive for no class. The confusion matrix
  therefore has C rows (GT) and C + 1 columns (prediction), the last column holding these misses.
  Functions that take a confusion also accept a plain (C, C) matrix.
- mIoU averages over the classes *present*: a class is present when it has at least one GT point or at
  least one prediction (TP + FP + FN > 0). Classes absent from both are left out rather than counted
  as 0 or 1, so a short sequence without, say, motorcyclists is not penalised or rewarded for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .types import IGNORE, InputError


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).reshape(-1)
    gt = np.asarray(gt).reshape(-1)
    if pred.shape != gt.shape:
        raise InputError(f"prediction has {pred.shape[0]} points but ground truth has {gt.shape[0]}")
    return pred.astype(np.int64), gt.astype(np.int64)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C + 1) int64 counts, rows = GT class, columns = predicted class, last column = no prediction."""
    pred, gt = _check_pair(pred, gt)
    labelled = (gt >= 0) & (gt < num_classes)
    pred, gt = pred[labelled], gt[labelled]
    pred = np.where((pred >= 0) & (pred < num_classes), pred, num_classes)
    counts = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def _tp_fp_fn(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf = np.asarray(conf)
    c = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (c, c + 1):
        raise InputError(f"confusion must be (C, C) or (C, C + 1), got {conf.shape}")
    tp = np.diag(conf[:, :c]).astype(np.float64)
    fp = conf[:, :c].sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    return tp, fp, fn


def per_class_iou(conf: np.ndarray) -> np.ndarray:
    """(C,) IoU = TP / (TP + FP + FN); NaN for classes that are not present."""
    tp, fp, fn = _tp_fp_fn(conf)
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def mean_iou(conf: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Mean IoU over the present classes (optionally only those in ``classes``); NaN if none is present."""
    iou = per_class_iou(conf)
    if classes is not None:
        iou = iou[np.asarray(list(classes), dtype=np.int64)]
    iou = iou[~np.isnan(iou)]
    return float(iou.mean()) if iou.size else float("nan")


def harmonic_iou(conf: np.ndarray, unseen: Sequence[int]) -> dict[str, float]:
    """hIoU = harmonic mean of the seen-class mIoU and the unseen-class mIoU.

    Returns ``{"seen": mIoU_s, "unseen": mIoU_u, "hiou": hIoU}``; hIoU is 0 when either mIoU is 0
    and NaN when either group has no present class.
    """
    c = np.asarray(conf).shape[0]
    unseen_ids = sorted({int(u) for u in unseen})
    bad = [u for u in unseen_ids if not 0 <= u < c]
    if bad:
        raise InputError(f"unseen class ids {bad} are outside 0..{c - 1}")
    seen_ids = [i for i in range(c) if i not in unseen_ids]
    s, u = mean_iou(conf, seen_ids), mean_iou(conf, unseen_ids)
    if np.isnan(s) or np.isnan(u):
        h = float("nan")
    elif s + u == 0:
        h = 0.0
    else:
        h = 2 * s * u / (s + u)
    return {"seen": s, "unseen": u, "hiou": h}


def pseudo_label_quality(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Accuracy and coverage of pseudo-labels on GT-labelled points.

    coverage = labelled points that received a label / labelled points;
    accuracy = labelled points labelled correctly / labelled points that received a label.
    """
    pred, gt = _check_pair(pred, gt)
    labelled = gt >= 0
    n = int(labelled.sum())
    covered = labelled & (pred >= 0)
    m = int(covered.sum())
    correct = int((covered & (pred == gt)).sum())
    return {
        "coverage": m / n if n else float("nan"),
        "accuracy": correct / m if m else float("nan"),
        "labelled_points": n,
    }


def instance_ceiling(superpoint_ids: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-point prediction where every superpoint takes the majority GT class of its points.

    This is the best any labeller that assigns one class per superpoint can do, so the mIoU of this
    prediction measures the geometry alone. Points without a superpoint (IGNORE) are predicted IGNORE,
    i.e. counted as misses for their GT class; GT-ignored points do not vote.
    """
    sp, gt = _check_pair(superpoint_ids, gt)
    pred = np.full(sp.shape[0], IGNORE, dtype=np.int32)
    has_sp = sp >= 0
    if not has_sp.any():
        return pred
    m = int(sp.max()) + 1
    votes_mask = has_sp & (gt >= 0) & (gt < num_classes)
    votes = np.bincount(sp[votes_mask] * num_classes + gt[votes_mask], minlength=m * num_classes)
    votes = votes.reshape(m, num_classes)
    majority = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), IGNORE).astype(np.int32)
    pred[has_sp] = majority[sp[has_sp]]
    return pred


class ConfusionAccumulator:
    """Sums confusions over frames; metrics are computed on the total (not averaged per frame)."""

    def __init__(self, num_classes: int) -> None:
        if num_classes <= 0:
            raise InputError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.frames = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.confusion += confusion_matrix(pred, gt, self.num_classes)
        self.frames += 1

    def iou(self) -> np.ndarray:
        return per_class_iou(self.confusion)

    def miou(self) -> float:
        return mean_iou(self.confusion)

    def hiou(self, unseen: Sequence[int]) -> dict[str, float]:
        return harmonic_iou(self.confusion, unseen)

    def accuracy(self) -> float:
        """Overall point accuracy on labelled points (misses count as wrong)."""
        total = int(self.confusion.sum())
        tp = np.trace(self.confusion[:, : self.num_classes])
        return float(tp / total) if total else float("nan")

    def summary(self, class_names: Sequence[str], unseen: Sequence[int] = ()) -> dict:
        """Plain dict (JSON/YAML friendly) with per-class IoU, mIoU, accuracy and, if given, hIoU."""
        if len(class_names) != self.num_classes:
            raise InputError(f"{len(class_names)} class names for {self.num_classes} classes")
        iou = self.iou()
        out: dict = {
            "frames": self.frames,
            "miou": self.miou(),
            "accuracy": self.accuracy(),
            "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
        }
        if len(unseen):
            out.update({f"{k}_miou" if k != "hiou" else k: v for k, v in self.hiou(unseen).items()})
        return out


def agreement_beyond_chance(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy of ``pred`` against ``gt``, the accuracy chance would give, and Cohen's kappa.

    chance = Σ_k p_pred(k)·p_gt(k): the expected accuracy of predictions drawn independently of the
    input with the same class frequencies (a model that always answers "road" scores the share of
    road, not 1/C). kappa = (accuracy − chance) / (1 − chance): 0 at chance, 1 when perfect.
    Items whose GT is IGNORE are left out; a prediction of IGNORE counts as wrong.
    """
    pred, gt = _check_pair(pred, gt)
    keep = (gt >= 0) & (gt < num_classes)
    pred, gt = pred[keep], gt[keep]
    n = int(gt.size)
    if n == 0:
        return {"count": 0, "accuracy": float("nan"), "chance": float("nan"), "kappa": float("nan")}
    accuracy = float((pred == gt).mean())
    p_gt = np.bincount(gt, minlength=num_classes)[:num_classes] / n
    valid = (pred >= 0) & (pred < num_classes)
    p_pred = np.bincount(pred[valid], minlength=num_classes)[:num_classes] / n
    chance = float(p_pred @ p_gt)
    kappa = (accuracy - chance) / (1 - chance) if chance < 1 else float("nan")
    return {"count": n, "accuracy": accuracy, "chance": chance, "kappa": float(kappa)}
