"""The labeller node in-process with real rclpy: real SemanticKITTI frames in, labelled clouds, markers,
overlay, debug timings and /diagnostics out; 30+ malformed or hostile inputs counted, each followed by a
good frame that still gets labelled; the vocabulary changed at runtime through parameters.
"""

from __future__ import annotations

import array
import os
import threading
import time
from collections import defaultdict

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("sensor_msgs.msg")
pytest.importorskip("visualization_msgs.msg")
pytest.importorskip("diagnostic_msgs.msg")

from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from std_msgs.msg import Float64  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from conftest import tiny_clip_config  # noqa: E402
from ros_helpers import spinning_context, wait_until  # noqa: E402
from partlift_ros.calibration import parse_kitti_calib  # noqa: E402
from partlift_ros.config import PipelineConfig  # noqa: E402
from partlift_ros.io.pointcloud2 import LABELLED_FIELDS, decode_pointcloud2, unpack_rgb  # noqa: E402
from partlift_ros.ros import conversions as conv  # noqa: E402
from partlift_ros.ros.labeller_node import LabellerNode  # noqa: E402

LIDAR, CAMERA = "velodyne", "camera_color_left"
DOMAIN_ID = 1 + os.getpid() % 200  # one DDS domain per test process: parallel runs do not cross-talk
# Cheaper stages so ~40 frames fit the time budget; the node and its checks are unchanged.
FAST = {"visibility.num_superpixels": 300, "clustering.max_superpoints": 40, "clip.batch_size": 64}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def kitti(seq08):
    from partlift_ros.io.kitti import KittiSequenceReader

    calib = parse_kitti_calib(seq08 / "calib.txt")
    reader = KittiSequenceReader(seq08)
    frames = [reader.read(i) for i in range(2)]
    return calib, frames


@pytest.fixture(scope="module")
def labeler(tokenizer_dir):
    from partlift_ros.clip_labeling import ClipLabeler

    return ClipLabeler.from_config(tiny_clip_config(), tokenizer_dir, PipelineConfig().clip)


@pytest.fixture(scope="module")
def ros_context():
    with spinning_context(DOMAIN_ID) as ctx_and_executor:
        yield ctx_and_executor


class Rig:
    """One labeller node plus a probe node in its namespace that publishes inputs and records outputs."""

    def __init__(self, ctx, executor, labeler, calib, ns: str, fast: bool = True, extrinsic: bool = True,
                 **params) -> None:
        # compute_threads -1: the node leaves torch's and BLAS's thread pools as the rest of the test session has them.
        base = {"lidar_frame": LIDAR, "compute_threads": -1, **(FAST if fast else {})}
        if extrinsic:
            base["T_cam_lidar"] = calib.T_cam_lidar.reshape(-1).tolist()
        base.update(params)
        self.executor = executor
        self.calib = calib
        self.node = LabellerNode(
            labeler=labeler, namespace=ns, context=ctx,
            parameter_overrides=[Parameter(k, value=v) for k, v in base.items()],
        )
        self.probe = Node("probe", namespace=ns, context=ctx)
        p = self.probe
        # Reliable publishers: they match the node's best-effort inputs and its `reliable: true` ones alike.
        sensor = QoSProfile(depth=10)
        self.pub = {
            "points": p.create_publisher(PointCloud2, "points", sensor),
            "image": p.create_publisher(Image, "image", sensor),
            "camera_info": p.create_publisher(CameraInfo, "camera_info", sensor),
        }
        self.got: dict[str, list] = defaultdict(list)
        self._lock = threading.Lock()
        reliable = QoSProfile(depth=50)
        for topic, kind in [("labelled_points", PointCloud2), ("instance_markers", MarkerArray), ("overlay", Image),
                            ("debug/processing_time_ms", Float64), ("debug/pipeline_latency_ms", Float64)]:
            p.create_subscription(kind, topic, self._recorder(topic), reliable)
        p.create_subscription(DiagnosticArray, "/diagnostics", self._recorder("diagnostics"), reliable)
        executor.add_node(self.node)
        executor.add_node(p)
        wait_until(lambda: all(pub.get_subscription_count() >= 1 for pub in self.pub.values()), 10, "discovery")
        wait_until(lambda: self.node.count_subscribers(f"{ns}/labelled_points") >= 1, 10, "output discovery")

    def _recorder(self, topic):
        def record(msg):
            with self._lock:
                self.got[topic].append(msg)
        return record

    def outputs(self, topic: str) -> list:
        with self._lock:
            return list(self.got[topic])

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.executor.remove_node(self.probe)
        self.node.destroy_node()
        self.probe.destroy_node()

    # -------------------------------------------------------------- sending
    def send(self, what: str, msg) -> None:
        """Publish one input and wait until the node's callback has taken it."""
        before = self.node.stats()["received"].get(what, 0)
        self.pub[what].publish(msg)
        wait_until(lambda: self.node.stats()["received"].get(what, 0) > before, 10, f"{what} to arrive")

    def send_frame(self, points, image, stamp: float, K=None, cloud=None):
        """CameraInfo, image, cloud at one stamp (``cloud``: a PointCloud2 to send instead of one of
        ``points``); returns the labelled_points message for it."""
        labelled_before = self.node.stats()["labelled"]
        self.send("camera_info", camera_info(self.calib.K if K is None else K, image, stamp))
        self.send("image", image_msg(image, stamp))
        if cloud is not None:
            cloud.header = _header(cloud.header.frame_id or LIDAR, stamp)
        self.send("points", cloud if cloud is not None else cloud_msg(points, stamp))
        wait_until(lambda: self.node.stats()["labelled"] > labelled_before, 30, f"frame at {stamp} to be labelled")
        stamp_msg = conv.sec_to_stamp(stamp)
        key = (stamp_msg.sec, stamp_msg.nanosec)

        def published():
            return [m for m in self.outputs("labelled_points") if (m.header.stamp.sec, m.header.stamp.nanosec) == key]

        wait_until(lambda: published(), 10, "labelled_points")
        return published()[-1]

    def counted(self, reason: str) -> int:
        return self.node.rejected_counts().get(reason, 0)


@pytest.fixture
def rig_factory(ros_context, labeler, kitti):
    ctx, executor = ros_context
    made = []

    def make(ns: str, fast: bool = True, extrinsic: bool = True, own_model: bool = False, **params) -> Rig:
        """``own_model``: the node loads ``clip.model`` itself instead of sharing the test's labeller."""
        rig = Rig(ctx, executor, None if own_model else labeler, kitti[0], ns, fast, extrinsic, **params)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


# ---------------------------------------------------------------------------------------------- messages
def _header(frame_id: str, stamp: float):
    return conv.make_header(frame_id, conv.sec_to_stamp(stamp))


def cloud_msg(points: np.ndarray, stamp: float, frame_id: str = LIDAR) -> PointCloud2:
    arr = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    for i, name in enumerate(("x", "y", "z", "intensity")):
        arr[name] = points[:, i]
    return conv.pointcloud2_msg(arr, _header(frame_id, stamp))


def image_msg(rgb: np.ndarray, stamp: float, frame_id: str = CAMERA) -> Image:
    return conv.image_msg(rgb, _header(frame_id, stamp))


def camera_info(K, image, stamp: float, size=None, d=(0.0,) * 5, model="plumb_bob") -> CameraInfo:
    h, w = image.shape[:2]
    width, height = size or (w, h)
    msg = CameraInfo(header=_header(CAMERA, stamp), width=width, height=height, distortion_model=model)
    msg.k = np.asarray(K, dtype=np.float64).reshape(-1).tolist()
    msg.d = [float(v) for v in d]
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([np.asarray(K, dtype=np.float64), np.zeros((3, 1))]).reshape(-1).tolist()
    return msg


def _bytes(data: bytes) -> array.array:
    out = array.array("B")
    out.frombytes(data)
    return out


# ---------------------------------------------------------------------------------------------- tests
def test_real_frames_are_labelled_and_every_output_is_published(rig_factory, kitti):
    calib, frames = kitti
    rig = rig_factory("/main")
    # Dotted parameter overrides reach the pipeline's config.
    assert rig.node.pipeline.cfg.clustering.max_superpoints == FAST["clustering.max_superpoints"]
    t0 = time.time()
    for i, frame in enumerate(frames):
        out = rig.send_frame(frame.points, frame.camera.image, t0 + 0.1 * i)
    frame = frames[-1]
    n = frame.points.shape[0]

    # labelled_points: every input point, in the cloud's frame, with the labelled fields.
    assert out.header.frame_id == LIDAR
    assert (out.height, out.width) == (1, n)
    assert [(f.name, f.datatype) for f in out.fields] == LABELLED_FIELDS
    cloud = decode_pointcloud2(out)
    np.testing.assert_array_equal(cloud["x"], frame.points[:, 0])
    np.testing.assert_array_equal(cloud["intensity"], frame.points[:, 3])
    labels = cloud["label"]
    assert ((labels >= -1) & (labels < 19)).all()
    assert (labels >= 0).sum() > 100, "the camera sees thousands of points; some must be labelled"
    assert (unpack_rgb(cloud["rgb"][labels < 0]) == 128).all()
    assert (cloud["confidence"][labels < 0] == 0).all()
    assert (cloud["instance"][labels >= 0] >= 0).all()

    # Markers: DELETEALL first, then one text per labelled instance at its centroid.
    wait_until(lambda: len(rig.outputs("instance_markers")) >= len(frames), 10, "markers")
    markers = rig.outputs("instance_markers")[-1].markers
    assert markers[0].action == Marker.DELETEALL
    texts = markers[1:]
    assert texts and all(m.type == Marker.TEXT_VIEW_FACING and m.header.frame_id == LIDAR for m in texts)
    names = PipelineConfig().classes
    for m in texts:
        name, conf = m.text.rsplit(" ", 1)
        assert name in names and 0.0 < float(conf) <= 1.0
    ids = sorted(m.id for m in texts)
    assert ids == sorted(set(cloud["instance"][labels >= 0].tolist()))

    # Overlay: the camera image with the projected points drawn on it.
    wait_until(lambda: len(rig.outputs("overlay")) >= 1, 10, "overlay")
    wait_until(lambda: len(rig.outputs("overlay")) >= len(frames), 10, "one overlay per frame")
    ov = rig.outputs("overlay")[-1]
    assert (ov.encoding, ov.width, ov.height, ov.header.frame_id) == ("rgb8", 1226, 370, CAMERA)
    assert (ov.header.stamp.sec, ov.header.stamp.nanosec) == (out.header.stamp.sec, out.header.stamp.nanosec)
    ov_rgb = np.frombuffer(ov.data, np.uint8).reshape(370, 1226, 3)
    changed = (ov_rgb != frame.camera.image).any(axis=2)
    assert 0.01 < changed.mean() < 0.9, "projected points are drawn over part of the image"

    # Debug timings: positive processing time; latency = now - stamp, so small for a live stamp.
    wait_until(lambda: len(rig.outputs("debug/pipeline_latency_ms")) >= len(frames), 10, "debug topics")
    assert all(m.data > 0 for m in rig.outputs("debug/processing_time_ms"))
    assert all(0 < m.data < 120_000 for m in rig.outputs("debug/pipeline_latency_ms"))

    # Diagnostics: this node's four statuses, with the pairing counted.
    me = rig.node.get_fully_qualified_name()

    def latest():
        for arr in reversed(rig.outputs("diagnostics")):
            st = {s.name: s for s in arr.status if s.name.startswith(me + ":")}
            if st:
                return st
        return {}

    def values(status):
        return {kv.key: kv.value for kv in status.values}

    wait_until(lambda: f"{me}: processing" in latest()
               and int(values(latest()[f"{me}: processing"])["frames labelled"]) >= len(frames),
               10, "diagnostics with the labelled frames counted")
    st = latest()
    assert int(values(st[f"{me}: pairing"])["clouds paired"]) == len(frames)
    assert values(st[f"{me}: pairing"])["pairing success"] == "1.000"
    assert set(st) == {f"{me}: inputs", f"{me}: pairing", f"{me}: rejected inputs", f"{me}: processing"}
    inputs = values(st[f"{me}: inputs"])
    assert all(int(inputs[f"{k} received"]) >= len(frames) for k in ("points", "image", "camera_info"))
    processing = values(st[f"{me}: processing"])
    assert int(processing["frames labelled"]) >= len(frames)
    assert rig.node.stats()["dropped"] == 0


def test_newest_frame_wins_while_the_worker_is_busy(rig_factory, kitti):
    calib, frames = kitti
    rig = rig_factory("/burst")
    frame = frames[0]
    small = frame.points[::8]
    t0 = 2000.0
    rig.send("camera_info", camera_info(calib.K, frame.camera.image, t0))
    for i in range(6):  # six paired frames back to back: the worker cannot keep up
        rig.send("image", image_msg(frame.camera.image, t0 + 0.1 * i))
        rig.send("points", cloud_msg(small, t0 + 0.1 * i))
    wait_until(lambda: rig.node.stats()["labelled"] + rig.node.stats()["dropped"] == 6, 30, "all six accounted for")
    s = rig.node.stats()
    assert s["paired"] == 6 and s["dropped"] >= 1
    # The last frame is never the one dropped: newest wins.
    last = conv.sec_to_stamp(t0 + 0.5)
    wait_until(lambda: any(m.header.stamp.sec == last.sec and m.header.stamp.nanosec == last.nanosec
                           for m in rig.outputs("labelled_points")), 10, "the newest frame")


def _hostile_cases(K, image, points, max_points):
    """(name, expected reason, action(rig, stamp)) for 30+ malformed or hostile inputs."""

    def cloud(mutate, frame_id=LIDAR, pts=None):
        def act(rig, t):
            msg = cloud_msg(points if pts is None else pts, t, frame_id)
            mutate(msg)
            rig.send("points", msg)
        return act

    def img(mutate):
        def act(rig, t):
            msg = image_msg(image, t)
            mutate(msg)
            rig.send("image", msg)
        return act

    def info(**kw):
        def act(rig, t):
            msg = camera_info(K, image, t)
            for k, v in kw.items():
                setattr(msg, k, v)
            rig.send("camera_info", msg)
        return act

    def paired(info_msg=None, cloud_frame=LIDAR):
        """A good image + cloud pair, after ``info_msg`` (a CameraInfo the check must refuse)."""
        def act(rig, t):
            if info_msg is not None:
                rig.send("camera_info", info_msg(t))
            rig.send("image", image_msg(image, t))
            rig.send("points", cloud_msg(points, t, cloud_frame))
        return act

    def no_change(msg):
        return None

    def field(i, **kw):
        def mutate(msg):
            for k, v in kw.items():
                setattr(msg.fields[i], k, v)
        return mutate

    def drop_field(name):
        def mutate(msg):
            msg.fields = [f for f in msg.fields if f.name != name]
        return mutate

    def setter(**kw):
        def mutate(msg):
            for k, v in kw.items():
                setattr(msg, k, v)
        return mutate

    nan_points = np.full_like(points, np.nan)
    inf_points = np.full_like(points, np.inf)
    huge = np.zeros((max_points + 1, 4), np.float32)
    zero_k = np.zeros(9).tolist()
    nan_k = K.reshape(-1).copy()
    nan_k[0] = np.nan
    return [
        ("cloud without x", "cloud_missing_xyz", cloud(drop_field("x"))),
        ("cloud without z", "cloud_missing_xyz", cloud(drop_field("z"))),
        ("point_step smaller than the fields", "cloud_point_step", cloud(setter(point_step=12))),
        ("point_step 0", "cloud_point_step", cloud(setter(point_step=0))),
        ("intensity field past point_step", "cloud_point_step", cloud(field(3, offset=14))),
        ("data shorter than row_step*height", "cloud_data_size", cloud(lambda m: setattr(m, "data", m.data[:-5]))),
        ("data longer than row_step*height", "cloud_data_size",
         cloud(lambda m: setattr(m, "data", m.data + _bytes(bytes(16))))),
        ("row_step < width*point_step", "cloud_row_step", cloud(lambda m: setattr(m, "row_step", m.row_step - 16))),
        ("width larger than the data", "cloud_row_step", cloud(lambda m: setattr(m, "width", m.width + 10))),
        ("datatype 0", "cloud_unsupported_datatype", cloud(field(0, datatype=0))),
        ("datatype 11", "cloud_unsupported_datatype", cloud(field(2, datatype=11))),
        ("duplicate field name", "cloud_bad_field", cloud(field(1, name="x"))),
        ("x with count 2", "cloud_bad_field", cloud(field(0, count=2))),
        ("empty cloud", "cloud_empty", cloud(setter(width=0, row_step=0, data=array.array("B")))),
        ("all points NaN", "cloud_all_nonfinite", cloud(no_change, pts=nan_points)),
        ("all points inf", "cloud_all_nonfinite", cloud(no_change, pts=inf_points)),
        ("cloud over max_points", "cloud_too_large", cloud(no_change, pts=huge)),
        ("empty frame_id", "cloud_no_frame_id", cloud(no_change, frame_id="")),
        ("unknown lidar frame without extrinsics", "no_extrinsics", paired(cloud_frame="mystery_lidar")),
        ("cloud with no image within slop", "no_image_within_slop",
         lambda rig, t: (rig.send("image", image_msg(image, t)), rig.send("points", cloud_msg(points, t + 1.0)))),
        ("cloud stamp going backwards", "cloud_stamp_backwards",
         lambda rig, t: rig.send("points", cloud_msg(points, t - 50.0))),
        ("0x0 image", "image_empty", img(setter(width=0, height=0, step=0, data=array.array("B")))),
        ("32FC1 image", "image_unsupported_encoding", img(setter(encoding="32FC1"))),
        ("yuv422 image", "image_unsupported_encoding", img(setter(encoding="yuv422"))),
        ("image data truncated", "image_malformed", img(lambda m: setattr(m, "data", m.data[:-7]))),
        ("image step below width*3", "image_malformed", img(setter(step=100))),
        ("mono8 header on rgb8 bytes", "image_malformed", img(setter(encoding="mono8", step=image.shape[1]))),
        ("image stamp going backwards", "image_stamp_backwards",
         lambda rig, t: rig.send("image", image_msg(image, t - 30.0))),
        ("CameraInfo with a zero K", "camera_info_zero_k", info(k=zero_k)),
        ("CameraInfo with NaN in K", "camera_info_bad_k", info(k=nan_k.tolist())),
        ("CameraInfo with a fisheye model", "camera_info_distortion",
         info(distortion_model="equidistant", d=[0.1, 0.01, 0.0, 0.0])),
        ("CameraInfo with NaN in D", "camera_info_distortion", info(d=[np.nan, 0.0, 0.0, 0.0, 0.0])),
        ("CameraInfo size disagrees with the image", "camera_info_size_mismatch",
         paired(info_msg=lambda t: camera_info(K, image, t, size=(640, 480)))),
        ("stale CameraInfo", "camera_info_stale", paired(info_msg=lambda t: camera_info(K, image, t - 100.0))),
    ]


def test_hostile_inputs_are_counted_and_the_next_good_frame_is_labelled(rig_factory, kitti):
    calib, frames = kitti
    max_points = 130_000
    rig = rig_factory("/hostile", max_points=max_points, pair_timeout=0.3, log_throttle=60.0,
                      diagnostics_period=0.3)
    frame = frames[0]
    # A real scan and image at half resolution (K scaled to match), so 36 frames fit the time budget.
    good = frame.points[::4]
    image = np.ascontiguousarray(frame.camera.image[::2, ::2])
    K = np.diag([0.5, 0.5, 1.0]) @ calib.K
    t = 3000.0

    # Missing CameraInfo: a fresh node has none, so the first pair cannot be projected.
    rig.send("image", image_msg(image, t))
    rig.send("points", cloud_msg(good, t))
    wait_until(lambda: rig.counted("camera_info_missing") == 1, 10, "camera_info_missing")
    t += 1.0
    rig.send_frame(good, image, t, K)

    cases = _hostile_cases(K, image, good, max_points)
    assert len(cases) + 1 >= 30
    for name, reason, act in cases:
        t += 1.0
        before = rig.counted(reason)
        act(rig, t)
        wait_until(lambda: rig.counted(reason) > before, 10, f"{name!r} counted as {reason}")
        t += 1.0
        out = rig.send_frame(good, image, t, K)
        assert out.width == good.shape[0], name
        assert (decode_pointcloud2(out)["label"] >= 0).any(), name

    # NaN in some points is not refused: those points keep their index and come back unlabelled.
    t += 1.0
    partly = good.copy()
    partly[::3, 0] = np.nan
    out = decode_pointcloud2(rig.send_frame(partly, image, t, K))
    assert out.shape == (good.shape[0],)
    assert (out["label"][::3] == -1).all() and (out["confidence"][::3] == 0).all()
    assert (out["label"] >= 0).any()
    np.testing.assert_array_equal(out["y"], partly[:, 1])

    # Every reason shows up on /diagnostics with its count.
    expected = rig.node.rejected_counts()
    assert len(expected) >= 20
    me = rig.node.get_fully_qualified_name()

    def reported():
        for arr in reversed(rig.outputs("diagnostics")):
            for s in arr.status:
                if s.name == f"{me}: rejected inputs":
                    return {kv.key: kv.value for kv in s.values}
        return {}

    wait_until(lambda: all(reported().get(f"rejected {k}") == str(v) for k, v in rig.node.rejected_counts().items()),
               10, "diagnostics to report every rejection")
    assert rig.node.stats()["labelled"] == len(cases) + 2


def test_organised_cloud_keeps_its_layout_and_no_return_cells_stay_unlabelled(rig_factory, kitti):
    """The one non-finite policy: an organised cloud with no-return (NaN) cells comes back height x width, label i
    for input point i, the NaN cells unlabelled; its 0..255 uint8 intensity is read as 0..1."""
    calib, frames = kitti
    rig = rig_factory("/organised")
    frame = frames[0]
    rows = 8
    cols = frame.points.shape[0] // 4 // rows
    pts = frame.points[::4][: rows * cols]
    grid = np.zeros((rows, cols), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "u1")])
    for i, name in enumerate(("x", "y", "z")):
        grid[name] = pts[:, i].reshape(rows, cols)
    grid["intensity"] = np.round(pts[:, 3] * 255).reshape(rows, cols)
    no_return = np.zeros((rows, cols), bool)
    no_return[:, ::7] = True
    no_return[3] = True
    for name in ("x", "y", "z"):
        grid[name][no_return] = np.nan
    out = rig.send_frame(None, frame.camera.image, 5000.0,
                         cloud=conv.pointcloud2_msg(grid, _header(LIDAR, 5000.0)))
    assert (out.height, out.width) == (rows, cols)
    cloud = decode_pointcloud2(out).reshape(rows, cols)
    np.testing.assert_array_equal(cloud["x"][~no_return], grid["x"][~no_return])
    assert np.isnan(cloud["x"][no_return]).all()
    assert (cloud["label"][no_return] == -1).all() and (cloud["confidence"][no_return] == 0).all()
    assert (cloud["label"][~no_return] >= 0).sum() > 50
    np.testing.assert_allclose(cloud["intensity"], grid["intensity"] / 255.0, atol=1e-6)
    assert not out.is_dense


def _transform_stamped(parent: str, child: str, T: np.ndarray, stamp: float):
    from geometry_msgs.msg import TransformStamped

    from partlift_ros.calibration import matrix_to_quaternion

    t = TransformStamped()
    t.header = _header(parent, stamp)
    t.child_frame_id = child
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in T[:3, 3])
    q = matrix_to_quaternion(T[:3, :3])
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = q
    return t


def test_a_tf_static_tree_through_base_link_gives_the_parameters_extrinsic(rig_factory, kitti):
    """Without tf2_ros the node follows /tf_static itself: base_link -> velodyne and base_link -> camera give the
    same T_cam_lidar as the parameter, so the labels are identical."""
    from partlift_ros.calibration import invert_se3, se3

    calib, frames = kitti
    frame = frames[0]
    small = frame.points[::6]
    # KITTI's calibrated rotation is orthonormal to ~1e-7 only; TF carries quaternions, so use its nearest rotation.
    u, _, vt = np.linalg.svd(calib.T_cam_lidar[:3, :3])
    T_cam_lidar = se3(u @ vt, calib.T_cam_lidar[:3, 3])
    by_param = rig_factory("/tf_param", T_cam_lidar=T_cam_lidar.reshape(-1).tolist())
    by_tf = rig_factory("/tf_tree", extrinsic=False)
    # A mounting that is not the identity anywhere: the LiDAR on the roof, the camera further forward.
    c, s = np.cos(0.3), np.sin(0.3)
    T_base_lidar = se3(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]), np.array([0.2, -0.1, 1.7]))
    T_base_cam = T_base_lidar @ invert_se3(T_cam_lidar)
    transforms = [_transform_stamped("base_link", LIDAR, T_base_lidar, 0.0),
                  _transform_stamped("/base_link", CAMERA, T_base_cam, 0.0)]
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:  # no tf2_msgs here: hand the node the message its /tf_static subscription would get
        assert by_tf.node.extrinsics.mode == "parameters"
        by_tf.node.extrinsics.on_tf_message(type("TFMessage", (), {"transforms": transforms})(), static=True)
    else:
        from rclpy.qos import DurabilityPolicy

        assert by_tf.node.extrinsics.mode in ("topics", "tf2_ros")
        pub = by_tf.probe.create_publisher(TFMessage, "/tf_static",
                                           QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        pub.publish(TFMessage(transforms=transforms))
    wait_until(lambda: by_tf.node.extrinsics(LIDAR, CAMERA, by_tf.node.cameras[0], by_tf.node.settings) is not None,
               10, "the TF chain")
    T = by_tf.node.extrinsics(LIDAR, CAMERA, by_tf.node.cameras[0], by_tf.node.settings)
    np.testing.assert_allclose(T, T_cam_lidar, atol=1e-12)
    want = decode_pointcloud2(by_param.send_frame(small, frame.camera.image, 6000.0))["label"]
    got = decode_pointcloud2(by_tf.send_frame(small, frame.camera.image, 6000.0))["label"]
    np.testing.assert_array_equal(got, want)
    assert (got >= 0).sum() > 50
    # A transform that cannot be used is refused, and the chain already known stays.
    bad = _transform_stamped("base_link", "broken", np.eye(4), 0.0)
    bad.transform.rotation.w = 0.0
    by_tf.node.extrinsics.on_tf_message(type("TFMessage", (), {"transforms": [bad]})(), static=False)
    assert by_tf.counted("tf_invalid") == 1
    assert by_tf.node.extrinsics(LIDAR, CAMERA, by_tf.node.cameras[0], by_tf.node.settings) is not None


def test_qos_overrides_and_the_reliable_switch_reach_every_topic(rig_factory):
    from rclpy.qos import ReliabilityPolicy

    plain = rig_factory("/qos_default").node
    for sub in plain.subscriptions_by_input.values():
        assert sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert plain.worker.outputs.points.qos_profile.reliability == ReliabilityPolicy.RELIABLE

    switched = rig_factory("/qos_reliable", reliable=True).node
    assert all(sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
               for sub in switched.subscriptions_by_input.values())

    overridden = rig_factory("/qos_over", **{
        "qos_overrides./qos_over/points.subscription.reliability": "reliable",
        "qos_overrides./qos_over/points.subscription.depth": 3,
        "qos_overrides./qos_over/labelled_points.publisher.depth": 9,
        "qos_overrides./qos_over/overlay.publisher.reliability": "best_effort",
    }).node
    points = overridden.subscriptions_by_input["points"].qos_profile
    assert (points.reliability, points.depth) == (ReliabilityPolicy.RELIABLE, 3)
    assert overridden.subscriptions_by_input["image"].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert overridden.worker.outputs.points.qos_profile.depth == 9
    assert overridden.worker.outputs.overlays[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    # The overrides are read at start: a running node refuses to change them, as it refuses `reliable`.
    for bad in (Parameter("qos_overrides./qos_over/points.subscription.depth", value=4),
                Parameter("reliable", value=False)):
        (res,) = overridden.set_parameters([bad])
        assert not res.successful


def test_the_clip_model_is_loaded_at_start_not_on_the_first_frame(rig_factory, kitti, tiny_clip_dir, tmp_path):
    """The node loads clip.model before it subscribes: once it is up, the model folder can even disappear and the
    first frame is still labelled (a node that loaded on the first frame would fail every frame)."""
    import shutil

    calib, frames = kitti
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, folder)
    rig = rig_factory("/own_model", own_model=True, **{"clip.model": str(folder), "clip.local_files_only": True})
    shutil.rmtree(folder)
    frame = frames[0]
    out = rig.send_frame(frame.points[::6], frame.camera.image, 7000.0)
    assert (decode_pointcloud2(out)["label"] >= 0).sum() > 50
    assert rig.node.rejected_counts() == {}


def test_vocabulary_and_templates_change_at_runtime(rig_factory, kitti, labeler):
    calib, frames = kitti
    rig = rig_factory("/params")
    node = rig.node
    frame = frames[0]
    small = frame.points[::6]

    # Refused: offline affinity, an unknown clustering method, a 3-value T_cam_lidar, an image type switch.
    for bad in [Parameter("affinity.mode", value="offline"), Parameter("clustering.method", value="kmeans"),
                Parameter("T_cam_lidar", value=[1.0, 2.0, 3.0]), Parameter("use_compressed", value=True),
                Parameter("geometry_threads", value=0)]:
        (res,) = node.set_parameters([bad])
        assert not res.successful and res.reason, bad.name

    new_classes = ["car", "road", "vegetation", "building"]
    (res,) = node.set_parameters([Parameter("classes", value=new_classes)])
    assert res.successful, res.reason
    wait_until(lambda: node.pipeline.class_names == new_classes, 10, "the pipeline to take the new classes")
    out = rig.send_frame(small, frame.camera.image, 4000.0)
    labels = decode_pointcloud2(out)["label"]
    assert labels.max() < len(new_classes) and (labels >= 0).any()
    wait_until(lambda: len(rig.outputs("instance_markers")) >= 1, 10, "markers")
    texts = [m.text.rsplit(" ", 1)[0] for m in rig.outputs("instance_markers")[-1].markers[1:]]
    assert texts and set(texts) <= set(new_classes)

    before = node.pipeline.text_embeddings()
    templates = ["a lidar scan of a {}.", "a street with a {}."]
    (res,) = node.set_parameters([Parameter("clip.templates", value=templates)])
    assert res.successful, res.reason
    wait_until(lambda: node.pipeline.cfg.clip.templates == templates, 10, "the pipeline to take the templates")
    after = node.pipeline.text_embeddings()
    assert after.shape == before.shape and not np.allclose(after, before)
    np.testing.assert_allclose(after, labeler.text_embeddings(new_classes).numpy(), rtol=1e-5, atol=1e-6)
    out = rig.send_frame(small, frame.camera.image, 4001.0)
    assert decode_pointcloud2(out)["label"].max() < len(new_classes)


def test_every_core_key_is_a_parameter_with_the_core_default(rig_factory, kitti):
    from partlift_ros.config import flatten

    node = rig_factory("/declared", fast=False).node
    for key, default in flatten(PipelineConfig()).items():
        assert node.has_parameter(key), key
        value = node.get_parameter(key).value
        expected = "online" if key == "affinity.mode" else default
        if isinstance(expected, list):
            assert list(value) == expected, key
        else:
            assert value == expected, key
    assert node.pipeline.cfg.affinity.mode == "online"
    assert flatten(node.pipeline.cfg) == {**flatten(PipelineConfig()), "affinity.mode": "online"}
    # Node-only settings: defaults, and the 16-value extrinsic given at start.
    assert node.get_parameter("slop").value == 0.05 and node.settings.max_points == 300_000
    np.testing.assert_allclose(node.settings.T_cam_lidar, kitti[0].T_cam_lidar.reshape(-1))


# ---------------------------------------------------------------------------------------------- launch / config / rviz
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _launch_calls(tree) -> dict[str, list]:
    """Callee name -> the ast.Call nodes of that name in the launch file."""
    import ast

    calls: dict[str, list] = defaultdict(list)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            calls[name].append(node)
    return calls


def _launch_tree(name: str):
    import ast

    tree = ast.parse((REPO / "launch" / name).read_text())
    calls = _launch_calls(tree)
    declared = {c.args[0].value: c for c in calls["DeclareLaunchArgument"]}
    defaults = {k: next((kw.value.value for kw in c.keywords if kw.arg == "default_value"
                         and isinstance(kw.value, ast.Constant)), None) for k, c in declared.items()}
    return tree, calls, declared, defaults


def test_launch_files_declare_their_arguments_and_never_evaluate_strings():
    import ast
    import re

    from partlift_ros.io.kitti2bag import CAMERA_INFO_TOPIC, IMAGE_TOPIC, POINTS_TOPIC
    from partlift_ros.ros.launching import DEFAULT_TOPICS
    from partlift_ros.ros.params import build_cameras

    # The topic defaults are the ones `partlift kitti2bag` writes.
    assert DEFAULT_TOPICS == {"points_topic": POINTS_TOPIC, "image_topic": IMAGE_TOPIC,
                              "camera_info_topic": CAMERA_INFO_TOPIC}
    assert (POINTS_TOPIC, IMAGE_TOPIC, CAMERA_INFO_TOPIC) == ("/velodyne_points", "/camera/image_raw",
                                                              "/camera/camera_info")
    for name, executable, expected in [
        ("labeller.launch.py", "labeller", {"params_file", "points_topic", "image_topic", "camera_info_topic",
                                            "reliable", "use_rviz", "fixed_frame", "bag", "use_sim_time"}),
        ("student.launch.py", "student", {"checkpoint", "points_topic", "device", "max_points", "tta_rotations",
                                          "reliable", "bag", "use_sim_time"}),
    ]:
        tree, calls, declared, defaults = _launch_tree(name)
        assert set(declared) == expected, name
        # No PythonExpression: a bag path with a quote in it cannot break the launch (it is one argv element).
        assert not calls["PythonExpression"], name
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert {"OpaqueFunction", "Shutdown", "bag_player"} <= imported, name
        assert defaults["reliable"] == defaults["use_sim_time"] == "auto", name
        # resolve_auto_arguments turns auto into true/false before the node reads them.
        assert "resolve_auto_arguments" in imported, name
        (node,) = [c for c in calls["Node"]]
        kwargs = {k.arg: k.value for k in node.keywords}
        assert kwargs["executable"].value == executable
        # The node's exit (exit 2 on refused parameters) ends the launch: nothing is left running.
        assert isinstance(kwargs["on_exit"], ast.Call) and kwargs["on_exit"].func.id == "Shutdown", name
        remapped = {e.elts[0].value: e.elts[1].args[0].value for e in kwargs["remappings"].elts}
        assert remapped["points"] == "points_topic"
        if executable == "labeller":
            assert remapped == {"points": "points_topic", "image": "image_topic", "camera_info": "camera_info_topic"}
            # The relative input names remapped here are the ones the node subscribes to.
            camera = build_cameras({})[0]
            assert (camera.image_topic, camera.camera_info_topic) == ("image", "camera_info")
            node_src = (REPO / "partlift_ros" / "ros" / "labeller_node.py").read_text()
            assert re.search(r'create_subscription\(\s*[^,]+,\s*"points"', node_src)


def test_launch_helpers_read_booleans_as_launch_does():
    from partlift_ros.ros.launching import is_true

    assert [is_true(v) for v in ("true", "True", "1", "yes", "false", "0", "", "off")] == [True] * 4 + [False] * 4
    with pytest.raises(ValueError):
        is_true("maybe")


def test_auto_arguments_are_true_exactly_when_a_bag_is_played():
    from partlift_ros.ros.launching import auto_or_bool

    # auto follows the bag; an explicit value wins either way.
    assert [auto_or_bool("auto", bag) for bag in (True, False)] == [True, False]
    assert [auto_or_bool(" AUTO ", True), auto_or_bool("false", True), auto_or_bool("true", False)] == [True, False, True]
    with pytest.raises(ValueError):
        auto_or_bool("sometimes", True)


def test_params_yaml_holds_the_core_defaults_under_the_node_name():
    import yaml

    from partlift_ros.ros.params import build_config, build_settings, core_defaults, node_defaults

    data = yaml.safe_load((REPO / "config" / "labeller.yaml").read_text())
    params = data["labeller"]["ros__parameters"]

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    values = flat(params)
    core, node = core_defaults(), node_defaults()
    unknown = set(values) - set(core) - set(node)
    assert not unknown, f"keys the node does not declare: {unknown}"
    # ROS parameter files cannot type an empty list, so only those may be left out.
    missing = {k for k in set(core) | set(node) if k not in values and not (isinstance({**core, **node}[k], list)
                                                                             and not {**core, **node}[k])}
    assert not missing, f"labeller.yaml lacks {sorted(missing)}"
    for k, v in values.items():
        assert v == {**core, **node}[k], k
    build_config(values)
    build_settings(values)


def test_rviz_config_shows_the_node_outputs_in_the_lidar_frame():
    import yaml

    rviz = yaml.safe_load((REPO / "rviz" / "partlift.rviz").read_text())
    manager = rviz["Visualization Manager"]
    # The default of the launch files' fixed_frame argument, which overrides it (rviz2 -f).
    from partlift_ros.ros.launching import DEFAULT_FIXED_FRAME

    assert manager["Global Options"]["Fixed Frame"] == DEFAULT_FIXED_FRAME == LIDAR
    displays = {d["Class"]: d for d in manager["Displays"]}
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert cloud["Topic"]["Value"] == "/labelled_points" and cloud["Color Transformer"] == "RGB8"
    assert displays["rviz_default_plugins/MarkerArray"]["Topic"]["Value"] == "/instance_markers"
    assert displays["rviz_default_plugins/MarkerArray"]["Namespaces"] == {"partlift_instances": True}
    assert displays["rviz_default_plugins/Image"]["Topic"]["Value"] == "/overlay"
    # Those are the names the node publishes (relative, so /<name> in the root namespace).
    node_src = (REPO / "partlift_ros" / "ros" / "labeller_node.py").read_text()
    for topic in ("labelled_points", "instance_markers", "overlay"):
        assert f'"{topic}"' in node_src
    assert 'ns="partlift_instances"' in (REPO / "partlift_ros" / "ros" / "conversions.py").read_text()



def test_geometry_threads_stay_within_the_compute_threads():
    """The geometry's helper threads count as compute threads: the node never runs more than compute_threads."""
    from partlift_ros.helper_threads import geometry_threads_at_most

    cfg = PipelineConfig(geometry_threads=3)
    assert geometry_threads_at_most(cfg, 1).geometry_threads == 1
    assert geometry_threads_at_most(cfg, 2).geometry_threads == 2
    assert geometry_threads_at_most(cfg, 8).geometry_threads == 3
    assert geometry_threads_at_most(cfg, 0).geometry_threads == 3  # -1 = the libraries' defaults: no cap
    assert cfg.geometry_threads == 3  # the given config is not changed


def test_a_diagnostics_timer_firing_during_destroy_node_leaves_the_executor_spinning(ros_context, labeler, kitti):
    """The executor runs a timer callback it already took even while the node is destroyed; its publish then met a
    destroyed handle and the InvalidHandle ended the executor's spin (seen once in a full test run: every later
    node of the executor received nothing)."""
    ctx, executor = ros_context
    rig = Rig(ctx, executor, labeler, kitti[0], "/closing")
    rig.close()
    rig.node._publish_diagnostics()  # what that timer callback does, now after destroy_node: no exception
    # The shared executor still serves a new node.
    fresh = Rig(ctx, executor, labeler, kitti[0], "/after_closing")
    try:
        fresh.send("camera_info", camera_info(kitti[0].K, kitti[1][0].cameras[0].image, 1.0))
    finally:
        fresh.close()
