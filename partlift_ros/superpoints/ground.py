"""Ground: the dominant plane (RANSAC), the road surface that heights refer to, and the kerb step between ground
neighbours.

A RANSAC plane splits ground from non-ground, and the ground again into road level and raised ground (more than
``kerb_height`` above the road surface): a kerb step of 10-15 cm separates sidewalks, parking bays and grass from
the road even where one image region covers both. The road surface is a plane refit on the road level, corrected
by a smooth grid of its local residuals (``road_cell``, see ``local_road_height``): one plane is off by up to
10 cm far away.
"""

from __future__ import annotations

import numpy as np

# m, the kerb the road-level band is sized for when the kerb cut is off but the kerb step is on
TYPICAL_KERB = 0.07
_FIT_POINTS = 4096  # ground points the road-level plane is fitted on (an even subset)


def remove_ground_ransac(
    xyz: np.ndarray,
    distance: float,
    iterations: int,
    rng: np.random.Generator,
    max_tilt_deg: float = 20.0,
    score_samples: int = 2048,
) -> np.ndarray:
    """(N,) bool mask of points within ``distance`` of the dominant near-horizontal plane.

    All candidate planes are drawn and scored at once on a random subset of the points (vectorised
    RANSAC); the best one is refit by least squares on its inliers and applied to every point.
    Planes tilted more than ``max_tilt_deg`` from horizontal are rejected so a wall never wins.
    """
    xyz = np.asarray(xyz, dtype=np.float64)[:, :3]
    n = xyz.shape[0]
    if n < 3:
        return np.zeros(n, dtype=bool)
    tri = xyz[rng.integers(0, n, size=(iterations, 3))]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norms = np.linalg.norm(normals, axis=1)
    ok = norms > 1e-9
    normals = normals / np.where(ok, norms, 1.0)[:, None]
    ok &= np.abs(normals[:, 2]) >= np.cos(np.deg2rad(max_tilt_deg))
    if not ok.any():
        return np.zeros(n, dtype=bool)
    normals, anchors = normals[ok], tri[ok, 0]
    offsets = -(normals * anchors).sum(axis=1)
    sample = xyz[rng.choice(n, size=min(n, score_samples), replace=False)]
    # Element-wise and in place, no BLAS: a threaded matmul of these small shapes cost several times more CPU
    # than the arithmetic on this 2-core machine, and each fresh (planes x samples) temporary more than that.
    dist = np.multiply(normals[:, :1], sample[:, 0])
    term = np.empty_like(dist)
    for axis in (1, 2):
        dist += np.multiply(normals[:, axis : axis + 1], sample[:, axis], out=term)
    dist += offsets[:, None]
    np.abs(dist, out=dist)
    scores = (dist < distance).sum(axis=1)
    best = int(np.argmax(scores))
    inliers = np.abs(_dot3(xyz, normals[best]) + offsets[best]) < distance
    # Least-squares refit z = a x + b y + c on the inliers removes the bias of the 3-point sample.
    if inliers.sum() >= 3:
        a, b, c = fit_plane(xyz[inliers])
        inliers = np.abs(xyz[:, 2] - a * xyz[:, 0] - b * xyz[:, 1] - c) / np.sqrt(a * a + b * b + 1.0) < distance
    return inliers


def _dot3(xyz: np.ndarray, v: np.ndarray) -> np.ndarray:
    return xyz[:, 0] * v[0] + xyz[:, 1] * v[1] + xyz[:, 2] * v[2]


def fit_plane(xyz: np.ndarray) -> tuple[float, float, float]:
    """Least-squares z = a x + b y + c through (n >= 3, 3) points, from the 3 x 3 normal equations of the centred
    points (no threaded LAPACK call on all n rows; same solution as ``np.linalg.lstsq``)."""
    mean = xyz.mean(axis=0)
    x, y, z = (xyz[:, i] - mean[i] for i in range(3))
    def dot(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.einsum("i,i->", u, v))  # numpy's own loop: OpenBLAS threads a dot of > 10k entries

    sxx, sxy, syy = dot(x, x), dot(x, y), dot(y, y)
    det = sxx * syy - sxy * sxy
    if abs(det) <= 1e-12 * max(sxx * syy, 1e-300):  # degenerate (collinear) points: a level plane
        return 0.0, 0.0, float(mean[2])
    sxz, syz = dot(x, z), dot(y, z)
    a, b = (syy * sxz - sxy * syz) / det, (sxx * syz - sxy * sxz) / det
    return a, b, float(mean[2] - a * mean[0] - b * mean[1])


def height_above_ground(xyz: np.ndarray, ground: np.ndarray, band: float, iterations: int = 100) -> np.ndarray:
    """(N,) signed height above the dominant ground level (the road, as a rule).

    A second, tight RANSAC (inliers within ``band``) over the ground points picks the largest flat level,
    so sidewalks, parking bays and grass a kerb above the road do not tilt the reference plane.
    """
    if ground.sum() < 3:
        return np.zeros(xyz.shape[0])
    # A plane needs no more than a few thousand points: an even subset keeps the cost flat in the scan's size.
    sample = np.flatnonzero(ground)
    sample = sample[:: max(1, sample.size // _FIT_POINTS)]
    level = remove_ground_ransac(xyz[sample], band, iterations, np.random.default_rng(1))
    fit = sample[level] if level.sum() >= 3 else sample
    a, b, c = fit_plane(xyz[fit])
    return xyz[:, 2] - a * xyz[:, 0] - b * xyz[:, 1] - c


def local_road_height(
    xyz: np.ndarray, ground: np.ndarray, band: float, cell: float, smooth: float = 1.0, iterations: int = 2
) -> np.ndarray:
    """(N,) signed height above a road surface that follows the local ground level (``cell`` <= 0: the plane).

    The road-level plane of ``height_above_ground`` drifts by up to +-10 cm from the road far away (the
    road bends and changes slope), enough to flag the road as raised or to hide a kerb. So its residuals
    over the road-level ground (within ``2 band`` of the surface, then within ``band`` on the refits)
    are averaged on an xy grid of ``cell`` m, smoothed and gap-filled by a normalised Gaussian filter of
    ``smooth`` cells, and interpolated bilinearly to every point.
    """
    from scipy import ndimage

    height = height_above_ground(xyz, ground, band)
    if cell <= 0 or ground.sum() < 3:
        return height
    grid_xy = (xyz[:, :2] - xyz[ground, :2].min(axis=0)) / cell
    cells = np.floor(grid_xy[ground]).astype(np.int64)
    shape = tuple(cells.max(axis=0) + 1)
    linear = np.ravel_multi_index((cells[:, 0], cells[:, 1]), shape)
    residual = height[ground]
    surface = np.zeros(residual.shape[0])
    width = 2 * band
    for _ in range(max(1, iterations)):
        level = np.abs(residual - surface) < width
        weight = np.bincount(linear[level], minlength=int(np.prod(shape))).reshape(shape).astype(np.float64)
        total = np.bincount(linear[level], residual[level], minlength=weight.size).reshape(shape)
        weight = ndimage.gaussian_filter(weight, smooth, mode="constant")
        total = ndimage.gaussian_filter(total, smooth, mode="constant")
        grid = np.where(weight > 1e-3, total / np.maximum(weight, 1e-12), 0.0)
        # Cell centres sit at +0.5 in grid units; outside the grid the edge value holds.
        surface = ndimage.map_coordinates(grid, (grid_xy[ground, 0] - 0.5, grid_xy[ground, 1] - 0.5), order=1,
                                          mode="nearest")
        width = band
    return height - ndimage.map_coordinates(grid, (grid_xy[:, 0] - 0.5, grid_xy[:, 1] - 0.5), order=1, mode="nearest")


def kerb_step(height: np.ndarray, ground: np.ndarray, pairs: np.ndarray, full_step: float) -> np.ndarray:
    """(E,) edge weight in [0, 1]: 1 where two ground scan neighbours differ by ``full_step`` in ``height``.

    The weight rises linearly from 0 at a quarter of ``full_step`` (range noise, the camber of the road)
    to 1 at ``full_step`` (a kerb); pairs with a point off the ground get 0.
    """
    if pairs.shape[0] == 0 or full_step <= 0:
        return np.zeros(pairs.shape[0])
    both = ground[pairs[:, 0]] & ground[pairs[:, 1]]
    dh = np.abs(height[pairs[:, 0]] - height[pairs[:, 1]])
    return np.where(both, np.clip((dh - 0.25 * full_step) / (0.75 * full_step), 0.0, 1.0), 0.0)


