"""Losses for distilling pseudo-labels into the student.

- ``pseudo_label_loss`` = alpha * Lovasz-softmax + class-weighted cross-entropy: CE learns the per-point
  decision, Lovasz (a convex surrogate of per-class IoU, Berman et al. 2018) keeps rare classes from being
  swamped, which is what mIoU rewards.
- ``kl_on_visible``: the 3D-only prediction imitates the camera-fused one where the camera sees the point
  (2DPASS-style distillation); points outside the image carry no fused prediction and are skipped.
All losses return a 0-dim tensor attached to the graph (0 when no point is valid) so a batch with no
labels still back-propagates cleanly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from partlift_ros.types import IGNORE, InputError


def _zero(like: Tensor) -> Tensor:
    """A zero that keeps the graph (so .backward() works and gives zero gradients)."""
    return like.sum() * 0.0


def lovasz_softmax(probs: Tensor, labels: Tensor, ignore_index: int = IGNORE, classes="present") -> Tensor:
    """Lovasz-softmax loss (Berman et al., CVPR 2018), mean over the selected classes.

    Args:
        probs: (N, C) class probabilities (softmax output).
        labels: (N,) class ids; ``ignore_index`` entries are dropped.
        classes: "present" (classes with at least one label), "all", or a list of class ids.
    Vectorised over classes: each column's errors are sorted once and the Lovasz extension of the
    Jaccard loss is the dot product of sorted errors with the discrete Jaccard gradient.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise InputError(f"lovasz_softmax: probs {tuple(probs.shape)} must be (N, C), labels (N,)")
    valid = labels != ignore_index
    probs, labels = probs[valid], labels[valid].long()
    num_classes = probs.shape[1]
    if probs.shape[0] == 0:
        return _zero(probs)
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise InputError(f"lovasz_softmax: labels outside [0, {num_classes}) besides ignore_index={ignore_index}")
    fg = F.one_hot(labels, num_classes).to(probs.dtype)  # (N, C)
    if classes == "present":
        selected = fg.sum(0) > 0
    elif classes == "all":
        selected = torch.ones(num_classes, dtype=torch.bool, device=probs.device)
    else:
        selected = torch.zeros(num_classes, dtype=torch.bool, device=probs.device)
        selected[torch.as_tensor(list(classes), dtype=torch.long, device=probs.device)] = True
    fg, probs = fg[:, selected], probs[:, selected]
    if fg.shape[1] == 0:
        return _zero(probs)
    errors = (fg - probs).abs()
    errors_sorted, order = torch.sort(errors, dim=0, descending=True)
    fg_sorted = fg.gather(0, order)
    grad = _lovasz_grad(fg_sorted)
    return (errors_sorted * grad).sum(0).mean()


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors, per column."""
    gts = fg_sorted.sum(0, keepdim=True)
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    # Differences of consecutive Jaccard values; the first row keeps its value.
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def class_weights_from_counts(counts, power: float = 0.5, max_weight: float = 10.0) -> Tensor:
    """Per-class CE weights from label counts: ``w_c ~ frequency_c ** -power`` (default inverse sqrt).

    Normalised so that the frequency-weighted mean weight is 1, i.e. on the counted label distribution the
    weighted CE has the same scale as the plain CE (learning rates carry over). Weights are capped at
    ``max_weight`` (after normalisation) so a class with a handful of noisy pseudo-labels cannot dominate;
    classes with zero count get the largest weight of the counted classes, so they are not silently
    ignored if they appear later. Returns float32 (C,).
    """
    counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0 or bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise InputError("class_weights_from_counts: counts must be a non-empty list of finite values >= 0")
    total = counts.sum()
    if total <= 0:
        return torch.ones(counts.numel(), dtype=torch.float32)
    freq = counts / total
    present = freq > 0
    weights = torch.zeros_like(freq)
    weights[present] = freq[present] ** (-power)
    weights = weights / (freq * weights).sum()
    weights = weights.clamp(max=max_weight)
    weights[~present] = weights[present].max()
    return weights.float()


def weighted_cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None,
                           point_weights: Tensor | None = None, ignore_index: int = IGNORE) -> Tensor:
    """Cross-entropy weighted per class and per point (e.g. pseudo-label confidence).

    Normalised by the sum of the weights of the valid points (torch's convention for class weights), so
    down-weighting uncertain points changes their share, not the loss scale.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise InputError(f"weighted_cross_entropy: logits {tuple(logits.shape)} must be (N, C), labels (N,)")
    valid = labels != ignore_index
    if point_weights is not None:
        if point_weights.shape != labels.shape:
            raise InputError(f"weighted_cross_entropy: point_weights {tuple(point_weights.shape)} != labels (N,)")
        valid = valid & (point_weights > 0)
    if not bool(valid.any()):
        return _zero(logits)
    target = labels[valid].long()
    per_point = F.cross_entropy(logits[valid], target, reduction="none")
    weight = torch.ones_like(per_point)
    if class_weights is not None:
        weight = weight * class_weights.to(per_point)[target]
    if point_weights is not None:
        weight = weight * point_weights[valid].to(per_point)
    return (per_point * weight).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)


def pseudo_label_loss(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None,
                      point_weights: Tensor | None = None, alpha: float = 2.0,
                      ignore_index: int = IGNORE) -> Tensor:
    """alpha * Lovasz-softmax + weighted CE. Points with point weight 0 are ignored by both terms
    (Lovasz is a set-level IoU surrogate, so it takes no per-point weights)."""
    ce = weighted_cross_entropy(logits, labels, class_weights, point_weights, ignore_index)
    lovasz_labels = labels
    if point_weights is not None:
        lovasz_labels = torch.where(point_weights > 0, labels, torch.full_like(labels, ignore_index))
    return alpha * lovasz_softmax(F.softmax(logits, dim=1), lovasz_labels, ignore_index) + ce


def kl_on_visible(logits_3d: Tensor, logits_fused: Tensor, visible_mask: Tensor,
                  detach_target: bool = True) -> Tensor:
    """KL(p_fused || p_3d) averaged over visible points only (0 if none is visible).

    The fused prediction is the teacher, so by default no gradient flows into it from this term
    (as in 2DPASS); the fused branch learns from its own pseudo-label loss.
    """
    if logits_3d.shape != logits_fused.shape or visible_mask.shape != logits_3d.shape[:1]:
        raise InputError(
            f"kl_on_visible: logits {tuple(logits_3d.shape)} / {tuple(logits_fused.shape)} and mask "
            f"{tuple(visible_mask.shape)} must be (N, C), (N, C), (N,)"
        )
    visible = visible_mask.bool()
    if not bool(visible.any()):
        return _zero(logits_3d) + _zero(logits_fused)
    log_p3d = F.log_softmax(logits_3d[visible], dim=1)
    target = logits_fused[visible].detach() if detach_target else logits_fused[visible]
    log_pf = F.log_softmax(target, dim=1)
    return F.kl_div(log_p3d, log_pf, log_target=True, reduction="batchmean")
