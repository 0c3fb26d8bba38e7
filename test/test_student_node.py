"""The student node in-process with real rclpy: a real SemanticKITTI cloud in, labelled_points in the labeller's
layout out (labels equal to calling the student directly), debug timings, and bad clouds counted while the node
keeps labelling."""

from __future__ import annotations

import array
import os
import threading
from collections import defaultdict

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sensor_msgs.msg")

from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402

from ros_helpers import spinning_context, wait_until  # noqa: E402
from partlift_ros.io.kitti import read_scan  # noqa: E402
from partlift_ros.io.pointcloud2 import LABELLED_FIELDS, decode_pointcloud2  # noqa: E402
from partlift_ros.ros import conversions as conv  # noqa: E402
from partlift_ros.ros.student_node import StudentNode  # noqa: E402
from partlift_ros.student.checkpoint import build_model, save_checkpoint, student_state  # noqa: E402
from partlift_ros.student.infer import load_student, predict  # noqa: E402
from partlift_ros.student.train import TrainConfig  # noqa: E402
from partlift_ros.types import IGNORE  # noqa: E402

DOMAIN_ID = 1 + (os.getpid() + 101) % 200
CLASSES = ["car", "road", "building", "vegetation", "terrain"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained, seeded) student saved in the training checkpoint format."""
    torch.manual_seed(0)
    cfg = TrainConfig(width=8, voxel_size=0.4, backend="torch")
    args = {"in_channels": 4, "width": cfg.width, "voxel_size": cfg.voxel_size, "backend": cfg.backend}
    emb = torch.nn.functional.normalize(torch.randn(len(CLASSES), 16), dim=1).numpy()
    model = build_model(args, emb)
    with torch.no_grad():  # non-trivial BatchNorm statistics so predictions vary over the scan
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("student") / "student.pt"
    save_checkpoint(path, student_state(model, args, CLASSES, emb, cfg))
    return path


@pytest.fixture(scope="module")
def scan(seq08):
    return read_scan(seq08 / "velodyne" / "000000.bin")[::8].copy()  # a real scan, thinned for the time budget


@pytest.fixture(scope="module")
def ros_context():
    with spinning_context(DOMAIN_ID, threads=3) as ctx_and_executor:
        yield ctx_and_executor


@pytest.fixture(scope="module")
def rig(checkpoint, ros_context):
    ctx, executor = ros_context
    node = StudentNode(namespace="/s", context=ctx, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("max_points", value=20_000),
        Parameter("log_throttle", value=60.0),
    ])
    probe = Node("probe", namespace="/s", context=ctx)
    got = defaultdict(list)
    lock = threading.Lock()

    def recorder(topic):
        def record(msg):
            with lock:
                got[topic].append(msg)
        return record

    for topic, kind in [("labelled_points", PointCloud2), ("debug/processing_time_ms", Float64),
                        ("debug/pipeline_latency_ms", Float64)]:
        probe.create_subscription(kind, topic, recorder(topic), QoSProfile(depth=50))
    pub = probe.create_publisher(PointCloud2, "points", qos_profile_sensor_data)
    executor.add_node(node)
    executor.add_node(probe)
    wait_until(lambda: pub.get_subscription_count() >= 1, 10, "discovery")
    wait_until(lambda: node.count_subscribers("/s/labelled_points") >= 1, 10, "output discovery")

    def outputs(topic):
        with lock:
            return list(got[topic])

    yield node, pub, outputs
    for n in (node, probe):
        executor.remove_node(n)
        n.destroy_node()


def cloud_msg(points: np.ndarray, stamp: float, frame_id: str = "velodyne") -> PointCloud2:
    arr = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    for i, name in enumerate(("x", "y", "z", "intensity")):
        arr[name] = points[:, i]
    return conv.pointcloud2_msg(arr, conv.make_header(frame_id, conv.sec_to_stamp(stamp)))


def send_and_receive(node, pub, outputs, points, stamp: float) -> PointCloud2:
    before = node.stats()["labelled"]
    pub.publish(cloud_msg(points, stamp))
    wait_until(lambda: node.stats()["labelled"] > before, 30, f"cloud at {stamp} to be labelled")
    key = conv.sec_to_stamp(stamp)

    def mine():
        return [m for m in outputs("labelled_points") if (m.header.stamp.sec, m.header.stamp.nanosec) == (key.sec, key.nanosec)]

    wait_until(mine, 10, "labelled_points")
    return mine()[-1]


def test_real_cloud_comes_back_labelled_in_the_labellers_layout(rig, scan, checkpoint):
    node, pub, outputs = rig
    msg = send_and_receive(node, pub, outputs, scan, 100.0)
    assert [f.name for f in msg.fields] == [name for name, _ in LABELLED_FIELDS]
    assert msg.header.frame_id == "velodyne" and msg.width == len(scan)
    cloud = decode_pointcloud2(msg)
    np.testing.assert_array_equal(np.stack([cloud[c] for c in ("x", "y", "z", "intensity")], axis=1), scan)
    model, names = load_student(checkpoint)
    assert names == CLASSES
    labels, confidence = predict(model, scan)
    np.testing.assert_array_equal(cloud["label"], labels)
    np.testing.assert_allclose(cloud["confidence"], confidence, rtol=1e-5)
    assert len(np.unique(labels)) > 1 and (cloud["instance"] == IGNORE).all()
    assert np.all((confidence >= 1 / len(CLASSES) - 1e-6) & (confidence <= 1))
    wait_until(lambda: outputs("debug/processing_time_ms") and outputs("debug/pipeline_latency_ms"), 10, "debug topics")
    assert outputs("debug/processing_time_ms")[-1].data > 0


def test_bad_clouds_are_counted_dropped_and_the_node_keeps_labelling(rig, scan):
    node, pub, outputs = rig

    def mutated(mutate, points=scan):
        msg = cloud_msg(points, 1.0)
        mutate(msg)
        return msg

    cases = [
        ("cloud_missing_xyz", mutated(lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "y"]))),
        ("cloud_data_size", mutated(lambda m: setattr(m, "data", m.data[:-3]))),
        ("cloud_point_step", mutated(lambda m: setattr(m, "point_step", 0))),
        ("cloud_empty", mutated(lambda m: (setattr(m, "width", 0), setattr(m, "row_step", 0),
                                           setattr(m, "data", array.array("B"))))),
        ("cloud_all_nonfinite", cloud_msg(np.full((50, 4), np.nan, np.float32), 1.0)),
        ("cloud_too_large", cloud_msg(np.zeros((20_001, 4), np.float32), 1.0)),
    ]
    stamp = 200.0
    for reason, msg in cases:
        before = node.rejected_counts().get(reason, 0)
        pub.publish(msg)
        wait_until(lambda: node.rejected_counts().get(reason, 0) == before + 1, 10, f"{reason} to be counted")
        stamp += 1.0
        out = send_and_receive(node, pub, outputs, scan, stamp)
        assert out.width == len(scan), reason
    # Some NaN points: they keep their place and come back unlabelled; the rest is labelled.
    partly = scan.copy()
    partly[::5, 2] = np.nan
    out = decode_pointcloud2(send_and_receive(node, pub, outputs, partly, stamp + 1.0))
    assert (out["label"][::5] == IGNORE).all()
    keep = np.ones(len(scan), bool)
    keep[::5] = False
    assert (out["label"][keep] >= 0).all()
    statuses = {s.name.split(": ")[-1]: {kv.key: kv.value for kv in s.values} for s in node.diagnostic_statuses()}
    assert statuses["rejected inputs"]["rejected cloud_too_large"] == "1"


def test_organised_cloud_keeps_its_layout_and_follows_the_intensity_rule(rig, scan, checkpoint):
    """The one non-finite policy and intensity rule, as in the labeller: an organised cloud with no-return cells
    comes back height x width with those cells unlabelled, and a uint16 intensity is read as 0..1 (the scale the
    student was trained on), so the labels equal the student's on the normalised points."""
    node, pub, outputs = rig
    rows = 4
    cols = len(scan) // rows
    pts = scan[: rows * cols]
    grid = np.zeros((rows, cols), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("pad", "<f4"),
                                         ("intensity", "<u2"), ("ring", "<u2")])
    for i, name in enumerate(("x", "y", "z")):
        grid[name] = pts[:, i].reshape(rows, cols)
    grid["intensity"] = np.round(pts[:, 3] * 65535).reshape(rows, cols)
    no_return = np.zeros((rows, cols), bool)
    no_return[:, 1::9] = True
    grid["z"][no_return] = np.nan
    before = node.stats()["labelled"]
    pub.publish(conv.pointcloud2_msg(grid, conv.make_header("velodyne", conv.sec_to_stamp(300.0))))
    wait_until(lambda: node.stats()["labelled"] > before, 30, "the organised cloud to be labelled")
    wait_until(lambda: any(m.header.stamp.sec == 300 for m in outputs("labelled_points")), 10, "labelled_points")
    msg = next(m for m in outputs("labelled_points") if m.header.stamp.sec == 300)
    assert (msg.height, msg.width) == (rows, cols)
    out = decode_pointcloud2(msg).reshape(rows, cols)
    assert (out["label"][no_return] == IGNORE).all()
    model, _ = load_student(checkpoint)
    finite = pts[~no_return.reshape(-1)].copy()
    finite[:, 3] = grid["intensity"][~no_return] / 65535.0
    labels, _ = predict(model, finite)
    np.testing.assert_array_equal(out["label"][~no_return], labels)
    np.testing.assert_allclose(out["intensity"][~no_return], finite[:, 3], atol=1e-6)


def test_a_diagnostics_timer_firing_during_destroy_node_raises_nothing(checkpoint, ros_context):
    """As for the labeller: a timer callback the executor took before destroy_node must not end its spin."""
    ctx, _ = ros_context
    node = StudentNode(namespace="/closing", context=ctx, parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint))])
    node.destroy_node()
    node._publish_diagnostics()  # what that timer callback does after destroy_node: no InvalidHandle
