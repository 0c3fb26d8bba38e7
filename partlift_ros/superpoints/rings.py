"""Scan lines: which points follow each other along a laser's sweep, and which lie on the laser below.

The range-image cues (depth jumps, scan roughness) need each point's neighbours along its laser's sweep (left,
right) and on the neighbouring laser (down; up is the same pair seen from the other end). Every rule comes from
the data, never from one sensor's constants or from the order the points are stored in:

- **Rings known** (a ``ring`` / ``channel`` field, an organised cloud's rows; ``Frame.ring``): a line is a ring,
  its points ordered by azimuth; rings are ranked by their median elevation (drivers number them either way).
- **Rings unknown**: lines are traced from elevation angles. One laser keeps almost the same elevation from one
  firing to the next (median 0.003 deg on KITTI's HDL-64E) while neighbouring lasers are 0.16-0.7 deg apart.
  A global elevation histogram cannot find the rings: the HDL-64E's lasers sit at different heights and its
  axis is tilted, so one laser's points spread over ~1 deg with range and azimuth, more than the beam spacing.
  Locally the two scales stay apart, so the elevation gaps between angular neighbours fall in two groups a decade
  or more apart (Otsu's split of the log gaps): the lower group gives the azimuth step (its azimuth gaps), the
  upper group the beam spacing, and a point's successor is the next point in azimuth less than a fraction of the
  beam spacing above or below it. Uneven beam spacing (the HDL-64E's two blocks, a Pandar's dense centre) only
  needs the tolerance to stay below the smallest spacing.
- **No lines** (a Livox-style non-repetitive pattern, or rings whose azimuth order does not sweep): the gaps
  show no two groups; the neighbours are the nearest points in angle and the cues that need a sweep (roughness)
  are left out.

All azimuth limits are multiples of the measured step (median azimuth gap between consecutive points of a line,
per ring when rings are known): a successor further than ``_MAX_STEPS`` steps away is a gap, not a neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .merge import unique_pairs

_MAX_STEPS = 4.0  # successive points of a line further apart in azimuth are not neighbours (a gap, dropped returns)
_TOLERANCE_OF_SPACING = 0.4  # a successor lies within this fraction of the smallest beam spacing in elevation
_MIN_SEPARATION = 1.0  # decades between the within-line and between-line elevation gaps for a cloud to have lines
_SAMPLE = 800  # points whose angular neighbours estimate the scales
_SEAM_BINS = 3600  # azimuth bins in which the seam is put into the widest empty sector
_STRETCH = 20.0  # azimuth stretch of the second neighbour search
_NEIGHBOURS = 10  # angular neighbours per sampled point (enough to hold the two successors when step > spacing)


@dataclass
class ScanLines:
    """The range-image structure of n points (positions 0..n-1 into the points given to ``scan_lines``)."""

    next: np.ndarray  # (n,) position of the next point along the line (azimuth up), -1 = none
    prev: np.ndarray  # (n,) position of the previous point along the line, -1 = none
    across: np.ndarray  # (F, 2) pairs (a, b): b is a's nearest point on the neighbouring line below
    azimuth_step: float  # rad, median azimuth gap between consecutive points of a line
    kind: str  # "ring" (rings given), "traced" (lines estimated from elevation) or "none" (no lines)

    @property
    def along(self) -> np.ndarray:
        """(E, 2) pairs (a, b): b follows a along its line."""
        a = np.flatnonzero(self.next >= 0)
        return np.c_[a, self.next[a]]

    @property
    def pairs(self) -> np.ndarray:
        """(E + F, 2) all scan-neighbour pairs: along the lines, then across them."""
        return np.r_[self.along, self.across].astype(np.int64)


def angles(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth (rad, turned so that the widest empty sector holds the -pi/pi seam, in [0, 2 pi)) and elevation."""
    xyz = np.asarray(xyz, dtype=np.float64)
    azimuth = np.arctan2(xyz[:, 1], xyz[:, 0])
    elevation = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
    if azimuth.size:
        # A front camera sees a sector: no line is then cut in two at the seam. The widest run of empty
        # 0.1-degree bins is found without sorting the points.
        bins = np.bincount(((azimuth + np.pi) * (_SEAM_BINS / (2 * np.pi))).astype(np.int64) % _SEAM_BINS,
                           minlength=_SEAM_BINS)
        full = np.flatnonzero(bins)
        gaps = np.diff(np.r_[full, full[0] + _SEAM_BINS])
        start = full[(int(np.argmax(gaps)) + 1) % full.size] * (2 * np.pi / _SEAM_BINS) - np.pi
        azimuth = np.mod(azimuth - start, 2 * np.pi)
    return azimuth, elevation


def scan_lines(xyz: np.ndarray, ring: np.ndarray | None = None) -> ScanLines:
    """The scan lines of the points ``xyz`` (n, 3) in any order; ``ring`` (n,) laser index when known."""
    n = int(np.shape(xyz)[0])
    azimuth, elevation = angles(xyz)
    if n < 3:
        return _no_lines(n, 0.0)
    if ring is not None:
        lines = _ring_lines(azimuth, elevation, np.asarray(ring, dtype=np.int64))
        if lines is not None:
            return lines
    scales = elevation_scales(azimuth, elevation)
    if scales is None:
        return _nearest_in_angle(azimuth, elevation)
    return _traced_lines(azimuth, elevation, *scales)


def _no_lines(n: int, step: float, across: np.ndarray | None = None) -> ScanLines:
    none = np.full(n, -1, dtype=np.int64)
    return ScanLines(none, none.copy(), np.zeros((0, 2), np.int64) if across is None else across, step, "none")


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold: the split of ``values`` that maximises the between-group variance."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = hist.sum() - w0
    m0 = np.cumsum(hist * centres)[:-1] / np.maximum(w0, 1)
    m1 = ((hist * centres).sum() - np.cumsum(hist * centres)[:-1]) / np.maximum(w1, 1)
    return float(edges[1:-1][int(np.argmax(w0 * w1 * (m0 - m1) ** 2))])


def elevation_scales(azimuth: np.ndarray, elevation: np.ndarray) -> tuple[float, float, float] | None:
    """(within-line elevation tolerance, azimuth step, widest beam spacing) in rad, or None when there are no lines.

    Measured on the angular neighbours of a sample of the points, in one contiguous azimuth sector (so the local
    density is the real one).
    """
    from scipy.spatial import cKDTree

    # The points of the azimuth sector around the median azimuth that holds about 5 x _SAMPLE of them.
    lo, mid, hi = np.quantile(azimuth, [0.5 - 2.5 * _SAMPLE / azimuth.size, 0.5, 0.5 + 2.5 * _SAMPLE / azimuth.size]
                              if azimuth.size > 5 * _SAMPLE else [0.0, 0.5, 1.0])
    window = np.flatnonzero((azimuth >= lo) & (azimuth <= hi))
    ang = np.c_[azimuth[window], elevation[window]]
    k = min(_NEIGHBOURS + 1, window.size)
    if k < 3:
        return None
    every = max(1, window.size // _SAMPLE)
    # Neighbours in angle, and in angle with the azimuth stretched: the second reach the next line even when
    # the beams are far apart compared with the azimuth step (a 16-beam sensor: 2 deg vs 0.2 deg).
    nbs = [cKDTree(ang * [stretch, 1.0]).query((ang * [stretch, 1.0])[::every], k=k)[1][:, 1:]
           for stretch in (1.0, _STRETCH)]
    nb, query = np.concatenate(nbs, axis=1), ang[::every]
    d_el = np.abs(ang[nb, 1] - query[:, 1:2])
    d_az = np.abs(ang[nb, 0] - query[:, :1])
    log_gap = np.log10(np.maximum(d_el, 1e-7))
    split = _otsu(log_gap.ravel())
    within = log_gap < split
    if not within.any() or within.all():
        return None
    separation = np.median(log_gap[~within]) - np.median(log_gap[within])
    has_successor = within.any(axis=1)
    if separation < _MIN_SEPARATION or has_successor.mean() < 0.5:
        return None
    # Per point, the gap to the nearest other line: its median is the typical beam spacing, a low percentile
    # the smallest (beams are spaced unevenly on many sensors).
    to_next_line = np.where(within, np.inf, d_el).min(axis=1)
    to_next_line = to_next_line[np.isfinite(to_next_line)]
    if to_next_line.size == 0:
        return None
    step = float(np.median(np.where(within, d_az, np.inf).min(axis=1)[has_successor]))
    tolerance = max(_TOLERANCE_OF_SPACING * float(np.percentile(to_next_line, 10)), 10.0**split)
    return tolerance, max(step, 1e-6), float(np.percentile(to_next_line, 90))


def _traced_lines(
    azimuth: np.ndarray, elevation: np.ndarray, tolerance: float, step: float, spacing: float
) -> ScanLines:
    """Successor = the next point in azimuth within ``tolerance`` in elevation (rows of that height, +-1 row)."""
    n = azimuth.size
    row = np.floor(elevation / tolerance)
    key = row * 8.0 + azimuth  # azimuth < 2 pi < 8: rows never overlap
    order = np.argsort(key)
    # Everything in sorted order: the queries below are then sorted too, and searchsorted stays cache-friendly.
    row, az, el, key = row[order], azimuth[order], elevation[order], key[order]
    best, best_gap = np.full(n, -1, dtype=np.int64), np.full(n, np.inf)
    for shift in (-1, 0, 1):
        pos = np.minimum(np.arange(1, n + 1), n - 1) if shift == 0 else np.searchsorted(key, key + shift * 8.0, "right")
        cand = np.minimum(pos, n - 1)
        gap = az[cand] - az
        ok = (pos < n) & (row[cand] == row + shift) & (gap > 0) & (gap <= _MAX_STEPS * step)
        ok &= np.abs(el[cand] - el) < tolerance
        better = ok & (gap < best_gap)
        best[better], best_gap[better] = cand[better], gap[better]
    nxt = np.full(n, -1, dtype=np.int64)
    has = best >= 0
    nxt[order[has]] = order[best[has]]
    prev = np.full(n, -1, dtype=np.int64)
    prev[nxt[nxt >= 0]] = np.flatnonzero(nxt >= 0)
    across = _across_by_columns(azimuth, elevation, step, tolerance, 2.0 * spacing)
    return ScanLines(nxt, prev, across, step, "traced")


def _across_by_columns(
    azimuth: np.ndarray, elevation: np.ndarray, step: float, skip: float, max_gap: float
) -> np.ndarray:
    """(F, 2) pairs: each point and the nearest point at least ``skip`` below it (the next line down) in its
    azimuth column (two ``step`` wide, so each line has a point or two in it), the nearer in azimuth of that
    line's top two there; none further than ``max_gap`` below."""
    col = np.floor(azimuth / (2 * step))
    key = col * 4.0 + (elevation + 2.0)  # elevation + 2 in (0.4, 3.6): columns never overlap
    order = np.argsort(key)
    col, az, el, key = col[order], azimuth[order], elevation[order], key[order]
    below = np.searchsorted(key, key - skip, side="left") - 1  # sorted queries: cache-friendly
    other = below - 1
    ok = (below >= 0) & (col[np.maximum(below, 0)] == col)
    below = np.maximum(below, 0)
    ok &= el - el[below] <= max_gap
    # The point under it in the same column is on the same line when it is within ``skip``: take the nearer.
    second = (other >= 0) & (col[np.maximum(other, 0)] == col) & (el[below] - el[np.maximum(other, 0)] < skip)
    second &= np.abs(az[np.maximum(other, 0)] - az) < np.abs(az[below] - az)
    pick = np.where(second, other, below)
    return np.c_[order[ok], order[pick[ok]]].astype(np.int64)


def _ring_lines(azimuth: np.ndarray, elevation: np.ndarray, ring: np.ndarray) -> ScanLines | None:
    """Lines from known rings, or None when the rings do not sweep in azimuth (e.g. Livox 'line' ids)."""
    n = azimuth.size
    _, ring = np.unique(ring, return_inverse=True)
    ring = ring.reshape(-1)
    num = int(ring.max()) + 1
    order = np.lexsort((azimuth, ring))
    a, b = order[:-1], order[1:]
    same = ring[a] == ring[b]
    a, b = a[same], b[same]
    gap = azimuth[b] - azimuth[a]
    if a.size == 0:
        return None
    # Per-ring median azimuth gap (rings fire at their own rate on some sensors).
    global_step = float(np.median(gap))
    step = _group_median(gap, ring[a], num)
    step = np.where(np.isfinite(step) & (step > 0), step, global_step)
    # Rings sweep when successive points keep their elevation: far less than the beam spacing changes.
    level = _group_median(elevation, ring, num)
    spacing = np.diff(np.sort(level))
    typical = float(np.median(spacing)) if spacing.size else 0.0
    if typical <= 0 or np.median(np.abs(elevation[b] - elevation[a])) > 0.25 * typical:
        return None
    ok = (gap > 0) & (gap <= _MAX_STEPS * step[ring[a]])
    nxt, prev = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
    nxt[a[ok]], prev[b[ok]] = b[ok], a[ok]
    # Across: the point of the ring ranked just below with the nearest azimuth.
    rank = np.argsort(np.argsort(level, kind="stable"), kind="stable")[ring]
    key = rank * 8.0 + azimuth
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    query = key - 8.0
    hit = np.searchsorted(sorted_key, query)
    cand = by_key[np.stack([np.clip(hit - 1, 0, n - 1), np.clip(hit, 0, n - 1)], axis=1)]
    az_gap = np.where(rank[cand] == rank[:, None] - 1, np.abs(azimuth[cand] - azimuth[:, None]), np.inf)
    pick = cand[np.arange(n), np.argmin(az_gap, axis=1)]
    ok = az_gap.min(axis=1) <= _MAX_STEPS * step[ring]
    across = np.c_[np.flatnonzero(ok), pick[ok]].astype(np.int64)
    return ScanLines(nxt, prev, across, global_step, "ring")


def _group_median(values: np.ndarray, group: np.ndarray, num: int) -> np.ndarray:
    """(num,) median (upper middle element) of ``values`` per group id 0..num-1, NaN for empty groups."""
    out = np.full(num, np.nan)
    order = np.lexsort((values, group))
    count = np.bincount(group, minlength=num)
    has = count > 0
    start = np.searchsorted(group[order], np.arange(num))
    out[has] = values[order[start[has] + count[has] // 2]]
    return out


def _nearest_in_angle(azimuth: np.ndarray, elevation: np.ndarray, k: int = 4) -> ScanLines:
    """No lines: each point's ``k`` nearest points in angle are its neighbours (no along-line order)."""
    from scipy.spatial import cKDTree

    n = azimuth.size
    ang = np.c_[azimuth * np.cos(elevation), elevation]
    kk = min(k + 1, n)
    dist, nb = cKDTree(ang).query(ang, k=kk)
    pairs = np.c_[np.repeat(np.arange(n), kk - 1), nb[:, 1:].reshape(-1)]
    step = float(np.median(dist[:, 1])) if kk > 1 else 0.0
    return _no_lines(n, step, unique_pairs(pairs, n).astype(np.int64))
