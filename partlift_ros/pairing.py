"""Nearest-timestamp pairing of LiDAR scans with camera images (pure, stamps only).

Rules, shared by the offline readers and the ROS node:
- a query is paired with the candidate whose stamp is nearest, if ``|dt| <= slop``; otherwise with nothing;
- a tie between an earlier and a later candidate at the same distance goes to the earlier one
  (it is the one an online node has already received);
- among candidates with the same stamp (duplicates), the first one (lowest index / pushed first) wins;
- a candidate may be paired with several queries: a camera slower than the LiDAR serves several scans.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from .types import InputError

T = TypeVar("T")


def _as_stamps(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    stamps = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(stamps).all():
        raise InputError(f"{what}: {int((~np.isfinite(stamps)).sum())} stamps are NaN/inf")
    return stamps


def _check_slop(slop: float) -> float:
    slop = float(slop)
    if np.isnan(slop) or slop < 0:
        raise InputError(f"slop must be a number >= 0 seconds (inf = no limit), got {slop}")
    return slop


def nearest_indices(queries: np.ndarray, candidates: np.ndarray, slop: float) -> np.ndarray:
    """For each query stamp, the index of the nearest candidate within ``slop`` or -1 (rules above)."""
    queries = _as_stamps(queries, "queries")
    candidates = _as_stamps(candidates, "candidates")
    slop = _check_slop(slop)
    out = np.full(queries.shape[0], -1, dtype=np.int64)
    if candidates.size == 0 or queries.size == 0:
        return out
    order = np.argsort(candidates, kind="stable")  # stable: duplicates keep their input order
    sorted_c = candidates[order]
    right = np.searchsorted(sorted_c, queries, side="left")  # first candidate >= query
    has_left = right > 0
    has_right = right < sorted_c.size
    left_pos = np.where(has_left, right - 1, 0)
    right_pos = np.where(has_right, right, 0)
    d_left = np.where(has_left, queries - sorted_c[left_pos], np.inf)
    d_right = np.where(has_right, sorted_c[right_pos] - queries, np.inf)
    take_left = d_left <= d_right  # tie -> the earlier candidate
    # The left neighbour is the *last* of its run of equal stamps; step back to the first of the run.
    left_first = np.searchsorted(sorted_c, sorted_c[left_pos], side="left")
    pos = np.where(take_left, left_first, right_pos)
    dist = np.minimum(d_left, d_right)
    ok = dist <= slop
    out[ok] = order[pos[ok]]
    return out


def nearest_within(stamp: float, candidates: Sequence[float] | np.ndarray, slop: float) -> int | None:
    """Index into ``candidates`` of the stamp nearest to ``stamp`` within ``slop`` seconds, or None."""
    idx = int(nearest_indices(np.array([stamp], dtype=np.float64), np.asarray(candidates), slop)[0])
    return None if idx < 0 else idx


def pair_by_stamp(
    cloud_stamps: Sequence[float] | np.ndarray,
    image_stamps: Sequence[float] | np.ndarray,
    slop: float,
) -> list[tuple[int, int]]:
    """(cloud index, image index) for every cloud that has an image within ``slop``, in cloud order.

    Clouds with no image close enough are left out; an image may serve several clouds.
    """
    idx = nearest_indices(np.asarray(cloud_stamps), np.asarray(image_stamps), slop)
    clouds = np.flatnonzero(idx >= 0)
    return [(int(c), int(idx[c])) for c in clouds]


class StampBuffer(Generic[T]):
    """A bounded buffer of (stamp, item) for streaming pairing (e.g. images waiting for a scan).

    Holds at most ``maxlen`` entries; pushing into a full buffer drops the oldest-pushed entry.
    """

    def __init__(self, maxlen: int) -> None:
        if int(maxlen) < 1:
            raise InputError(f"StampBuffer maxlen must be >= 1, got {maxlen}")
        self.maxlen = int(maxlen)
        self._entries: deque[tuple[float, T]] = deque(maxlen=self.maxlen)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def stamps(self) -> np.ndarray:
        return np.array([s for s, _ in self._entries], dtype=np.float64)

    def push(self, stamp: float, item: T) -> None:
        stamp = float(stamp)
        if not np.isfinite(stamp):
            raise InputError(f"StampBuffer.push: stamp {stamp} is not finite")
        self._entries.append((stamp, item))

    def take_nearest(self, stamp: float, slop: float, consume: bool = True) -> tuple[float, T] | None:
        """(stamp, item) nearest to ``stamp`` within ``slop`` (pairing rules above), or None.

        With ``consume`` the entry is removed, so one image is used once; pass ``consume=False``
        when a slow camera should serve several scans.
        """
        if not self._entries:
            return None
        idx = nearest_within(stamp, self.stamps, slop)
        if idx is None:
            return None
        entry = self._entries[idx]
        if consume:
            del self._entries[idx]
        return entry

    def drop_older_than(self, stamp: float) -> int:
        """Remove entries with a stamp strictly before ``stamp``; returns how many were removed."""
        kept = [(s, it) for s, it in self._entries if s >= stamp]
        dropped = len(self._entries) - len(kept)
        self._entries = deque(kept, maxlen=self.maxlen)
        return dropped

    def clear(self) -> None:
        self._entries.clear()

    def __repr__(self) -> str:
        span: Any = (float(self.stamps.min()), float(self.stamps.max())) if self._entries else None
        return f"StampBuffer(len={len(self)}, maxlen={self.maxlen}, span={span})"
