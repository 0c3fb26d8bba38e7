"""How many superpoints a frame gets: in proportion to the view its eligible points cover.

The number of distinct objects and surfaces in a frame grows with how much of the world the cameras see, not with
how many cameras see it (a stereo pair sees one view) nor with how densely the LiDAR samples it (a 16-beam sensor
sees the same cars as a 64-beam one, with fewer points each). So the budget is ``superpoint_density`` per
steradian of the solid angle the eligible points cover: per 1-degree azimuth column, the band between its lowest
and highest point (empty columns, e.g. between cameras that look apart, count nothing). KITTI's front camera
covers 0.386 sr (0.377-0.389 over the 25 frames of seq 00; 0.399 on seq 08), so the default of 780 per sr keeps
its ~300; the same frames' left and right cameras together cover 2.5 % more, every 4th ring 8 % less, the whole
360 degree scan 2.67 sr (~2080). One fixed budget shared by a six-camera surround rig merged objects with the
ground (RESULTS.md). ``max_superpoints`` > 0 sets a fixed budget instead.
"""

from __future__ import annotations

import numpy as np

from ..config import ClusteringConfig

_COLUMN = np.deg2rad(1.0)  # rad, azimuth column of the coverage


def view_solid_angle(xyz: np.ndarray) -> float:
    """Steradians covered by the points ``xyz`` (n, 3) as seen from the sensor (see the module doc)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.shape[0] == 0:
        return 0.0
    azimuth = np.arctan2(xyz[:, 1], xyz[:, 0])
    sin_elevation = xyz[:, 2] / np.maximum(np.linalg.norm(xyz, axis=1), 1e-12)
    column = np.floor((azimuth + np.pi) / _COLUMN).astype(np.int64)
    num = int(np.ceil(2 * np.pi / _COLUMN)) + 1
    low, high = np.full(num, np.inf), np.full(num, -np.inf)
    np.minimum.at(low, column, sin_elevation)
    np.maximum.at(high, column, sin_elevation)
    seen = np.isfinite(low)
    return float(_COLUMN * (high[seen] - low[seen]).sum())


def superpoint_budget(xyz: np.ndarray, cfg: ClusteringConfig) -> int:
    """The frame's superpoint budget for its eligible points ``xyz``: fixed, or density x covered solid angle."""
    if cfg.max_superpoints > 0:
        return int(cfg.max_superpoints)
    return max(1, int(round(cfg.superpoint_density * view_solid_angle(xyz))))
