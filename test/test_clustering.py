"""Superpoint merge: the per-round cost cap, the cached pair costs and the range limit (synthetic scenes)."""

from __future__ import annotations

import numpy as np

from partlift_ros.superpoints import segment_superpoints
from partlift_ros.superpoints.ground import kerb_step, local_road_height
from partlift_ros.superpoints.merge import merge_pieces
from partlift_ros.config import ClusteringConfig
from partlift_ros.types import IGNORE


def _greedy_reference(feats: np.ndarray, target: int, size_exponent: float) -> np.ndarray:
    """Plain agglomeration of single-point pieces: always join the globally cheapest pair."""
    groups = [[i] for i in range(len(feats))]
    while len(groups) > target:
        best = None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                na, nb = len(groups[i]), len(groups[j])
                d = ((feats[groups[i]].mean(0) - feats[groups[j]].mean(0)) ** 2).sum()
                cost = d * (na * nb / (na + nb)) ** size_exponent
                if best is None or cost < best[0]:
                    best = (cost, i, j)
        _, i, j = best
        groups[i] += groups.pop(j)
    out = np.empty(len(feats), dtype=int)
    for g, members in enumerate(groups):
        out[members] = g
    return out


def _same_partition(x: np.ndarray, y: np.ndarray) -> bool:
    return (len(np.unique(x)) == len(np.unique(y)) == len(np.unique(np.c_[x, y], axis=0)))


def test_round_ratio_keeps_the_global_cost_order():
    # A, B, C close together on a line; D and E a dear but mutual pair further out. Target 3 from 5:
    # one batched round joins A+B and D+E (both mutual picks) and leaves C alone; with the cap the
    # second round sees the grown piece AB, and C joining it is far cheaper than D joining E.
    feats = np.array([[0.0, 0, 0], [0.1, 0, 0], [0.25, 0, 0], [5.0, 0, 0], [7.0, 0, 0]])
    batched = merge_pieces(np.arange(5), feats, target=3, size_exponent=0.5, k=4)
    assert batched[0] == batched[1] != batched[2] and batched[3] == batched[4]
    ordered = merge_pieces(np.arange(5), feats, target=3, size_exponent=0.5, k=4, round_ratio=3.0)
    assert ordered[0] == ordered[1] == ordered[2] and ordered[3] != ordered[4]


def test_exact_rounds_match_plain_greedy_agglomeration():
    # round_ratio=1 makes one merge per round (barring exact ties), always the globally cheapest pair;
    # with every pair a candidate, the cached costs must give the same partition as recomputing all.
    rng = np.random.default_rng(5)
    for _ in range(5):
        feats = rng.normal(size=(14, 3))
        merged = merge_pieces(np.arange(14), feats, target=4, size_exponent=0.5, k=13, round_ratio=1.0)
        assert _same_partition(merged, _greedy_reference(feats, 4, 0.5))


def test_max_range_leaves_far_points_without_superpoint():
    rng = np.random.default_rng(0)
    near = np.c_[rng.uniform(5, 10, 500), rng.uniform(-2, 2, 500), rng.uniform(-1, 1, 500)]
    far = np.c_[rng.uniform(60, 70, 200), rng.uniform(-2, 2, 200), rng.uniform(-1, 1, 200)]
    points = np.c_[np.vstack([near, far]), np.zeros(700)].astype(np.float32)
    cfg = ClusteringConfig(max_superpoints=10, max_range=50.0, kerb_height=0.0)
    sp = segment_superpoints(points, cfg)
    assert (sp[500:] == IGNORE).all() and (sp[:500] >= 0).all()
    unlimited = segment_superpoints(points, ClusteringConfig(max_superpoints=10, kerb_height=0.0))
    assert (unlimited[500:] >= 0).all()


def test_local_road_height_follows_a_rolling_road_and_keeps_the_kerb():
    # A road rolling +-5 cm over 40 m with a sidewalk 12 cm above it on one side: one plane cannot follow
    # the road, so parts of the road look raised by the 7 cm kerb test; the local surface keeps the road
    # low and the sidewalk raised everywhere.
    rng = np.random.default_rng(3)
    x, y = rng.uniform(5, 45, 20000), rng.uniform(-4, 7, 20000)
    sidewalk = y > 4
    z = 0.05 * np.sin(x / 6.0) + 0.12 * sidewalk + rng.normal(0, 0.005, x.size)
    xyz, ground = np.c_[x, y, z], np.ones(x.size, dtype=bool)
    local = local_road_height(xyz, ground, band=0.035, cell=2.0)
    assert np.mean(local[~sidewalk] > 0.07) < 0.01 and np.mean(local[sidewalk] > 0.07) > 0.97
    assert np.median(np.abs(local[~sidewalk])) < 0.01
    plane = local_road_height(xyz, ground, band=0.035, cell=0.0)
    assert np.mean(np.abs(plane[~sidewalk]) > 0.07) > 0.03


def test_kerb_step_weighs_height_steps_between_ground_neighbours_only():
    height = np.array([0.0, 0.01, 0.06, 0.03, 0.5])
    ground = np.array([True, True, True, True, False])
    pairs = np.array([[0, 1], [0, 2], [0, 3], [0, 4]])
    weight = kerb_step(height, ground, pairs, full_step=0.05)
    # 1 cm is noise (below a quarter step), 6 cm a full kerb, 3 cm in between, off the ground nothing.
    assert weight[0] == 0.0 and weight[1] == 1.0 and 0.0 < weight[2] < 1.0 and weight[3] == 0.0
    assert np.isclose(weight[2], (0.03 - 0.0125) / 0.0375)
