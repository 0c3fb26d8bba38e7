"""Affinity3D instance refinement: the maths against a hand computation, and the two queues."""

from __future__ import annotations

import numpy as np
import pytest

from partlift_ros.affinity import OfflineBlockQueue, OnlineWindow, refine, transition
from partlift_ros.types import InputError


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_frame(rng: np.random.Generator, m: int, d: int = 8, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    F = unit_rows(rng.normal(size=(m, d)))
    Y = rng.dirichlet(np.ones(c), size=m)
    return F, Y


def hand_refine(F: np.ndarray, Y: np.ndarray, s: float, beta: float) -> np.ndarray:
    """The paper's definition written out literally, element by element."""
    m = F.shape[0]
    W = np.zeros((m, m))
    for i in range(m):
        e = [np.exp(s * float(F[i] @ F[j])) for j in range(m)]
        W[i] = np.array(e) / sum(e)
    Wb = W ** beta
    T = np.diag(1.0 / Wb.sum(axis=1)) @ Wb
    return T @ Y


def test_refine_matches_hand_computation():
    F = unit_rows(np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))
    Y = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    got = refine(F, Y, scale=3.0, beta=2.0)
    np.testing.assert_allclose(got, hand_refine(F, Y, 3.0, 2.0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(refine(F, Y, 1.5, 3.0), hand_refine(F, Y, 1.5, 3.0), rtol=1e-10, atol=1e-12)
    # Row 0 by hand for s=3, beta=2: T_0j ∝ exp(6 f_0·f_j) with f_0·f = (1, 0.8, 0).
    w = np.exp(6.0 * np.array([1.0, 0.8, 0.0]))
    np.testing.assert_allclose(got[0], (w / w.sum()) @ Y, rtol=1e-10)


def test_transition_rows_sum_to_one_and_stay_finite_for_huge_scale():
    F, _ = random_frame(np.random.default_rng(1), 20)
    for s in (1.0, 20.0, 1e4):
        T = transition(F, F, s, 2.0)
        assert np.isfinite(T).all()
        np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-12)
        assert (T >= 0).all()


def test_identical_features_average_the_scores():
    F = np.tile(unit_rows(np.array([[1.0, 2.0, 3.0]])), (4, 1))
    Y = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    got = refine(F, Y, scale=20.0)
    np.testing.assert_allclose(got, np.tile(Y.mean(axis=0), (4, 1)), atol=1e-12)


def test_orthogonal_features_with_large_scale_keep_the_scores():
    F = np.eye(4)
    Y = np.random.default_rng(2).dirichlet(np.ones(3), size=4)
    np.testing.assert_allclose(refine(F, Y, scale=50.0), Y, atol=1e-12)
    # A small scale mixes them instead: the test above is not vacuous.
    assert np.abs(refine(F, Y, scale=0.1) - Y).max() > 1e-2


def test_refine_keeps_float32_and_handles_empty_input():
    F, Y = random_frame(np.random.default_rng(3), 5)
    assert refine(F.astype(np.float32), Y.astype(np.float32), 20.0).dtype == np.float32
    assert refine(np.zeros((0, 8)), np.zeros((0, 3)), 20.0).shape == (0, 3)
    with pytest.raises(InputError, match="expected features"):
        refine(F, Y[:3], 20.0)


def test_block_queue_holds_until_full_then_pops_the_block_in_push_order():
    rng = np.random.default_rng(4)
    frames = {k: random_frame(rng, m) for k, m in zip("abcd", (3, 0, 4, 2))}
    q = OfflineBlockQueue(scale=10.0, beta=2.0, queue_size=7, max_instances=100)
    assert q.push("a", *frames["a"]) == []
    assert q.push("b", *frames["b"]) == []  # empty frame behind a queued one waits to keep the order
    out = q.push("c", *frames["c"])  # 3 + 4 = 7 >= 7 -> pop
    assert [k for k, _ in out] == ["a", "b", "c"]
    block = refine(np.concatenate([frames["a"][0], frames["c"][0]]),
                   np.concatenate([frames["a"][1], frames["c"][1]]), 10.0, 2.0)
    np.testing.assert_allclose(out[0][1], block[:3])
    assert out[1][1].shape == (0, 3)
    np.testing.assert_allclose(out[2][1], block[3:])
    assert q.pending_instances == 0 and q.pending_frames == 0

    assert q.push("d", *frames["d"]) == []
    flushed = q.flush()
    assert [k for k, _ in flushed] == ["d"]
    np.testing.assert_allclose(flushed[0][1], refine(*frames["d"], 10.0, 2.0))
    assert q.flush() == []


def test_block_queue_passes_empty_frames_through_when_idle():
    q = OfflineBlockQueue(scale=10.0, queue_size=5)
    out = q.push(7, np.zeros((0, 0)), np.zeros((0, 3)))
    assert len(out) == 1 and out[0][0] == 7 and out[0][1].shape == (0, 3)
    assert q.pending_frames == 0


def test_block_queue_memory_is_bounded_by_max_instances():
    rng = np.random.default_rng(5)
    q = OfflineBlockQueue(scale=10.0, queue_size=1000, max_instances=10)
    peak = 0
    popped = []
    for k in range(30):
        F, Y = random_frame(rng, 4)
        before = q.pending_instances
        popped += q.push(k, F, Y)
        peak = max(peak, before + 4)
    assert peak <= 10 + 4
    popped += q.flush()
    assert [k for k, _ in popped] == list(range(30))


def test_block_queue_rejects_a_frame_with_other_dimensions():
    rng = np.random.default_rng(6)
    q = OfflineBlockQueue(scale=10.0, queue_size=50)
    q.push(0, *random_frame(rng, 3, c=3))
    with pytest.raises(InputError, match="earlier frames"):
        q.push(1, *random_frame(rng, 3, c=4))


def test_online_window_is_causal_and_uses_raw_context_scores():
    rng = np.random.default_rng(7)
    frames = [random_frame(rng, m) for m in (3, 2, 4)]
    w = OnlineWindow(scale=1.0, beta=2.0, window_frames=2)
    y0 = w.push(0, *frames[0])
    np.testing.assert_allclose(y0, refine(*frames[0], 1.0, 2.0))  # no context yet: within-frame refinement
    F_all = np.concatenate([f for f, _ in frames])
    Y_raw = np.concatenate([y for _, y in frames])
    reused = frames[1][1].copy()
    w.push(1, frames[1][0], reused)
    reused[:] = 0.0  # the caller reusing its buffer must not leak into the window
    y2 = w.push(2, *frames[2])
    T = transition(frames[2][0], F_all, 1.0, 2.0)
    np.testing.assert_allclose(y2, T @ Y_raw)  # raw (not refined) scores of the context frames
    # Causal: the newest frame's result ignores frames that come later (frame 0 was refined alone).
    assert not np.allclose(y0, transition(frames[0][0], F_all, 1.0, 2.0) @ Y_raw)


def test_online_window_is_bounded_and_resets():
    rng = np.random.default_rng(8)
    w = OnlineWindow(scale=10.0, window_frames=3)
    for k in range(10):
        w.push(k, *random_frame(rng, 2))
        assert len(w.context_keys) <= 3
    assert w.context_keys == [7, 8, 9]
    assert w.context_instances == 6
    w.reset()
    assert w.context_keys == []
    F, Y = random_frame(rng, 3)
    np.testing.assert_allclose(w.push(10, F, Y), refine(F, Y, 10.0))


def test_online_window_empty_frames_and_zero_window():
    rng = np.random.default_rng(9)
    w = OnlineWindow(scale=10.0, window_frames=0)
    F, Y = random_frame(rng, 3)
    w.push(0, *random_frame(rng, 4))
    np.testing.assert_allclose(w.push(1, F, Y), refine(F, Y, 10.0))  # K=0: no context at all
    w2 = OnlineWindow(scale=10.0, window_frames=2)
    w2.push(0, F, Y)
    assert w2.push(1, np.zeros((0, 0)), np.zeros((0, 3))).shape == (0, 3)
    assert w2.context_instances == 3
