"""Student checkpoints: the lean inference file (``student.pt``) and the resumable training state (``last.pt``).

``student.pt`` holds what inference needs only: the network weights, how to rebuild the network
(``model_args``), the class names with their text embeddings, and the training config (adaptation reads its
loss weights from it). The sparse-conv weights, almost all of the parameters, are stored as int8 with one
float32 scale per (kernel offset, output channel) and dequantised to float32 on load; every other tensor
stays float32. Why int8: at the default width the network has 11.7 M parameters, 47 MB in float32 and
23.5 MB in any 16-bit format, both above the 20 MB budget; int8 gives ~12 MB, and its argmax agreement with
the float32 weights is checked on real scans (tests, ``benchmarks/bench_student.py``).

``last.pt`` (written by training each epoch) is ``student_state(..., quantise=False)`` plus the optimiser,
schedule, AMP scaler, RNG states and unit scores: float32 weights, so a resumed run continues exactly.
Files written before this format (float32 weights and the optimiser in ``student.pt``) still load.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import atomic_write_bytes
from ..types import InputError

REQUIRED_KEYS = ("model", "model_args", "class_names", "text_embeddings", "config")
QUANTISED_KEY = "quantised"  # name -> {"q": int8 (K, C_in, C_out), "scale": float32 (K, C_out)}


def quantise_conv_weight(weight: torch.Tensor) -> dict:
    """(K, C_in, C_out) float -> int8 values and a float32 scale per (offset, output channel): symmetric, absmax."""
    w = weight.detach().float().cpu()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None, :]).clamp_(-127, 127).to(torch.int8)
    return {"q": q, "scale": scale}


def dequantise_conv_weight(packed: dict) -> torch.Tensor:
    return packed["q"].float() * packed["scale"].float()[:, None, :]


def _is_sparse_conv_weight(model: torch.nn.Module, name: str) -> bool:
    from .sparse import SparseConv3d

    module_name, _, attr = name.rpartition(".")
    return attr == "weight" and isinstance(model.get_submodule(module_name), SparseConv3d)


def student_state(model, model_args: dict, class_names: Sequence[str], text_embeddings: np.ndarray, cfg,
                  quantise: bool = True) -> dict:
    """What inference needs (``infer.load_student``): weights, how to rebuild the model, the vocabulary.

    ``quantise``: sparse-conv weights as int8 + scales (the lean ``student.pt``); False keeps every weight
    float32 (the training checkpoint).
    """
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    packed = {}
    if quantise:
        packed = {k: quantise_conv_weight(weights.pop(k)) for k in list(weights) if _is_sparse_conv_weight(model, k)}
    state = {
        "model": weights,
        "model_args": dict(model_args),
        "class_names": list(class_names),
        "text_embeddings": np.asarray(text_embeddings, np.float32),
        "config": dataclasses.asdict(cfg),
    }
    if packed:
        state[QUANTISED_KEY] = packed
    return state


def model_weights(ckpt: dict) -> dict:
    """The float32 state dict of a checkpoint of either kind (int8 conv weights dequantised)."""
    weights = dict(ckpt["model"])
    weights.update({k: dequantise_conv_weight(v) for k, v in ckpt.get(QUANTISED_KEY, {}).items()})
    return weights


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save into memory, then an atomic rename: a crash never leaves half a checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """The checkpoint dict written by ``train`` (raises InputError for a missing or foreign file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"student checkpoint not found: {path}")
    try:
        ckpt = torch.load(io.BytesIO(path.read_bytes()), map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise InputError(f"{path}: not a readable student checkpoint ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise InputError(f"{path}: not a student checkpoint (lacks {missing})")
    return ckpt


def build_model(model_args: dict, text_embeddings: np.ndarray | torch.Tensor):
    """An SPVCNN with the given constructor arguments and class embeddings."""
    from .model import SPVCNN

    return SPVCNN(class_embeddings=torch.as_tensor(np.asarray(text_embeddings), dtype=torch.float32), **model_args)


def model_from_checkpoint(ckpt: dict):
    """The SPVCNN of a checkpoint dict, weights loaded, on the CPU, in training mode."""
    model = build_model(ckpt["model_args"], ckpt["text_embeddings"])
    model.load_state_dict(model_weights(ckpt))
    return model
