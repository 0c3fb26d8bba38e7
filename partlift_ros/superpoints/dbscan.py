"""The paper's simple baseline: RANSAC ground removal, then DBSCAN on the remaining points.

Ground points get no superpoint; objects that touch each other merge.
"""

from __future__ import annotations

import numpy as np

from ..config import ClusteringConfig
from ..types import IGNORE
from .ground import remove_ground_ransac
from .pieces import relabel_contiguous


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

