"""kitti2bag → label the bag (writing a labelled bag) → read it back: equals labelling the sequence directly."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from partlift_ros.cli import app
from partlift_ros.io.writers import read_run_labels

runner = CliRunner()


def run(*args) -> None:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output


def test_bag_path_gives_the_same_labels_as_the_sequence(tmp_path, seq08, tiny_clip_dir):
    from rosbags.highlevel import AnyReader

    from partlift_ros.io.pointcloud2 import decode_pointcloud2

    bag = tmp_path / "seq08.mcap"
    run("kitti2bag", seq08, bag, "--frames", "0:2")
    common = ("--clip-model", tiny_clip_dir, "--affinity", "online")
    run("label", bag, "--out", tmp_path / "from_bag", "--write-bag", tmp_path / "labelled.mcap", *common)
    run("label", seq08, "--out", tmp_path / "direct", "--frames", "0:2", *common)

    run("render", tmp_path / "from_bag", bag, "--frame", "1")  # renders read bags as well as sequences
    assert (tmp_path / "from_bag" / "render" / "000001.png").is_file()

    for index in (0, 1):
        bag_label, bag_sp = read_run_labels(tmp_path / "from_bag", index)
        direct_label, direct_sp = read_run_labels(tmp_path / "direct", index)
        np.testing.assert_array_equal(bag_label, direct_label)
        np.testing.assert_array_equal(bag_sp, direct_sp)

    with AnyReader([tmp_path / "labelled.mcap"]) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics["/labelled_points"] == "sensor_msgs/msg/PointCloud2"
        assert topics["/instance_markers"] == "visualization_msgs/msg/MarkerArray"
        assert topics["/overlay"] == "sensor_msgs/msg/Image"
        clouds = [
            reader.deserialize(raw, conn.msgtype)
            for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic == "/labelled_points"])
        ]
    assert len(clouds) == 2
    for index, msg in enumerate(clouds):
        cloud = decode_pointcloud2(msg)
        assert {"x", "y", "z", "intensity", "label", "confidence", "instance", "rgb"} <= set(cloud.dtype.names)
        direct_label, _ = read_run_labels(tmp_path / "direct", index)
        np.testing.assert_array_equal(cloud["label"], direct_label)
        assert msg.header.frame_id == "velodyne"
