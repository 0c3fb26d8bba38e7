"""Superpoints: ground removal and the over-segmentation that CLIP labels one piece at a time.

Two methods, chosen by ``ClusteringConfig.method``:

- ``"dbscan"``: RANSAC ground plane removal, then DBSCAN on the remaining points. Ground points get
  no superpoint; objects that touch each other merge. This is the paper's simple baseline.
- ``"supervoxel"``: annotation-free over-segmentation of *all* eligible points (ground included) into
  class-pure pieces; see ``supervoxel.py`` for the algorithm.
"""

from __future__ import annotations

import numpy as np

from .calibration import Projection
from .config import ClusteringConfig
from .types import IGNORE, InputError


def remove_ground_ransac(
    xyz: np.ndarray,
    distance: float,
    iterations: int,
    rng: np.random.Generator,
    max_tilt_deg: float = 20.0,
    score_samples: int = 4096,
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
    scores = (np.abs(sample @ normals.T + offsets) < distance).sum(axis=0)
    best = int(np.argmax(scores))
    inliers = np.abs(xyz @ normals[best] + offsets[best]) < distance
    # Least-squares refit z = a x + b y + c on the inliers removes the bias of the 3-point sample.
    if inliers.sum() >= 3:
        a = np.c_[xyz[inliers, :2], np.ones(int(inliers.sum()))]
        coef, *_ = np.linalg.lstsq(a, xyz[inliers, 2], rcond=None)
        normal = np.array([-coef[0], -coef[1], 1.0])
        scale = np.linalg.norm(normal)
        inliers = np.abs(xyz @ normal - coef[2]) / scale < distance
    return inliers


def relabel_contiguous(labels: np.ndarray, min_points: int) -> np.ndarray:
    """Renumber ids to 0..M-1 in order of first id; ids with < ``min_points`` points become IGNORE."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape[0], IGNORE, dtype=np.int32)
    valid = labels >= 0
    if not valid.any():
        return out
    ids, inverse, counts = np.unique(labels[valid], return_inverse=True, return_counts=True)
    keep = counts >= min_points
    new_ids = np.full(ids.shape[0], IGNORE, dtype=np.int64)
    new_ids[keep] = np.arange(int(keep.sum()))
    out[valid] = new_ids[inverse]
    return out


def dbscan_superpoints(points: np.ndarray, cfg: ClusteringConfig, eligible: np.ndarray, seed: int = 0) -> np.ndarray:
    """RANSAC ground removal + sklearn DBSCAN over the eligible, non-ground points."""
    from sklearn.cluster import DBSCAN

    labels = np.full(points.shape[0], IGNORE, dtype=np.int64)
    idx = np.flatnonzero(eligible)
    if cfg.remove_ground and idx.size:
        ground = remove_ground_ransac(
            points[idx, :3], cfg.ground_distance, cfg.ground_iterations, np.random.default_rng(seed)
        )
        idx = idx[~ground]
    if idx.size:
        labels[idx] = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples).fit_predict(points[idx, :3])
    return relabel_contiguous(labels, cfg.min_points)


def segment_superpoints(
    points: np.ndarray,
    cfg: ClusteringConfig,
    eligible: np.ndarray | None = None,
    views: list[tuple[Projection, np.ndarray]] | None = None,
) -> np.ndarray:
    """(N,) int32 superpoint ids 0..M-1, IGNORE for points that are not eligible or not clustered.

    ``eligible`` (N,) bool restricts clustering to some points (front-view points, or points without a
    seen label in the zero-shot mode). ``views`` holds, per camera, the projection of all N points and
    the image superpixel map (H, W) int32; the supervoxel method uses them as colour-boundary cues.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 4:
        raise InputError(f"segment_superpoints: points must be (N, 4) x y z intensity, got {points.shape}")
    n = points.shape[0]
    if eligible is None:
        eligible = np.ones(n, dtype=bool)
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.shape != (n,):
        raise InputError(f"segment_superpoints: eligible mask has shape {eligible.shape}, expected ({n},)")
    for i, (proj, sp_map) in enumerate(views or []):
        if proj.in_image.shape[0] != n:
            raise InputError(f"segment_superpoints: view {i} projects {proj.in_image.shape[0]} points, expected {n}")
        if np.asarray(sp_map).ndim != 2:
            raise InputError(f"segment_superpoints: view {i} superpixel map must be (H, W), got {np.shape(sp_map)}")
    if cfg.method == "dbscan":
        return dbscan_superpoints(points, cfg, eligible)
    if cfg.method == "supervoxel":
        from .supervoxel import supervoxel_superpoints

        return supervoxel_superpoints(points, cfg, eligible, views or [])
    raise InputError(f"clustering.method: expected 'supervoxel' or 'dbscan', got {cfg.method!r}")
