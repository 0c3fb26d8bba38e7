"""Nearest-timestamp pairing: known answers from stamps alone (the rules in pairing.py's docstring)."""

import numpy as np
import pytest

from partlift_ros.pairing import StampBuffer, nearest_within, pair_by_stamp
from partlift_ros.types import InputError


def test_each_cloud_gets_the_nearest_image_within_slop():
    clouds = [0.00, 0.10, 0.20, 0.30]
    images = [0.31, 0.02, 0.13, 0.50]  # unsorted on purpose: indices refer to this order
    assert pair_by_stamp(clouds, images, slop=0.05) == [(0, 1), (1, 2), (3, 0)]  # 0.20 has nothing within 0.05


def test_clouds_outside_slop_are_dropped_and_boundary_is_inclusive():
    assert pair_by_stamp([1.0, 2.0], [1.25, 2.5], slop=0.25) == [(0, 0)]
    assert pair_by_stamp([1.0], [1.3], slop=0.25) == []


def test_tie_goes_to_the_earlier_image():
    assert nearest_within(1.0, [1.1, 0.9], slop=0.2) == 1
    assert pair_by_stamp([1.0], [0.9, 1.1], slop=0.2) == [(0, 0)]


def test_duplicate_image_stamps_pick_the_first_index():
    # duplicates on the left and on the right of the query
    assert nearest_within(1.02, [1.0, 1.0, 1.0], slop=0.1) == 0
    assert nearest_within(0.98, [2.0, 1.0, 1.0], slop=0.1) == 1


def test_exact_match_and_slow_camera_serves_several_clouds():
    assert nearest_within(5.0, [4.0, 5.0, 6.0], slop=0.0) == 1
    pairs = pair_by_stamp([0.0, 0.1, 0.2, 0.3], [0.05, 0.25], slop=0.06)
    assert pairs == [(0, 0), (1, 0), (2, 1), (3, 1)]


def test_empty_inputs_and_bad_values():
    assert pair_by_stamp([], [1.0], 0.1) == []
    assert pair_by_stamp([1.0], [], 0.1) == []
    assert nearest_within(1.0, np.array([]), 0.1) is None
    with pytest.raises(InputError, match="slop"):
        pair_by_stamp([1.0], [1.0], -0.1)
    with pytest.raises(InputError, match="NaN"):
        pair_by_stamp([np.nan], [1.0], 0.1)


def test_matches_brute_force_on_random_stamps():
    rng = np.random.default_rng(0)
    clouds = np.round(rng.uniform(0, 10, 200), 2)
    images = np.round(rng.uniform(0, 10, 150), 2)  # rounding makes ties and duplicates happen
    got = dict(pair_by_stamp(clouds, images, slop=0.03))
    for c, t in enumerate(clouds):
        d = np.abs(images - t)
        if d.min() > 0.03:
            assert c not in got
            continue
        best = np.flatnonzero(d == d.min())
        # earlier stamp first, then lowest index
        expected = min(best, key=lambda j: (images[j], j))
        assert got[c] == expected


def test_stamp_buffer_take_consume_and_bound():
    buf = StampBuffer(maxlen=3)
    for s in (1.0, 2.0, 3.0, 4.0):
        buf.push(s, f"img{s}")
    assert len(buf) == 3  # 1.0 was pushed out
    assert buf.take_nearest(1.0, slop=0.5) is None
    assert buf.take_nearest(2.1, slop=0.2, consume=False) == (2.0, "img2.0")
    assert buf.take_nearest(2.1, slop=0.2) == (2.0, "img2.0")
    assert buf.take_nearest(2.1, slop=0.2) is None  # consumed
    assert len(buf) == 2


def test_stamp_buffer_drop_older_than():
    buf = StampBuffer(maxlen=10)
    for s in (3.0, 1.0, 2.0, 5.0):  # out-of-order arrival
        buf.push(s, s)
    assert buf.drop_older_than(2.5) == 2
    assert sorted(buf.stamps.tolist()) == [3.0, 5.0]
    with pytest.raises(InputError):
        buf.push(float("inf"), 0)
    with pytest.raises(InputError):
        StampBuffer(0)
