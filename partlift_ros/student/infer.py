"""Run a trained student: load a checkpoint, label a scan, score it against SemanticKITTI ground truth."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..types import InputError
from .data import collate, eval_transform, make_sample, rotate_z, to_device


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The checkpoint dict written by ``train`` (raises InputError for a missing or foreign file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"student checkpoint not found: {path}")
    try:
        ckpt = torch.load(io.BytesIO(path.read_bytes()), map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise InputError(f"{path}: not a readable student checkpoint ({exc})") from exc
    missing = [k for k in ("model", "model_args", "class_names", "text_embeddings", "config") if k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a student checkpoint (lacks {missing})")
    return ckpt


def build_model(model_args: dict, text_embeddings: np.ndarray | torch.Tensor):
    """An SPVCNN with the given constructor arguments and class embeddings."""
    from .model import SPVCNN

    return SPVCNN(class_embeddings=torch.as_tensor(np.asarray(text_embeddings), dtype=torch.float32), **model_args)


def load_student(ckpt: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode on ``device``, class names). ``model.voxel_size`` is the training voxel size."""
    state = read_checkpoint(ckpt, "cpu")
    model = build_model(state["model_args"], state["text_embeddings"])
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, list(state["class_names"])


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_probabilities(model, points: np.ndarray, voxel_size: float | None = None, tta_rotations: int = 0,
                          amp: bool = False) -> np.ndarray:
    """(N, C) float32 class probabilities, averaged over ``1 + tta_rotations`` rotations about z.

    Every point is fed to the network (``grid_sample(keep="all")``): the point branch of SPVCNN gives each
    point its own prediction, and points sharing a voxel are averaged into it by the model.
    """
    voxel_size = float(voxel_size if voxel_size is not None else getattr(model, "voxel_size", 0.0))
    if voxel_size <= 0:
        raise InputError("predict needs a voxel size (give one, or load the model with load_student)")
    if tta_rotations < 0:
        raise InputError(f"tta_rotations must be >= 0, got {tta_rotations}")
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4 or points.shape[0] == 0:
        raise InputError(f"points must be a non-empty (N, 4) array, got shape {points.shape}")
    if not np.isfinite(points[:, :4]).all():
        raise InputError("points contain NaN/inf values")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    transform = eval_transform(voxel_size, keep="all")
    base = make_sample(points[:, :4].astype(np.float32, copy=False))
    total = None
    for k in range(tta_rotations + 1):
        sample = rotate_z(base, 2.0 * np.pi * k / (tta_rotations + 1)) if k else base
        batch = to_device(collate([transform(sample)]), device)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = model(batch)["logits"]
        probs = torch.softmax(logits.float(), dim=1)[batch["inverse"]]
        total = probs if total is None else total + probs
    if was_training:
        model.train()
    return (total / (tta_rotations + 1)).cpu().numpy().astype(np.float32)


def predict(model, points: np.ndarray, voxel_size: float | None = None, tta_rotations: int = 0,
            amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-point (labels int32 0-based, confidence float32 = the winning class's probability)."""
    probs = predict_probabilities(model, points, voxel_size, tta_rotations, amp)
    return probs.argmax(axis=1).astype(np.int32), probs.max(axis=1).astype(np.float32)


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
