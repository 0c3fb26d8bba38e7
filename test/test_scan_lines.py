"""Scan lines from the data: traced from elevation angles for 16-128 beam sensors with even, uneven or offset beams,
given rings used as they are, and no lines for a non-repetitive (Livox-like) pattern (synthetic sweeps)."""

from __future__ import annotations

import numpy as np
import pytest

from partlift_ros.superpoints import segment_superpoints
from partlift_ros.superpoints.rings import scan_lines
from partlift_ros.config import ClusteringConfig


def _sweep(elevations_deg: np.ndarray, step_deg: float, offsets: np.ndarray | None = None, tilt_deg: float = 0.0,
           fov_deg: float = 120.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A spinning LiDAR over flat ground (z = -1.7 m) with a wall 12 m ahead and a 1 m box 6 m ahead.

    Each laser fires every ``step_deg`` over ``fov_deg`` of azimuth (with its own random firing offset) from a
    height ``offsets`` (m) above the origin; the whole head is tilted by ``tilt_deg`` about the y axis (the
    HDL-64E in KITTI spreads one laser's elevations over ~1 deg this way). Returns (points (n, 3) in a random
    order, laser index (n,))."""
    rng = np.random.default_rng(seed)
    lasers = len(elevations_deg)
    offsets = np.zeros(lasers) if offsets is None else offsets
    columns = int(fov_deg / step_deg)
    azimuth = np.deg2rad(-fov_deg / 2 + step_deg * (np.arange(columns)[None, :] + rng.uniform(0, 1, (lasers, 1))))
    elevation = np.deg2rad(np.asarray(elevations_deg, dtype=float))[:, None] + 0 * azimuth
    origin_z = np.broadcast_to(np.asarray(offsets, dtype=float)[:, None], azimuth.shape)
    direction = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)], axis=-1).reshape(-1, 3)
    origin = np.c_[np.zeros((direction.shape[0], 2)), origin_z.reshape(-1)]
    tilt = np.deg2rad(tilt_deg)
    turn = np.array([[np.cos(tilt), 0, np.sin(tilt)], [0, 1, 0], [-np.sin(tilt), 0, np.cos(tilt)]])
    direction, origin = direction @ turn.T, origin @ turn.T
    hits = []
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(direction[:, 2] < 0, (-1.7 - origin[:, 2]) / direction[:, 2], np.inf)
        t_wall = np.where(direction[:, 0] > 0, (12.0 - origin[:, 0]) / direction[:, 0], np.inf)
        t_box = np.where(direction[:, 0] > 0, (6.0 - origin[:, 0]) / direction[:, 0], np.inf)
    box_hit = origin + t_box[:, None] * direction
    t_box = np.where((np.abs(box_hit[:, 1]) < 0.5) & (box_hit[:, 2] < -0.7), t_box, np.inf)
    hits = np.minimum(np.minimum(t_ground, t_wall), t_box)
    wall_top = (origin + t_wall[:, None] * direction)[:, 2] < 3.0
    hits = np.where((hits == t_wall) & ~wall_top, np.inf, hits)
    keep = np.isfinite(hits) & (hits < 60)
    hits = hits + rng.normal(0, 0.01, hits.shape)  # range noise, along the ray
    xyz = (origin + hits[:, None] * direction)[keep]
    laser = np.repeat(np.arange(lasers), columns)[keep]
    order = rng.permutation(xyz.shape[0])
    return xyz[order], laser[order]


def _hdl64_like() -> dict:
    upper = np.linspace(2.0, -8.33, 32)  # ~0.33 deg apart
    lower = np.linspace(-8.83, -24.8, 32)  # 0.5 deg apart
    offsets = np.r_[np.full(32, 0.2), np.full(32, -0.05)]  # the two blocks sit at different heights
    return dict(elevations_deg=np.r_[upper, lower], step_deg=0.17, offsets=offsets, tilt_deg=0.5)


SENSORS = {
    "16 beams, 2 deg": dict(elevations_deg=np.linspace(15, -15, 16), step_deg=0.2),
    "32 beams, uneven (HDL-32E-like)": dict(elevations_deg=np.linspace(10.67, -30.67, 32), step_deg=0.16),
    "64 beams in two blocks, offset and tilted (HDL-64E-like)": _hdl64_like(),
    "128 beams, dense centre (Pandar128-like)": dict(
        elevations_deg=np.r_[np.linspace(15, 2.2, 24), np.linspace(2.0, -6.0, 65)[:64], np.linspace(-6.5, -25, 40)],
        step_deg=0.2),
    "128 beams, azimuth step twice the spacing (Ouster 512 x 128-like)": dict(
        elevations_deg=np.linspace(22.5, -22.5, 128), step_deg=0.703),
}


@pytest.mark.parametrize("name", list(SENSORS))
def test_lines_traced_from_elevation_follow_each_laser(name):
    xyz, laser = _sweep(**SENSORS[name])
    lines = scan_lines(xyz)
    assert lines.kind == "traced"
    along, across = lines.along, lines.across
    # Nearly every point has a successor, on its own laser, one firing step on.
    assert along.shape[0] > 0.9 * xyz.shape[0]
    assert (laser[along[:, 0]] == laser[along[:, 1]]).mean() > 0.99
    step = np.deg2rad(SENSORS[name]["step_deg"])
    assert lines.azimuth_step == pytest.approx(step, rel=0.1)
    # Across the lines: a point and the next laser down (the laser numbers run from the top).
    assert across.shape[0] > 0.8 * xyz.shape[0]
    assert (laser[across[:, 1]] - laser[across[:, 0]] == 1).mean() > 0.95


def test_given_rings_are_used_and_the_same_pairs_come_out_of_any_point_order():
    xyz, laser = _sweep(**_hdl64_like())
    lines = scan_lines(xyz, laser)
    assert lines.kind == "ring"
    assert (laser[lines.along[:, 0]] == laser[lines.along[:, 1]]).all()
    assert (laser[lines.across[:, 1]] - laser[lines.across[:, 0]] == 1).mean() > 0.95
    perm = np.random.default_rng(1).permutation(xyz.shape[0])
    again = scan_lines(xyz[perm], laser[perm])
    as_set = lambda pairs: {tuple(p) for p in pairs.tolist()}  # noqa: E731
    assert as_set(perm[again.along]) == as_set(lines.along)


def _rosette(points: int = 24000, seed: int = 0) -> np.ndarray:
    """A Livox-like non-repetitive pattern: six rosette curves over a 70 x 70 deg field, hitting a wall 10 m away."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 1, points)) * 2 * np.pi * 40
    curve = np.repeat(np.arange(6), points // 6 + 1)[:points]
    phase = curve * np.pi / 3
    az = np.deg2rad(35) * 0.5 * (np.cos(7.1 * t + phase) + np.cos(3.3 * t))
    el = np.deg2rad(35) * 0.5 * (np.sin(7.1 * t + phase) - np.sin(3.3 * t))
    r = 10.0 / (np.cos(el) * np.cos(az))
    return np.c_[r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], curve


def test_a_non_repetitive_pattern_has_no_lines_and_its_line_ids_are_not_used_as_rings():
    xyz, curve = _rosette()
    for ring in (None, curve):  # Livox drivers publish a "line" field: the laser, not a sweep
        lines = scan_lines(xyz, ring)
        assert lines.kind == "none"
        assert (lines.next < 0).all()
        # Neighbours are the nearest points in angle: close in space on the wall.
        gap = np.linalg.norm(xyz[lines.across[:, 0]] - xyz[lines.across[:, 1]], axis=1)
        assert lines.across.shape[0] > xyz.shape[0] and np.median(gap) < 0.3


def test_superpoints_hold_in_any_point_order_on_a_traced_sensor():
    # The box, the wall and the ground of an HDL-64E-like sweep come out the same whatever the storage order.
    xyz, laser = _sweep(**_hdl64_like())
    points = np.c_[xyz, np.full(len(xyz), 0.3)].astype(np.float32)
    cfg = ClusteringConfig(max_superpoints=20, kerb_height=0.0)
    sp = segment_superpoints(points, cfg)
    perm = np.random.default_rng(2).permutation(len(points))
    shuffled = np.empty_like(sp)
    shuffled[perm] = segment_superpoints(points[perm], cfg)
    # Same partition (ids may be numbered differently).
    pairs = np.unique(np.c_[sp, shuffled], axis=0)
    assert len(pairs) == len(np.unique(sp)) == len(np.unique(shuffled))
