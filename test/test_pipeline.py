"""LabelPipeline on real frames with a randomly initialised CLIP: the maths around the model, not its answers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_clip_config
from partlift_ros.config import PipelineConfig, apply_overrides
from partlift_ros.types import IGNORE, InputError


@pytest.fixture(scope="module")
def labeler(tokenizer_dir):
    from partlift_ros.clip_labeling import ClipLabeler

    return ClipLabeler.from_config(tiny_clip_config(), tokenizer_dir, PipelineConfig().clip)


@pytest.fixture(scope="module")
def frames(seq08):
    from partlift_ros.io.kitti import KittiSequenceReader

    reader = KittiSequenceReader(seq08)
    return [reader.read(i) for i in reader.frame_indices[:3]]


def make(labeler, **overrides):
    from partlift_ros.pipeline import LabelPipeline

    return LabelPipeline(apply_overrides(PipelineConfig(), overrides), labeler=labeler)


def test_online_frame_gets_labels_only_on_visible_points_of_valid_superpoints(labeler, frames):
    pipe = make(labeler, **{"affinity.mode": "online"})
    (out,) = pipe.process(frames[0])
    n = frames[0].points.shape[0]
    assert out.label.shape == out.confidence.shape == out.instance.shape == out.visible.shape == (n,)
    labelled = out.label != IGNORE
    assert labelled.any()
    # A label needs a visible point of a superpoint that had a crop.
    assert out.visible[labelled].all()
    assert (out.instance[labelled] >= 0).all()
    assert out.instance_valid[out.instance[labelled]].all()
    # Every visible point of a valid superpoint is labelled, with its superpoint's argmax and max score.
    should = out.visible & (out.instance >= 0)
    should[should] = out.instance_valid[out.instance[should]]
    np.testing.assert_array_equal(labelled, should)
    best = out.instance_refined.argmax(axis=1)
    np.testing.assert_array_equal(out.label[labelled], best[out.instance[labelled]])
    np.testing.assert_allclose(out.confidence[labelled], out.instance_refined.max(axis=1)[out.instance[labelled]], rtol=1e-6)
    assert (out.confidence[~labelled] == 0).all()
    # Refined scores of valid superpoints are distributions over the classes.
    np.testing.assert_allclose(out.instance_refined[out.instance_valid].sum(axis=1), 1.0, rtol=1e-4)
    # Superpoints with fewer than 2 points never exist.
    counts = np.bincount(out.instance[out.instance >= 0])
    assert counts.min() >= 2
    assert set(out.timings_ms) >= {"projection", "superpixels", "superpoints", "visibility", "clip", "total"}


def test_affinity_off_keeps_raw_clip_scores(labeler, frames):
    pipe = make(labeler, **{"affinity.enabled": False})
    (out,) = pipe.process(frames[0])
    np.testing.assert_array_equal(out.instance_refined, out.instance_scores)


def test_online_affinity_mixes_scores_of_similar_instances(labeler, frames):
    pipe = make(labeler, **{"affinity.mode": "online", "affinity.scale": 5.0})
    (out,) = pipe.process(frames[0])
    valid = out.instance_valid
    assert not np.allclose(out.instance_refined[valid], out.instance_scores[valid])


def test_offline_block_queue_returns_every_frame_once_in_order(labeler, frames):
    pipe = make(labeler, **{"affinity.mode": "offline", "affinity.queue_size": 50})
    got = []
    for f in frames:
        got += pipe.process(f)
    got += pipe.flush()
    assert [lc.frame.index for lc in got] == [f.index for f in frames]
    assert pipe.flush() == []


def test_zero_shot_keeps_seen_labels_and_lets_clip_choose_only_unseen(labeler, frames):
    frame = frames[0]
    classes = PipelineConfig().classes
    unseen = ["motorcycle", "truck", "bicyclist", "traffic-sign"]
    seen = np.full(frame.points.shape[0], IGNORE, dtype=np.int32)
    seen[::3] = classes.index("road")
    frame = type(frame)(**{**frame.__dict__, "seen_labels": seen})
    pipe = make(labeler, unseen_classes=unseen, **{"clustering.method": "dbscan", "affinity.mode": "online"})
    (out,) = pipe.process(frame)
    keep = seen >= 0
    np.testing.assert_array_equal(out.label[keep], seen[keep])
    assert (out.instance[keep] == IGNORE).all()  # seen points are not clustered
    chosen = out.label[~keep & (out.label != IGNORE)]
    assert chosen.size > 0
    assert set(np.unique(chosen)) <= {classes.index(c) for c in unseen}


def test_changing_classes_changes_the_score_columns(labeler, frames):
    pipe = make(labeler, **{"affinity.mode": "online"})
    pipe.set_classes(["car", "road", "tree"])
    (out,) = pipe.process(frames[0])
    assert out.instance_scores.shape[1] == 3
    assert out.class_names == ["car", "road", "tree"]
    assert set(np.unique(out.label)) <= {IGNORE, 0, 1, 2}


def test_non_finite_points_keep_their_index_and_get_no_label(labeler, frames):
    f = frames[0]
    bad = np.zeros(f.points.shape[0], bool)
    bad[::7] = True  # spread over the scan, in and out of the image
    nan_points = f.points.copy()
    nan_points[bad, 1] = np.nan
    nan_points[bad[:, None].nonzero()[0][::2], 0] = np.inf
    (with_nan,) = make(labeler, **{"affinity.mode": "online"}).process(type(f)(**{**f.__dict__, "points": nan_points}))
    (without,) = make(labeler, **{"affinity.mode": "online"}).process(f.subset(~bad))
    assert with_nan.num_points == f.points.shape[0]
    assert (with_nan.label[bad] == IGNORE).all() and (with_nan.instance[bad] == IGNORE).all()
    assert not with_nan.visible[bad].any() and (with_nan.confidence[bad] == 0).all()
    # The finite points are labelled exactly as if the bad ones had never been there.
    np.testing.assert_array_equal(with_nan.label[~bad], without.label)
    np.testing.assert_array_equal(with_nan.instance[~bad], without.instance)
    assert (without.label != IGNORE).any()


def test_bad_frames_raise_specific_errors(labeler, frames):
    pipe = make(labeler, **{"affinity.mode": "online"})
    f = frames[0]
    all_nan = np.full_like(f.points, np.nan)
    with pytest.raises(InputError, match="NaN"):
        pipe.process(type(f)(**{**f.__dict__, "points": all_nan}))
    with pytest.raises(InputError, match="empty scan"):
        pipe.process(type(f)(**{**f.__dict__, "points": np.zeros((0, 4), np.float32)}))
    # The pipeline still works after rejecting bad frames.
    (out,) = pipe.process(f)
    assert (out.label != IGNORE).any()


@pytest.mark.parametrize("cameras", [(2,), (2, 3)])
def test_geometry_threads_change_no_output_and_report_the_scan_cues(seq08, cameras):
    """geometry_threads only moves work between threads: superpixels, superpoints and visibility are the same
    arrays with 1, 2 and 3 threads, with one camera (the ground fit on a helper) and two (the ground fit here)."""
    from partlift_ros.io.kitti import KittiSequenceReader
    from partlift_ros.pipeline import LabelPipeline, _StageClock

    frame = KittiSequenceReader(seq08, cameras=cameras).read(1)
    frame.points[::53, :3] = np.nan  # no-return rows take the finite-subset path
    results = {}
    for threads in (1, 2, 3):
        clock = _StageClock()
        results[threads] = LabelPipeline(PipelineConfig(geometry_threads=threads)).geometry(frame, clock)
        assert set(clock.times) == {"projection", "superpixels", "scan cues", "superpoints", "visibility"}
    one = results[1]
    assert one.num_instances > 100 and one.visible.any()
    for threads in (2, 3):
        other = results[threads]
        np.testing.assert_array_equal(other.instance, one.instance)
        np.testing.assert_array_equal(other.visible, one.visible)
        for a, b in zip(other.superpixels + other.visible_per_camera, one.superpixels + one.visible_per_camera):
            np.testing.assert_array_equal(a, b)


def test_geometry_threads_is_checked_and_kept_out_of_the_run_fingerprint():
    from partlift_ros.config import ConfigError
    from partlift_ros.run_fingerprint import NOT_LABEL_KEYS

    with pytest.raises(ConfigError, match="geometry_threads: expected >= 1"):
        apply_overrides(PipelineConfig(), {"geometry_threads": 0}).validate()
    assert "geometry_threads" in NOT_LABEL_KEYS  # a resume with another thread count gets the same labels


def test_an_error_on_a_helper_thread_reaches_the_caller(frames):
    """A bad image fails on the helper that segments it; geometry raises that InputError, not a thread's trace."""
    import dataclasses

    from partlift_ros.pipeline import LabelPipeline

    camera = dataclasses.replace(frames[0].cameras[0], image=frames[0].cameras[0].image[:1])  # one row: too small
    frame = dataclasses.replace(frames[0], cameras=[camera])
    for threads in (1, 2):
        with pytest.raises(InputError, match="too small"):
            LabelPipeline(PipelineConfig(geometry_threads=threads)).geometry(frame)
