"""Merging pieces to the budget: mutual cheapest pairs first, many disjoint pairs per round, vectorised.

The cost of joining pieces a and b is

    (n_a n_b / (n_a + n_b))^s * ( ||f_a - f_b||^2 + (w_p dPlane + w_l dLine) / (n_a + n_b) + w_b boundary_ab )

with mean features f (see ``supervoxel``) and dPlane / dLine the growth of the squared distances of the points to
their best plane / line when the two are joined (from running first and second moments, exact for any merge
order). Close, similar pieces go first; the size factor makes large pieces expensive to grow, so small distinct
objects keep their own superpoint; the shape terms make it costlier for a wall to join a bush or a pole its sign.
Where two pieces meet in the scan, ``boundary_ab`` is the mean edge weight (depth jump, kerb step) over the point
pairs that join them; pieces that do not touch count as a full boundary.

A round joins only pairs that cost at most ``round_ratio`` times its cheapest one: with no cap about six rounds
did all ~750 merges of a KITTI frame, the first joining every mutual pair however dear, so the cost terms barely
mattered. Cached pair costs (only pairs of changed pieces are recomputed) keep the capped rounds cheap.
"""

from __future__ import annotations

import numpy as np


# A merge round joins at least this share of its mutual picks (the cheapest; no more than the excess).
_MIN_ROUND_SHARE = 0.5


def unique_pairs(pairs: np.ndarray, num: int) -> np.ndarray:
    """Rows (a, b) -> unique sorted rows a < b; self pairs dropped (one int64 key: faster than axis=0)."""
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    key = np.unique((lo * num + hi)[lo != hi])
    return np.c_[key // num, key % num]


def candidate_pairs(centroids: np.ndarray, k: int) -> np.ndarray:
    """(E, 2) unique pairs a < b of pieces among each other's k nearest centroids."""
    from scipy.spatial import cKDTree

    kk = min(k + 1, centroids.shape[0])
    if kk < 2:  # one piece has no partner (and a k=1 query would return flat arrays)
        return np.zeros((0, 2), dtype=np.int64)
    _, nb = cKDTree(centroids).query(centroids, k=kk)
    pairs = np.c_[np.repeat(np.arange(centroids.shape[0]), kk - 1), nb[:, 1:].reshape(-1)]
    return unique_pairs(pairs, centroids.shape[0])


def symmetric_eigenvalues(cov: np.ndarray) -> np.ndarray:
    """(M, 3) ascending eigenvalues of (M, 3, 3) symmetric matrices, closed form (trigonometric method).

    Several times faster than numpy's batched LAPACK call for the few thousand 3x3 matrices of one
    merge round.
    """
    a00, a11, a22 = cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2]
    a01, a02, a12 = cov[:, 0, 1], cov[:, 0, 2], cov[:, 1, 2]
    q = (a00 + a11 + a22) / 3.0
    p = np.sqrt(((a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2.0 * (a01**2 + a02**2 + a12**2)) / 6.0)
    round_ = p <= 1e-12 * np.maximum(np.abs(q), 1e-300)  # a multiple of the identity
    safe = np.where(round_, 1.0, p)
    b00, b11, b22 = (a00 - q) / safe, (a11 - q) / safe, (a22 - q) / safe
    b01, b02, b12 = a01 / safe, a02 / safe, a12 / safe
    det = b00 * (b11 * b22 - b12**2) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    largest = np.where(round_, q, q + 2.0 * p * np.cos(phi))
    smallest = np.where(round_, q, q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0))
    return np.stack([smallest, 3.0 * q - largest - smallest, largest], axis=1)


_UPPER = (np.array([0, 1, 2, 0, 0, 1]), np.array([0, 1, 2, 1, 2, 2]))  # xx yy zz xy xz yz


def _shape_sse(count: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of squared distances of each piece's points to its best plane and to its best line.

    ``s1`` (M, 3) and ``s2`` (M, 6) are the sums of x and of the products in ``_UPPER`` order.
    """
    mean = s1 / count[:, None]
    second = s2 / count[:, None]
    cov = np.empty((count.shape[0], 3, 3))
    for j, (r, c) in enumerate(zip(*_UPPER)):
        cov[:, r, c] = cov[:, c, r] = second[:, j] - mean[:, r] * mean[:, c]
    eig = np.maximum(symmetric_eigenvalues(cov), 0.0)
    return count * eig[:, 0], count * (eig[:, 0] + eig[:, 1])


def sum_by(ids: np.ndarray, values: np.ndarray, num: int) -> np.ndarray:
    """(num, D) column sums of (n, D) values grouped by id."""
    return np.stack([np.bincount(ids, values[:, j], num) for j in range(values.shape[1])], axis=1)


def _pair_table(pairs: np.ndarray, values: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique pair rows a < b (self pairs dropped) and the column sums of (E, V) ``values`` per row."""
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    keep = lo != hi
    key, inverse = np.unique(lo[keep] * num + hi[keep], return_inverse=True)
    return np.stack([key // num, key % num], axis=1), sum_by(inverse, values[keep], key.shape[0])


def merge_pieces(
    piece: np.ndarray,
    features: np.ndarray,
    target: int,
    size_exponent: float,
    k: int,
    *,
    xyz: np.ndarray | None = None,
    plane_weight: float = 0.0,
    line_weight: float = 0.0,
    min_size: int = 1,
    boundary: tuple[np.ndarray, np.ndarray] | None = None,
    boundary_weight: float = 0.0,
    round_ratio: float = np.inf,
) -> np.ndarray:
    """Merge pieces (ids 0..P-1 per point) until at most ``target`` pieces of >= ``min_size`` points remain.

    Returns the merged id per point. The cost of a pair is given in the module docstring; the shape
    terms need ``xyz`` (else candidates come from the first three feature columns and there is no
    shape term). Each round every piece picks its cheapest candidate partner; mutual picks merge (a
    matching, so rounds never chain dissimilar pieces), the cheapest first and no more than needed to
    hit ``target``, and none that costs more than ``round_ratio`` times the cheapest pick of the round.
    The cap keeps the global cost order: without it the first round joins every mutual pair, dear
    ones included, while far cheaper pairs wait for a partner that is busy elsewhere. The globally
    cheapest pair is always mutual, so every round makes progress. Candidates are the k nearest
    centroids, refreshed when exhausted. Pieces below ``min_size`` do not count towards the target
    (they end up IGNORE), so they never use up the budget.

    ``boundary`` = (point pairs (E, 2), weights (E,) in [0, 1]) adds ``boundary_weight`` times the mean
    weight of the pairs that join the two pieces (where they actually meet); touching pieces are also
    candidates, and candidates that do not touch count as a full boundary (weight 1).
    """
    num = int(piece.max()) + 1
    count = np.bincount(piece, minlength=num).astype(np.float64)
    sums = sum_by(piece, features, num)
    position = features[:, :3] if xyz is None else xyz
    s1 = sum_by(piece, position, num)
    shape = xyz is not None and (plane_weight > 0 or line_weight > 0)
    if shape:
        s2 = sum_by(piece, position[:, _UPPER[0]] * position[:, _UPPER[1]], num)
        plane_sse, line_sse = _shape_sse(count, s1, s2)
    merged = np.arange(num)
    use_boundary = boundary is not None and boundary_weight > 0 and boundary[0].shape[0] > 0
    # One table of candidate pairs, with per row: the summed weight and number of the point pairs that
    # join the two pieces, and the cached cost. Merging renumbers and re-aggregates it (the point pairs
    # are read once) and only rows of pieces that changed get a new cost.
    nearest = candidate_pairs(s1 / count[:, None], k)
    table = np.c_[nearest, np.zeros((nearest.shape[0], 2))]
    if use_boundary:
        weight = np.asarray(boundary[1], dtype=np.float64)
        table = np.r_[table, np.c_[piece[boundary[0]], weight, np.ones_like(weight)]]
    pairs, values = _pair_table(table[:, :2].astype(np.int64), np.c_[table[:, 2:], np.zeros(table.shape[0])], num)
    contact_sum, contact_count, cost = values[:, 0], values[:, 1], np.full(pairs.shape[0], np.nan)

    while (excess := int((count >= min_size).sum()) - target) > 0:
        if pairs.shape[0] == 0:
            pairs = candidate_pairs(s1 / count[:, None], k)
            contact_sum, contact_count = np.zeros(pairs.shape[0]), np.zeros(pairs.shape[0])
            cost = np.full(pairs.shape[0], np.nan)
        dirty = np.flatnonzero(np.isnan(cost))
        a, b = pairs[dirty, 0], pairs[dirty, 1]
        n_ab = count[a] + count[b]
        dissimilarity = ((sums[a] / count[a, None] - sums[b] / count[b, None]) ** 2).sum(axis=1)
        if shape:
            joint_plane, joint_line = _shape_sse(n_ab, s1[a] + s1[b], s2[a] + s2[b])
            growth = plane_weight * np.maximum(joint_plane - plane_sse[a] - plane_sse[b], 0.0)
            growth += line_weight * np.maximum(joint_line - line_sse[a] - line_sse[b], 0.0)
            dissimilarity += growth / n_ab
        if use_boundary:
            mean_jump = contact_sum[dirty] / np.maximum(contact_count[dirty], 1.0)
            dissimilarity += boundary_weight * np.where(contact_count[dirty] > 0, mean_jump, 1.0)
        cost[dirty] = dissimilarity * (count[a] * count[b] / n_ab) ** size_exponent
        a, b = pairs[:, 0], pairs[:, 1]
        src, dst, both = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([cost, cost])
        best_cost = np.full(count.shape[0], np.inf)
        np.minimum.at(best_cost, src, both)  # unbuffered scatter-min: no sort of all pairs per round
        cheapest = both == best_cost[src]
        best = np.full(count.shape[0], -1)
        best[src[cheapest]] = dst[cheapest]
        has = np.flatnonzero(best >= 0)
        winners = has[(best[best[has]] == has) & (has < best[has])]
        winners = winners[np.argsort(best_cost[winners], kind="stable")[:excess]]
        if winners.size:
            # The cap, but never fewer than a share of the mutual picks (the cheapest): the first rounds of a
            # KITTI frame joined 1-45 near-free pairs each, and every round costs a pass over all pairs.
            cap = round_ratio * best_cost[winners[0]]
            least = int(np.ceil(_MIN_ROUND_SHARE * winners.size))
            cap = max(cap, best_cost[winners[least - 1]])
            winners = winners[best_cost[winners] <= cap]
        dearest = float(best_cost[winners].max()) if winners.size else 0.0
        if winners.size == 0:  # exact cost ties can leave no mutual pick: join the cheapest pair
            j = int(np.argmin(cost))
            winners = np.array([min(a[j], b[j])])
            best[winners[0]] = max(a[j], b[j])
            dearest = float(cost[j])
        absorbed, absorber = best[winners], winners
        # Pieces too small to count (single points cut off by the image, depth and roughness cuts: a third of
        # the pieces of a KITTI frame) join their cheapest partner that counts, many into one, when that costs no
        # more than the dearest pair joined this round: they never use up the budget, and each round no longer
        # carries them.
        busy = np.zeros(count.shape[0], dtype=bool)
        busy[winners], busy[absorbed] = True, True
        small = np.flatnonzero((count < min_size) & ~busy & (best >= 0) & (best_cost <= dearest))
        small = small[count[best[small]] >= min_size]
        if small.size:
            target_of = np.arange(count.shape[0])
            target_of[absorbed] = absorber
            absorbed, absorber = np.r_[absorbed, small], np.r_[absorber, target_of[best[small]]]
        # Each absorber takes the sums of the pieces it absorbs (absorbers are never absorbed themselves);
        # the absorbed rows are dropped and the survivors renumbered in order.
        survivor = np.ones(count.shape[0], dtype=bool)
        survivor[absorbed] = False
        new_id = np.cumsum(survivor) - 1
        new_id[absorbed] = new_id[absorber]
        for stats in (count, sums, s1) + ((s2,) if shape else ()):
            np.add.at(stats, absorber, stats[absorbed])
        count, sums, s1 = count[survivor], sums[survivor], s1[survivor]
        m = count.shape[0]
        changed = np.zeros(m, dtype=bool)
        changed[new_id[absorber]] = True
        if shape:
            s2, plane_sse, line_sse = s2[survivor], plane_sse[survivor], line_sse[survivor]
            plane_sse[changed], line_sse[changed] = _shape_sse(count[changed], s1[changed], s2[changed])
        merged = new_id[merged]
        pairs, values = _pair_table(new_id[pairs], np.stack([contact_sum, contact_count, cost], axis=1), m)
        contact_sum, contact_count = values[:, 0], values[:, 1]
        # Rows of untouched pieces keep their cost (each is one old row); the others are recomputed.
        cost = np.where(changed[pairs[:, 0]] | changed[pairs[:, 1]], np.nan, values[:, 2])
    return merged[piece]
