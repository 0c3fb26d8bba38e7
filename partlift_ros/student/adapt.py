"""Fast adaptation of a trained student to a new class list (few support frames, few steps).

The student scores point embeddings against frozen class text embeddings, so a new class list can be used
zero-shot by swapping the embeddings (``SPVCNN.set_class_embeddings``). Adaptation goes one step further:
with the backbone frozen, only the projection head and the temperature are fitted for ``inner_steps`` Adam
steps to the pseudo-labels of a few support frames that were labelled with the new class list. Because the
backbone does not change, its point features are computed once and every step is a small matrix product,
which is what makes head adaptation cheap next to full fine-tuning (``mode="full"``: every weight trains,
every step is a forward and backward pass through the sparse U-Net).

Class list rule. The support runs (``partlift label`` output folders) hold pseudo-labels *for their own
class list* and that list's text embeddings, which are the only source of embeddings here. So ``classes``
must be a subset of the support runs' class list, in any order (``None`` = the whole list). Pseudo-labels
of run classes left out are ignored (neither trained on nor scored). A class that is not in the runs'
list is an error: the support frames must be labelled with it first.

Support rule (:func:`choose_support`): greedy class coverage on pseudo-label histograms. Each new class
wants ``target_points`` pseudo-labelled points; the next frame is the one that fills the most unmet quota
(ties: more labelled points, then the earlier frame). Why this rule: the head can only learn a class it
sees, and the point of the support set is to show every new class; histograms come from the label files
alone (no scan reading, no forward pass), and the saturating quota stops one frequent class (road) from
deciding the choice. The alternative, frames nearest to the class text embeddings by mean student
embedding, needs a forward pass per candidate frame and favours frames dominated by one class.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..io.writers import read_run_labels
from ..types import IGNORE, InputError
from .data import PseudoLabelDataset, add_features, collate, grid_sample, sphere_crop, to_device

MODES = ("head", "full")
# Head-only fits ~F·D + 1 numbers and tolerates a large step; full fine-tuning uses the training default.
DEFAULT_LR = {"head": 1e-2, "full": 2e-3}
HEAD_PARAMETERS = ("head.weight", "head.bias", "logit_scale")


# ----------------------------------------------------------------------------------------- class list
def resolve_classes(requested: Sequence[str] | None, run_classes: Sequence[str]) -> np.ndarray:
    """Ids into ``run_classes`` of the requested classes, in the requested order (the rule in the module doc)."""
    run_classes = list(run_classes)
    if requested is None:
        return np.arange(len(run_classes), dtype=np.int64)
    requested = [str(c).strip() for c in requested]
    if not requested or any(not c for c in requested):
        raise InputError(f"the new class list is empty or has an empty name: {requested}")
    duplicated = sorted({c for c in requested if requested.count(c) > 1})
    if duplicated:
        raise InputError(f"the new class list names {duplicated} more than once")
    unknown = [c for c in requested if c not in run_classes]
    if unknown:
        raise InputError(
            f"classes {unknown} are not in the support runs' class list {run_classes}: the support frames carry "
            "pseudo-labels and text embeddings only for their own classes; label them with a list that holds "
            "the new classes (partlift label --classes ...), then adapt to that list or a subset of it"
        )
    return np.array([run_classes.index(c) for c in requested], dtype=np.int64)


def class_id_map(selected: np.ndarray, num_run_classes: int) -> np.ndarray:
    """Lookup table run class id -> new class id, IGNORE for run classes left out."""
    table = np.full(num_run_classes, IGNORE, dtype=np.int64)
    table[selected] = np.arange(len(selected))
    return table


def remap_segment(segment: np.ndarray, id_map: np.ndarray) -> np.ndarray:
    segment = np.asarray(segment, np.int64)
    return np.where(segment >= 0, id_map[np.clip(segment, 0, len(id_map) - 1)], IGNORE)


# ----------------------------------------------------------------------------------------- support rule
def coverage_order(histograms: np.ndarray, k: int, target_points: int) -> list[int]:
    """Greedy class coverage: ``k`` rows of ``histograms`` (frames x classes, point counts), in pick order.

    Each class has a quota of ``target_points``; a frame's gain is the quota it would still fill,
    ``sum_c min(count_c, unmet_c)``. Ties go to the frame with more counted points, then the lower row.
    """
    hist = np.asarray(histograms, dtype=np.int64)
    if hist.ndim != 2:
        raise InputError(f"coverage_order: histograms must be (frames, classes), got {hist.shape}")
    if k < 1:
        raise InputError(f"the support set needs k >= 1 frames, got {k}")
    if target_points < 1:
        raise InputError(f"target_points must be >= 1, got {target_points}")
    unmet = np.full(hist.shape[1], target_points, dtype=np.int64)
    totals = hist.sum(axis=1)
    rows = np.arange(hist.shape[0])
    available = np.ones(hist.shape[0], dtype=bool)
    chosen: list[int] = []
    for _ in range(min(k, hist.shape[0])):
        gain = np.minimum(hist, unmet).sum(axis=1)
        order = np.lexsort((rows, -totals, -gain))  # last key sorts first: gain, then totals, then row
        pick = int(order[available[order]][0])
        chosen.append(pick)
        available[pick] = False
        unmet = np.maximum(unmet - hist[pick], 0)
    return chosen


def label_histograms(dataset: PseudoLabelDataset, selected: np.ndarray) -> np.ndarray:
    """(frames, new classes) pseudo-label counts, read from the label files only."""
    id_map = class_id_map(selected, dataset.num_classes)
    hist = np.zeros((len(dataset), len(selected)), dtype=np.int64)
    for i, (r, index) in enumerate(dataset.items):
        new = remap_segment(read_run_labels(dataset.run_dirs[r], index)[0], id_map)
        hist[i] = np.bincount(new[new >= 0], minlength=len(selected))[: len(selected)]
    return hist


def choose_support(source: PseudoLabelDataset | Sequence[str | Path], k: int, classes: Sequence[str] | None = None,
                   target_points: int = 500) -> list[int]:
    """Positions (into ``source``, or into ``PseudoLabelDataset(source)`` for run folders) of the ``k`` support
    frames for ``classes`` (default: the runs' whole list), by greedy class coverage (module doc)."""
    dataset = source if isinstance(source, PseudoLabelDataset) else PseudoLabelDataset(list(source))
    selected = resolve_classes(classes, dataset.class_names)
    return coverage_order(label_histograms(dataset, selected), k, target_points)


# ----------------------------------------------------------------------------------------- frames and scores
def _prepare_frame(dataset: PseudoLabelDataset, i: int, id_map: np.ndarray, voxel_size: float, max_points: int,
                   rng: np.random.Generator) -> dict:
    """One point per voxel (deterministic), pseudo-labels in the new ids, confidence as weight."""
    raw = dataset[i]
    segment = remap_segment(raw["segment"], id_map)
    sample = {k: v for k, v in raw.items() if k != "image"}
    sample.update(segment=segment, weight=np.where(segment >= 0, raw["weight"], 0.0).astype(np.float32))
    sample = grid_sample(sample, voxel_size, keep="first")
    sample.pop("inverse")
    if max_points > 0:
        sample = sphere_crop(sample, max_points, rng)
    return add_features(sample)


def _agreement(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """(share of pseudo-labelled points where pred agrees, mean of that share over the classes present)."""
    labelled = labels >= 0
    target, hit = labels[labelled], pred[labelled] == labels[labelled]
    if target.numel() == 0:
        return float("nan"), float("nan")
    total = torch.bincount(target, minlength=num_classes).double()
    agree = torch.bincount(target[hit], minlength=num_classes).double()
    present = total > 0
    return float(hit.double().mean()), float((agree[present] / total[present]).mean())


@torch.no_grad()
def _point_features(model, frames: Sequence[dict], device: torch.device) -> list[torch.Tensor]:
    model.eval()
    # Only the point features are used: embeddings=False skips the (N, D) head projection.
    return [model(to_device(collate([f]), device), embeddings=False)["point_features"] for f in frames]


@torch.no_grad()
def _score(model, features: Sequence[torch.Tensor], labels: torch.Tensor) -> tuple[float, float]:
    logits = torch.cat([model.classify(f)[0] for f in features]) if features else labels.new_zeros((0, 1))
    return _agreement(logits.argmax(dim=1), labels, model.num_classes)


def _labels(frames: Sequence[dict], device: torch.device) -> torch.Tensor:
    if not frames:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.from_numpy(np.concatenate([f["segment"] for f in frames])).to(device)


# ----------------------------------------------------------------------------------------- adaptation
def adapt_head(
    ckpt: str | Path,
    support_runs: Sequence[str | Path],
    classes: Sequence[str] | None = None,
    k_frames: int = 4,
    inner_steps: int = 50,
    lr: float | None = None,
    mode: str = "head",
    seed: int = 0,
    device: str | torch.device = "cpu",
    out: str | Path | None = None,
    sources: Sequence[str | Path] | None = None,
    max_points: int = 0,
    eval_frames: int = 0,
    target_points: int = 500,
    alpha: float | None = None,
    support_frames: Sequence[int] | None = None,
) -> dict:
    """Adapt the student in ``ckpt`` to ``classes`` on ``k_frames`` support frames of ``support_runs``.

    ``mode="head"``: backbone frozen (its tensors untouched), only the head and the temperature train, on
    point features computed once. ``mode="full"``: every weight trains (BatchNorm affine weights included),
    a forward/backward pass over the support frames per step. In both modes BatchNorm normalises with the
    running statistics from training: a few steps on k frames cannot re-estimate them, and batch statistics
    in the steps would disagree with the eval-mode network that is scored and saved. Both use the training
    loss (class-weighted, confidence-weighted CE + ``alpha``·Lovász; ``alpha`` defaults to the checkpoint's),
    full-batch Adam steps, learning rate ``lr`` (default ``DEFAULT_LR[mode]``).

    ``max_points`` > 0 sphere-crops each support frame to that many voxels; ``eval_frames`` > 0 also scores
    up to that many frames of the runs that are not in the support set (held out). ``support_frames``
    (positions in ``PseudoLabelDataset(support_runs)``) replaces the support rule, e.g. to compare rules on
    the same steps. ``out``: where to save the adapted checkpoint (loadable by ``infer.load_student``; new
    class names and embeddings, and an ``adaptation`` entry with this summary).

    Returns a summary: support frames, agreement with the support pseudo-labels before and after (overall
    and class-balanced), held-out agreement, time of the adaptation proper (``adapt_seconds``: feature
    extraction + steps for head mode, the steps for full mode) and of the whole call.
    """
    from .checkpoint import QUANTISED_KEY, model_from_checkpoint, read_checkpoint, save_checkpoint, student_state
    from .losses import class_weights_from_counts, pseudo_label_loss
    from .train import TrainConfig

    t_call = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"adaptation mode must be one of {MODES}, got {mode!r}")
    if k_frames < 1:
        raise InputError(f"the support set needs k_frames >= 1, got {k_frames}")
    if inner_steps < 0 or eval_frames < 0 or max_points < 0:
        raise InputError("inner_steps, eval_frames and max_points must be >= 0")
    if not support_runs:
        raise InputError("no support runs given: adaptation needs pseudo-labelled frames of the new class list")
    lr = DEFAULT_LR[mode] if lr is None else float(lr)
    if lr <= 0:
        raise InputError(f"lr must be > 0, got {lr}")
    device = torch.device(device)

    state = read_checkpoint(ckpt, "cpu")
    dataset = PseudoLabelDataset(list(support_runs), sources=sources)
    selected = resolve_classes(classes, dataset.class_names)
    names = [dataset.class_names[i] for i in selected]
    embeddings = dataset.text_embeddings[selected]
    model = model_from_checkpoint(state)
    if embeddings.shape[1] != model.embed_dim:
        raise InputError(
            f"the support runs' text embeddings have {embeddings.shape[1]} dimensions, the student in {ckpt} was "
            f"trained with {model.embed_dim}: label the support frames with the same text encoder"
        )
    model.set_class_embeddings(torch.from_numpy(embeddings))
    model.to(device)

    hist = label_histograms(dataset, selected)
    if support_frames is None:
        support = coverage_order(hist, k_frames, target_points)
    else:
        support = [int(i) for i in support_frames]
        if not support or len(set(support)) != len(support) or not all(0 <= i < len(dataset) for i in support):
            raise InputError(f"support_frames {support} must be distinct positions in [0, {len(dataset)})")
    if hist[support].sum() == 0:
        raise InputError(f"the support frames {[dataset.name(i) for i in support]} hold no pseudo-label of the "
                         f"classes {names}")
    held_out = [i for i in range(len(dataset)) if i not in support][:eval_frames]

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    id_map = class_id_map(selected, dataset.num_classes)
    voxel_size = float(model.voxel_size)
    support_data = [_prepare_frame(dataset, i, id_map, voxel_size, max_points, rng) for i in support]
    heldout_frames = [_prepare_frame(dataset, i, id_map, voxel_size, 0, rng) for i in held_out]
    labels = _labels(support_data, device)
    weights = torch.from_numpy(np.concatenate([f["weight"] for f in support_data])).to(device)
    counts = torch.bincount(labels[labels >= 0], minlength=len(names)).cpu()
    class_weights = class_weights_from_counts(counts).to(device)
    alpha = float(state["config"].get("alpha", 2.0) if alpha is None else alpha)

    heldout_labels = _labels(heldout_frames, device)
    heldout_before = _score(model, _point_features(model, heldout_frames, device), heldout_labels)

    before = _score(model, _point_features(model, support_data, device), labels)
    params = [model.head.weight, model.head.bias, model.logit_scale] if mode == "head" else list(model.parameters())
    # Made before the clock starts: the first optimiser of a process pays torch's one-off lazy imports (seconds).
    optimizer = torch.optim.Adam(params, lr=lr)

    # Timed from here; the untimed passes above also warm the sparse-conv code paths for both modes alike.
    t_adapt = time.perf_counter()
    if mode == "head":
        features = _point_features(model, support_data, device)  # part of head adaptation's cost
        feats = torch.cat(features)

        def step_loss() -> torch.Tensor:
            return pseudo_label_loss(model.classify(feats)[0], labels, class_weights, weights, alpha=alpha)
    else:
        batch = to_device(collate(support_data), device)

        def step_loss() -> torch.Tensor:
            model.eval()  # BatchNorm keeps its training statistics (see the docstring)
            return pseudo_label_loss(model(batch)["logits"], labels, class_weights, weights, alpha=alpha)

    losses = []
    t_steps = time.perf_counter()
    for _ in range(inner_steps):
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    steps_seconds = time.perf_counter() - t_steps
    # Head mode: the features are the frozen backbone's, so scoring them is exactly a fresh forward pass.
    after_features = features if mode == "head" else _point_features(model, support_data, device)
    adapt_seconds = (time.perf_counter() - t_adapt) if mode == "head" else steps_seconds
    after = _score(model, after_features, labels)
    heldout_after = _score(model, _point_features(model, heldout_frames, device), heldout_labels)

    summary = {
        "mode": mode,
        "classes": names,
        "support": [dataset.name(i) for i in support],
        "support_points": {n: int(c) for n, c in zip(names, counts.tolist())},
        "uncovered_classes": [n for n, c in zip(names, counts.tolist()) if c == 0],
        "inner_steps": inner_steps,
        "lr": lr,
        "trainable_parameters": int(sum(p.numel() for p in params)),
        "agreement_before": before[0],
        "agreement_after": after[0],
        "balanced_before": before[1],
        "balanced_after": after[1],
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "heldout_frames": [dataset.name(i) for i in held_out],
        "heldout_before": heldout_before[0],
        "heldout_after": heldout_after[0],
        "adapt_seconds": adapt_seconds,
        "seconds_per_step": steps_seconds / max(inner_steps, 1),
        "checkpoint": None,
    }
    if out is not None:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in state["config"].items() if k in known})
        model.to("cpu").eval()
        adapted = student_state(model, state["model_args"], names, embeddings, cfg)
        if mode == "head" and QUANTISED_KEY in state:
            # The frozen backbone keeps its stored bytes (re-quantising dequantised weights may move a scale by an ulp).
            adapted[QUANTISED_KEY] = state[QUANTISED_KEY]
        adapted["adaptation"] = {**summary, "from_checkpoint": str(ckpt), "seed": seed}
        save_checkpoint(Path(out), adapted)
        summary["checkpoint"] = str(out)
    summary["total_seconds"] = time.perf_counter() - t_call
    return summary
