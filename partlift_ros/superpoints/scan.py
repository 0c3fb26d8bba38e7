"""Range-image cues on the scan lines (``rings.py``): depth jumps, the parts between them, scan roughness.

- **Depth jump** between two scan neighbours (``depth_jump``): 1 where they lie on surfaces at different depths.
  Pieces never span a strong jump (``smooth_parts``: a person in front of a bush touches it in voxels but not in
  depth), and the merge pays for joining pieces across one (``boundary_weight``). Unlike voxel contact this links
  far, sparse points too: how different the two sides are is left to the edge weight.
- **Scan roughness** (``scan_roughness``): the distance of a point from the chord of its two neighbours along its
  line, over the chord: near zero on walls and fences, ~0.2 in foliage. Averaged over a few points along the line
  (``rough_points``) it cuts fences from the hedges that touch them (``rough_cut``). Points without two close
  line neighbours (a gap, a depth jump, a cloud without lines) get the median, so the cue is neutral there.
"""

from __future__ import annotations

import numpy as np

from .rings import ScanLines, scan_lines

_GAP_STEPS = 10.0  # a line neighbour further than this many azimuth steps x range (+ max_gap) is across a jump


def scan_neighbours(points: np.ndarray, idx: np.ndarray, ring: np.ndarray | None = None) -> np.ndarray:
    """(E, 2) pairs of positions into ``idx`` that are neighbours in the range image (along and across lines).

    ``points`` (N, >= 3) is the whole scan in any order, ``ring`` (N,) its laser index when known.
    """
    lines = scan_lines(np.asarray(points)[idx, :3], None if ring is None else np.asarray(ring)[idx])
    return lines.pairs


def depth_jump(xyz: np.ndarray, pairs: np.ndarray, flat_angle_deg: float = 30.0) -> np.ndarray:
    """(E,) edge weight in [0, 1]: 1 where two scan neighbours lie on surfaces at different depths.

    Uses the angle beta between the segment joining the two points and the laser ray of the farther
    one (Bogoslavskyi and Stachniss, 2016): beta is large on one surface, even a steep one or far away,
    and small across a depth jump; the weight falls linearly from 1 at beta = 0 to 0 at
    ``flat_angle_deg``.
    """
    p, q = xyz[pairs[:, 0]], xyz[pairs[:, 1]]
    rp, rq = np.linalg.norm(p, axis=1), np.linalg.norm(q, axis=1)
    far, near = np.maximum(rp, rq), np.minimum(rp, rq)
    cos_alpha = np.clip((p * q).sum(axis=1) / np.maximum(rp * rq, 1e-12), -1.0, 1.0)
    beta = np.arctan2(near * np.sqrt(1.0 - cos_alpha**2), far - near * cos_alpha)
    limit = np.deg2rad(flat_angle_deg)
    return np.clip((limit - beta) / limit, 0.0, 1.0)


def smooth_parts(n: int, pairs: np.ndarray, jump: np.ndarray, threshold: float) -> np.ndarray:
    """(n,) id of the connected parts of the scan-neighbour graph once pairs with ``jump`` >= threshold
    are cut: a part never spans a strong depth jump (a car and the wall behind it, a pole and the
    road it stands on seen from a low angle stay joined; a person in front of a bush does not)."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    keep = jump < threshold
    graph = sparse.coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (pairs[keep, 0], pairs[keep, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def scan_roughness(xyz: np.ndarray, lines: ScanLines, max_gap: float = 0.1, cap: float = 0.5) -> np.ndarray:
    """(n,) roughness: distance of each point from the chord of its two line neighbours, over the chord.

    ``xyz`` (n, 3) are the points ``lines`` was built on. A neighbour further than ``10 x azimuth step x range
    + max_gap`` (a depth jump) or missing does not count; such points get the median roughness of the valid
    ones, so the cue is neutral there (everywhere on a cloud without lines).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    prev, nxt = lines.prev, lines.next
    valid = (prev >= 0) & (nxt >= 0)
    p, a, b = xyz, xyz[np.maximum(prev, 0)], xyz[np.maximum(nxt, 0)]
    limit = _GAP_STEPS * lines.azimuth_step * np.linalg.norm(p, axis=1) + max_gap
    valid &= (np.linalg.norm(p - a, axis=1) < limit) & (np.linalg.norm(b - p, axis=1) < limit)
    chord = b - a
    length = np.linalg.norm(chord, axis=1) + 1e-9
    rough = np.minimum(np.linalg.norm(np.cross(p - a, chord), axis=1) / length**2, cap)
    return np.where(valid, rough, float(np.median(rough[valid])) if valid.any() else 0.0)


def along_line_mean(values: np.ndarray, lines: ScanLines, window: int) -> np.ndarray:
    """(n,) mean of ``values`` over ``window`` consecutive points of each point's line (fewer at a line's ends)."""
    values = np.asarray(values, dtype=np.float64)
    total, count = values.copy(), np.ones(values.shape[0])
    for step in (lines.next, lines.prev):
        at = np.arange(values.shape[0])
        for _ in range(max(0, (window - 1) // 2)):
            at = np.where(at >= 0, step[np.maximum(at, 0)], -1)
            has = at >= 0
            total[has] += values[at[has]]
            count += has
    return total / count


def rough_points(roughness: np.ndarray, lines: ScanLines, window: int, threshold: float) -> np.ndarray:
    """(n,) bool: points whose scan roughness, averaged over ``window`` points along the line, exceeds ``threshold``.

    One point's roughness is noisy (a leaf edge on a fence, a flat leaf in a hedge); the average over a few
    neighbours along the line is not: ~0.04 on fences and walls, ~0.2 in hedges and trees on KITTI scans.
    """
    return along_line_mean(roughness, lines, window) > threshold
