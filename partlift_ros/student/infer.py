"""Run a trained student: load a checkpoint, label a scan, score it against SemanticKITTI ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..points import finite_points_mask
from ..types import IGNORE, InputError
from .checkpoint import model_from_checkpoint, read_checkpoint
from .data import collate, eval_transform, make_sample, rotate_z, to_device

PRECISIONS = ("fp32", "bf16", "fp16")


def load_student(ckpt: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, class names). ``model.voxel_size`` is the training voxel size."""
    state = read_checkpoint(ckpt, "cpu")
    model = model_from_checkpoint(state)
    model.to(device).eval()
    return model, list(state["class_names"])


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_probabilities(model, points: np.ndarray, voxel_size: float | None = None, tta_rotations: int = 0,
                          precision: str = "fp32") -> np.ndarray:
    """(N, C) float32 class probabilities, averaged over ``1 + tta_rotations`` rotations about z.

    Every point is fed to the network (``grid_sample(keep="all")``): the point branch of SPVCNN gives each
    point its own prediction, and points sharing a voxel are averaged into it by the model. ``precision``
    "bf16" / "fp16" runs the products under autocast (sums stay float32); "fp16" needs CUDA. bf16 only
    pays on CPUs with native bf16 matmul (AVX-512 BF16 / AMX): elsewhere it is slower than fp32.
    """
    voxel_size = float(voxel_size if voxel_size is not None else getattr(model, "voxel_size", 0.0))
    if voxel_size <= 0:
        raise InputError("predict needs a voxel size (give one, or load the model with load_student)")
    if tta_rotations < 0:
        raise InputError(f"tta_rotations must be >= 0, got {tta_rotations}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4 or points.shape[0] == 0:
        raise InputError(f"points must be a non-empty (N, 4) array, got shape {points.shape}")
    if not np.isfinite(points[:, :4]).all():
        raise InputError("points contain NaN/inf values")
    device = _model_device(model)
    if precision == "fp16" and device.type != "cuda":
        raise InputError("precision 'fp16' needs a CUDA device (CPU half matmul is slow); use 'bf16' or 'fp32'")
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    was_training = model.training
    model.eval()
    transform = eval_transform(voxel_size, keep="all")
    base = make_sample(points[:, :4].astype(np.float32, copy=False))
    total = None
    for k in range(tta_rotations + 1):
        sample = rotate_z(base, 2.0 * np.pi * k / (tta_rotations + 1)) if k else base
        batch = to_device(collate([transform(sample)]), device)
        with torch.autocast(device.type, dtype=low or torch.float32, enabled=low is not None):
            logits = model(batch, embeddings=False)["logits"]
        probs = torch.softmax(logits.float(), dim=1)[batch["inverse"]]
        total = probs if total is None else total + probs
    if was_training:
        model.train()
    return (total / (tta_rotations + 1)).cpu().numpy().astype(np.float32)


def predict(model, points: np.ndarray, voxel_size: float | None = None, tta_rotations: int = 0,
            precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Per-point (labels int32 0-based, confidence float32 = the winning class's probability).

    The one non-finite policy (points.py): points without finite x, y, z keep their index and get IGNORE with
    confidence 0; the others are predicted together.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4:
        raise InputError(f"points must be a non-empty (N, 4) array, got shape {points.shape}")
    finite = finite_points_mask(points)
    if not finite.any():
        raise InputError(f"points must hold at least one finite point, got {points.shape[0]} and none finite")
    label = np.full(points.shape[0], IGNORE, np.int32)
    confidence = np.zeros(points.shape[0], np.float32)
    probs = predict_probabilities(model, points if finite.all() else points[finite], voxel_size, tta_rotations,
                                  precision)
    label[finite], confidence[finite] = probs.argmax(axis=1), probs.max(axis=1)
    return label, confidence


def evaluate_on_sequence(model, class_names: list[str], sequence_dir: str | Path, voxel_size: float | None = None,
                         tta_rotations: int = 0, max_frames: int = 0, progress=None) -> dict:
    """mIoU etc. of the student on a SemanticKITTI sequence folder with ``labels/`` (classes matched by name).

    Ground-truth classes the student does not know are ignored. ``progress(done, total)`` is called per frame.
    """
    from ..config import SEMANTIC_KITTI_CLASSES
    from ..io.kitti import KittiSequenceReader, read_scan
    from ..metrics import ConfusionAccumulator
    from ..semantickitti import raw_to_train_ids, train_to_run_ids

    reader = KittiSequenceReader(sequence_dir, load_labels=True)
    indices = reader.frame_indices[:max_frames] if max_frames > 0 else reader.frame_indices
    if not set(class_names) & set(SEMANTIC_KITTI_CLASSES):
        raise InputError(f"none of the classes {class_names} is a SemanticKITTI class: nothing to evaluate")
    acc = ConfusionAccumulator(len(class_names))
    for done, index in enumerate(indices, 1):
        points = read_scan(Path(sequence_dir) / "velodyne" / f"{index:06d}.bin")
        gt = train_to_run_ids(raw_to_train_ids(reader.read_labels(index)), class_names)
        labels, _ = predict(model, points, voxel_size, tta_rotations)
        acc.add(labels, gt)
        if progress is not None:
            progress(done, len(indices))
    summary = acc.summary(class_names)
    summary["frames"] = len(indices)
    return summary
