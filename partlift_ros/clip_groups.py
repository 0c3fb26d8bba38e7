"""CLIP groups: the frames whose crops CLIP encodes together (see ``pipeline`` module doc).

CLIP's float results depend on how crops are batched (the same crop in another batch differs in the last
bits), so every path that labels a frame (``LabelPipeline.process``, a labelling job's worker, a CLIP actor on
another machine) must batch the same crops together: one rule, here, decided from the crop counts alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import Frame


@dataclass
class PreparedFrame:
    """A frame after every stage but CLIP: its crops wait to be encoded with the rest of its CLIP group."""

    frame: Frame
    instance: np.ndarray  # (N,) superpoint ids
    visible: np.ndarray  # (N,) bool
    num_instances: int
    valid: np.ndarray  # (M,) bool: has a crop
    boxes: np.ndarray  # (M, 4)
    keep: np.ndarray | None
    crops: list[np.ndarray]  # one per valid instance, in instance order
    timings_ms: dict[str, float]


class ClipGroups:
    """Collects prepared frames into CLIP groups: an offline affinity block or, in other modes, one frame.

    Mirrors ``affinity.OfflineBlockQueue``'s rule on the crop counts (a block closes once ``queue_size`` (or
    ``max_instances``) crops are queued; a frame without crops and nothing queued leaves alone), so a group
    pushed frame by frame into an empty queue pops from it as one block.
    """

    def __init__(self, affinity) -> None:
        offline = affinity.enabled and affinity.mode == "offline"
        self.threshold = min(int(affinity.queue_size), int(affinity.max_instances)) if offline else None
        self._frames: list[PreparedFrame] = []
        self._count = 0

    def add(self, prepared: PreparedFrame) -> list[PreparedFrame]:
        """The group closed by ``prepared`` (in order), or [] while it stays open."""
        m = len(prepared.crops)
        if self.threshold is None or (m == 0 and not self._frames):
            return [prepared]
        self._frames.append(prepared)
        self._count += m
        return self.take() if self._count >= self.threshold else []

    def take(self) -> list[PreparedFrame]:
        """The open group (end of a sequence), possibly empty."""
        group, self._frames, self._count = self._frames, [], 0
        return group
