"""How closely a CLIP crop encoder follows fp32 torch: the fidelity gates shared by the tests and bench_clip.py.

Per crop: the cosine between the backend's and fp32 torch's image features, and whether the argmax class of
the pipeline's scores (``logit_scale * f @ t.T`` against the class text embeddings) stays the same.

No trained CLIP exists here, and with random weights many crops are near-ties: every class prompt maps to
nearly the same text embedding (pairwise cosine 0.96-0.99 for the 19 KITTI classes), so top-1 margins are
~0.01 logits and any feature change flips some of them. The argmax gate therefore counts the crops CLIP itself
has decided: those whose fp32 class survives moving the crop box by one pixel diagonally either way (the box
rules pad by 10 % and round outwards, so one pixel is below their own arbitrariness; that move changes the
features more than the cosine gate allows a backend to). A backend must keep the class of >= 99 % of decided
crops, and most crops must be decided, else the gate would say nothing.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

MIN_AGREEMENT = 0.99  # of the decided crops
MIN_DECIDED = 0.75  # of all crops: fewer and the argmax gate would be too weak to mean anything
JITTER = ((1, 1), (-1, -1))  # px moves of the whole box that define a decided crop


def shifted_crops(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], shift: tuple[int, int] = (0, 0)):
    """Crops of each image's boxes, the boxes moved by ``shift`` (u, v) pixels and clipped to the image."""
    crops = []
    for image, b in zip(images, boxes):
        h, w = image.shape[:2]
        moved = np.asarray(b) + np.array([shift[0], shift[1], shift[0], shift[1]])
        moved = np.clip(moved, 0, [w, h, w, h])
        crops += [image[v0:v1, u0:u1] for u0, v0, u1, v1 in moved.tolist()]
    return crops


def top1_margins(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def decided_crops(encode_fp32: Callable, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                  text: np.ndarray) -> np.ndarray:
    """(M,) bool: the fp32 argmax class of the crop is the same for every box move in ``JITTER``."""
    classes = encode_fp32(shifted_crops(images, boxes)) @ text.T
    same = [(encode_fp32(shifted_crops(images, boxes, s)) @ text.T).argmax(1) == classes.argmax(1) for s in JITTER]
    return np.all(same, axis=0)


def fidelity(features: np.ndarray, reference: np.ndarray, text: np.ndarray, logit_scale: float,
             decided: np.ndarray) -> dict:
    """Cosines to the fp32 ``reference``; argmax agreement on all crops and on the ``decided`` ones."""
    features, reference, text = (np.asarray(a, dtype=np.float64) for a in (features, reference, text))
    cosine = (features * reference).sum(axis=1)
    ref_logits = logit_scale * reference @ text.T
    same = (logit_scale * features @ text.T).argmax(1) == ref_logits.argmax(1)
    decided = np.asarray(decided, dtype=bool)
    return {
        "cos_min": float(cosine.min()), "cos_median": float(np.median(cosine)),
        "agree_all": float(same.mean()), "decided": int(decided.sum()),
        "agree_decided": float(same[decided].mean()) if decided.any() else float("nan"),
        "margins": top1_margins(ref_logits),
    }


def passes(gate: dict, crops: int, min_cosine: float) -> bool:
    return (gate["cos_min"] >= min_cosine and gate["decided"] >= MIN_DECIDED * crops
            and gate["agree_decided"] >= MIN_AGREEMENT)
