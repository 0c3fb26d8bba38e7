"""Instance affinity (Affinity3D): smooth CLIP scores over instances that look alike.

    W  = row-softmax(s · F Fᵀ)          affinity between normalised crop features
    T  = D⁻¹ W^∘β,  D = diag(W^∘β 1)    sharpened, row-stochastic transition
    Y' = T Y                            refined scores

Since the softmax normaliser of each row of W cancels in T, T_ij = exp(βs f_i·f_j) / Σ_k exp(βs f_i·f_k),
i.e. T = row-softmax(β s F Fᵀ). Computing it that way (max-subtracted) never overflows or underflows
to an all-zero row, however large s and β are.

Cross-frame state lives in two bounded queues: ``OfflineBlockQueue`` (the paper's block queue: looks
ahead, refines blocks of consecutive frames) and ``OnlineWindow`` (causal: the newest frame against
the last K frames).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Hashable

import numpy as np

from .types import InputError


def _as_pair(F: Any, Y: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    F = np.asarray(F)
    Y = np.asarray(Y)
    if Y.ndim == 1 and Y.shape[0] == 0:
        Y = Y.reshape(0, 0)
    if F.ndim == 1 and F.shape[0] == 0:
        F = F.reshape(0, 0)
    if F.ndim != 2 or Y.ndim != 2 or F.shape[0] != Y.shape[0]:
        raise InputError(f"{where}: expected features (M, D) and scores (M, C), got {F.shape} and {Y.shape}")
    dtype = np.result_type(F.dtype, Y.dtype, np.float32)
    return F.astype(dtype, copy=False), Y.astype(dtype, copy=False)


def transition(F_query: np.ndarray, F_keys: np.ndarray, scale: float, beta: float = 2.0) -> np.ndarray:
    """Rows of T for ``F_query`` over the instances ``F_keys``: row-softmax(β s F_q F_kᵀ), shape (Q, K)."""
    logits = (beta * scale) * (F_query @ F_keys.T)
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def refine(F: Any, Y: Any, scale: float, beta: float = 2.0) -> np.ndarray:
    """Y' = T Y with T = D⁻¹ W^∘β, W = row-softmax(s F Fᵀ); F (M, D) normalised, Y (M, C) -> (M, C)."""
    F, Y = _as_pair(F, Y, "refine")
    if F.shape[0] == 0:
        return Y.copy()
    return transition(F, F, scale, beta) @ Y


class _FrameShapes:
    """Checks that every frame pushed into a queue has the same feature and class dimensions."""

    def __init__(self) -> None:
        self.d: int | None = None
        self.c: int | None = None

    def check(self, F: np.ndarray, Y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
        if F.shape[0] == 0:
            # Frames without instances carry no features; only their class count matters (if known).
            return F.reshape(0, self.d or F.shape[1]), Y.reshape(0, self.c if self.c is not None else Y.shape[1])
        if self.d is not None and (F.shape[1] != self.d or Y.shape[1] != self.c):
            raise InputError(
                f"{where}: frame has features (M, {F.shape[1]}) and scores (M, {Y.shape[1]}) but earlier frames had "
                f"(M, {self.d}) and (M, {self.c}); reset the queue after changing the model or the classes"
            )
        self.d, self.c = F.shape[1], Y.shape[1]
        return F, Y

    def reset(self) -> None:
        self.d = self.c = None


class OfflineBlockQueue:
    """The paper's block queue: consecutive frames queue up and are refined together as one block.

    ``push`` returns nothing until at least ``queue_size`` instances are queued (or ``max_instances``, if
    smaller); then the whole block is refined, popped and returned as ``(key, Y')`` per frame in push
    order. Memory stays below ``max_instances`` plus one frame's instances.
    """

    def __init__(self, scale: float, beta: float = 2.0, queue_size: int = 200, max_instances: int = 2000) -> None:
        if queue_size < 1 or max_instances < 1:
            raise InputError(
                f"affinity queue: queue_size ({queue_size}) and max_instances ({max_instances}) must be >= 1"
            )
        self.scale = float(scale)
        self.beta = float(beta)
        self.threshold = min(int(queue_size), int(max_instances))
        self._frames: list[tuple[Hashable, np.ndarray, np.ndarray]] = []
        self._count = 0
        self._shapes = _FrameShapes()

    @property
    def pending_instances(self) -> int:
        return self._count

    @property
    def pending_frames(self) -> int:
        return len(self._frames)

    def push(self, key: Hashable, F: Any, Y: Any) -> list[tuple[Hashable, np.ndarray]]:
        F, Y = self._shapes.check(*_as_pair(F, Y, f"affinity queue push({key!r})"), f"affinity queue push({key!r})")
        if F.shape[0] == 0 and not self._frames:
            return [(key, Y.copy())]  # nothing queued ahead of it: it can leave at once, in order
        self._frames.append((key, F.copy(), Y.copy()))  # copies: the caller may reuse its arrays
        self._count += F.shape[0]
        if self._count >= self.threshold:
            return self.flush()
        return []

    def flush(self) -> list[tuple[Hashable, np.ndarray]]:
        """Refine everything queued as one block and return it in push order."""
        if not self._frames:
            return []
        frames, self._frames, self._count = self._frames, [], 0
        nonempty = [(F, Y) for _, F, Y in frames if F.shape[0]]
        if nonempty:
            refined = refine(np.concatenate([F for F, _ in nonempty]), np.concatenate([Y for _, Y in nonempty]),
                             self.scale, self.beta)
        out, start = [], 0
        for key, F, Y in frames:
            m = F.shape[0]
            out.append((key, refined[start:start + m] if m else Y.copy()))
            start += m
        return out

    def reset(self) -> None:
        """Drop everything queued (e.g. after a class change)."""
        self._frames, self._count = [], 0
        self._shapes.reset()


class OnlineWindow:
    """Causal refinement: the newest frame against itself and the last ``window_frames`` frames.

    Older frames are context only and contribute their raw scores (never their refined ones, so that a
    refinement does not feed back into later ones). The window is a bounded deque.
    """

    def __init__(self, scale: float, beta: float = 2.0, window_frames: int = 5) -> None:
        if window_frames < 0:
            raise InputError(f"affinity window: window_frames must be >= 0, got {window_frames}")
        self.scale = float(scale)
        self.beta = float(beta)
        self._context: deque[tuple[Hashable, np.ndarray, np.ndarray]] = deque(maxlen=int(window_frames))
        self._shapes = _FrameShapes()

    @property
    def context_keys(self) -> list[Hashable]:
        return [k for k, _, _ in self._context]

    @property
    def context_instances(self) -> int:
        return sum(F.shape[0] for _, F, _ in self._context)

    def push(self, key: Hashable, F: Any, Y: Any) -> np.ndarray:
        """Y' (M, C) of the newest frame; then the frame joins the context with its raw scores."""
        F, Y = self._shapes.check(*_as_pair(F, Y, f"affinity window push({key!r})"), f"affinity window push({key!r})")
        if F.shape[0] == 0:
            refined = Y.copy()
        else:
            keys = [F] + [Fc for _, Fc, _ in self._context if Fc.shape[0]]
            values = [Y] + [Yc for _, Fc, Yc in self._context if Fc.shape[0]]
            refined = transition(F, np.concatenate(keys), self.scale, self.beta) @ np.concatenate(values)
        self._context.append((key, F.copy(), Y.copy()))  # copies: the caller may reuse its arrays
        return refined

    def reset(self) -> None:
        self._context.clear()
        self._shapes.reset()
