"""A bad message never sinks a bag: real-frame bags (kitti2bag) with one message broken, read and labelled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from job_fixtures import invoke, reserialize, rewrite_bag, text
from partlift_ros.io.kitti2bag import CAMERA_INFO_TOPIC, IMAGE_TOPIC, POINTS_TOPIC, kitti_to_bag
from partlift_ros.io.rosbag_reader import RosbagReader
from partlift_ros.types import InputError


@pytest.fixture(scope="module")
def good_bag(tmp_path_factory, seq08):
    path = tmp_path_factory.mktemp("bag") / "seq08.mcap"
    kitti_to_bag(seq08, path, frames=slice(0, 3))
    return path


def broken(good, path, topic, position, how):
    """``good`` with message ``position`` of ``topic`` replaced by ``how(cdr)``."""
    return rewrite_bag(good, path, lambda t, i, raw: [how(raw)] if (t, i) == (topic, position) else [raw])


def truncated(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]  # the header still reads, the body does not


def test_a_corrupt_image_fails_its_frame_only_and_unwanted_frames_are_not_decoded(good_bag, tmp_path):
    reader = RosbagReader(broken(good_bag, tmp_path / "b.mcap", IMAGE_TOPIC, 1, truncated))
    assert reader.frame_indices == [0, 1, 2]
    got = dict(reader.frames())
    assert not isinstance(got[0], InputError) and not isinstance(got[2], InputError)
    message = str(got[1])
    assert message.startswith("frame 1 (stamp 13173408") and IMAGE_TOPIC in message and "cannot decode" in message
    assert [i for i, f in reader.frames([0, 2])] == [0, 2]  # frame 1 is not read: no error comes back
    good = {i: f for i, f in RosbagReader(good_bag).frames()}
    np.testing.assert_array_equal(got[2].points, good[2].points)


@pytest.mark.parametrize("what", ["image size", "cloud layout", "cloud header"])
def test_each_kind_of_bad_message_fails_only_its_frame(good_bag, tmp_path, what):
    if what == "image size":
        topic, how = IMAGE_TOPIC, lambda raw: reserialize(raw, "sensor_msgs/msg/Image", lambda m: dataclasses.replace(
            m, height=m.height - 1, data=m.data[: (m.height - 1) * m.step]))
        expect = "but /camera/camera_info says"
    elif what == "cloud layout":
        topic, how = POINTS_TOPIC, lambda raw: reserialize(raw, "sensor_msgs/msg/PointCloud2", lambda m: dataclasses.replace(
            m, data=m.data[:-5]))
        expect = "PointCloud2 data has"
    else:
        topic, how = POINTS_TOPIC, lambda raw: raw[:12] + b"\xff\xff\xff\x7f" + raw[16:]  # frame_id length past the end
        expect = "malformed frame_id"
    reader = RosbagReader(broken(good_bag, tmp_path / "b.mcap", topic, 1, how))
    got = dict(reader.frames())
    assert sorted(got) == [0, 1, 2]
    assert isinstance(got[1], InputError) and expect in str(got[1]) and topic in str(got[1])
    assert str(got[1]).startswith("frame 1")
    assert not isinstance(got[0], InputError) and not isinstance(got[2], InputError)


def test_a_broken_camera_info_or_tf_message_is_skipped_when_a_valid_one_exists(good_bag, tmp_path):
    zero_k = broken(good_bag, tmp_path / "k.mcap", CAMERA_INFO_TOPIC, 1, lambda raw: reserialize(
        raw, "sensor_msgs/msg/CameraInfo", lambda m: dataclasses.replace(m, k=np.zeros(9))))
    reader = RosbagReader(zero_k)
    assert len(reader.skipped_calibration) == 1 and "K is all zeros" in reader.skipped_calibration[0]
    assert all(not isinstance(f, InputError) for _, f in reader.frames())

    # a second, truncated /tf_static message beside the good one
    extra_tf = rewrite_bag(good_bag, tmp_path / "tf.mcap", lambda t, i, raw: [raw, truncated(raw)] if t == "/tf_static" else [raw])
    reader = RosbagReader(extra_tf)
    assert len(reader.skipped_calibration) == 1 and "/tf_static" in reader.skipped_calibration[0]
    assert len([f for _, f in reader.frames() if not isinstance(f, InputError)]) == 3

    only_bad = rewrite_bag(good_bag, tmp_path / "nok.mcap", lambda t, i, raw: [reserialize(
        raw, "sensor_msgs/msg/CameraInfo", lambda m: dataclasses.replace(m, k=np.zeros(9)))] if t == CAMERA_INFO_TOPIC else [raw])
    with pytest.raises(InputError, match="no valid CameraInfo message .3 broken, first: .*K is all zeros"):
        RosbagReader(only_bad)


def test_label_a_bag_with_a_corrupt_image_in_the_middle(good_bag, tmp_path, tiny_clip_dir):
    """Acceptance: every other frame labelled, exit 1, the frame named; a resume decodes no finished frame."""
    from partlift_ros.config import load_config
    from partlift_ros.label_job import detect_source, run_label_job
    from partlift_ros.pipeline import LabelPipeline

    bag = broken(good_bag, tmp_path / "b.mcap", IMAGE_TOPIC, 1, truncated)
    out = tmp_path / "run"
    common = ("--clip-model", tiny_clip_dir, "--affinity", "off")
    r = invoke("label", bag, "--out", out, *common)
    assert r.exit_code == 1, r.output
    assert "skipped frame 1 (stamp 13173408" in text(r) and IMAGE_TOPIC in text(r)
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["000000.label", "000002.label"]

    # The same command again: frames 0 and 2 are not decoded, frame 1 is tried again and still fails.
    cfg = load_config(None, {"clip.model": str(tiny_clip_dir), "affinity.enabled": False})
    progress = []
    summary = run_label_job(LabelPipeline(cfg), detect_source(bag), out, on_progress=lambda *a: progress.append(a))
    assert (summary.frames_read, summary.frames_done, summary.frames_skipped) == (0, 0, 2)
    assert [i for i, _ in summary.frames_failed] == [1] and progress == [(3, 3)]

    # A range without the bad frame never reads it: exit 0.
    r = invoke("label", bag, "--out", tmp_path / "run01", "--frames", "0:1", *common)
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "run01" / "labels").iterdir()] == ["000000.label"]
