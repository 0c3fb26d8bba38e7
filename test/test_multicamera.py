"""Surround camera rigs: several cameras per LiDAR scan, built from a real SemanticKITTI frame.

The two cameras are windows of the real cam2 image: ``left`` sees image columns [0, 800) and ``right``
columns [426, 1226) (a window of a pinhole image is exactly a pinhole camera whose principal point is
shifted), so they overlap in columns [426, 800) where both hold the same real pixels.

The rule under test (pipeline.py): a point is labelled when any camera sees it; it takes the label of
its superpoint, whose CLIP crop comes from the camera that sees most of the superpoint's visible
points (a tie goes to the camera listed first); the affinity stage refines all instances of all
cameras together. Then the node (two camera topic pairs) and a bag with two image topics.
"""

from __future__ import annotations

import copy
import os
import threading

import numpy as np
import pytest

from conftest import tiny_clip_config
from partlift_ros.config import PipelineConfig, apply_overrides
from partlift_ros.types import IGNORE, CameraView, Frame, InputError
from ros_helpers import spinning_context, wait_until

SPLIT, LEFT_END = 426, 800  # right camera starts at column SPLIT, left camera ends at LEFT_END
FAST = {"visibility.num_superpixels": 300, "clustering.max_superpoints": 60}


@pytest.fixture(scope="module")
def labeler(tokenizer_dir):
    from partlift_ros.clip_labeling import ClipLabeler

    return ClipLabeler.from_config(tiny_clip_config(), tokenizer_dir, PipelineConfig().clip)


def window(cam: CameraView, c0: int, c1: int, frame_id: str) -> CameraView:
    """The camera that sees columns [c0, c1) of ``cam``'s image: same pose, principal point moved by c0."""
    K = np.array(cam.K, dtype=np.float64)
    K[0, 2] -= c0
    return CameraView(np.ascontiguousarray(cam.image[:, c0:c1]), K, np.array(cam.T_cam_lidar), frame_id=frame_id)


@pytest.fixture(scope="module")
def rig(seq08):
    """(points, left, right) of seq08 frames 0 and 1; every second point keeps the tests fast."""
    from partlift_ros.io.kitti import KittiSequenceReader

    reader = KittiSequenceReader(seq08)
    out = []
    for i in range(2):
        f = reader.read(i)
        w = f.camera.image.shape[1]
        out.append((np.ascontiguousarray(f.points[::2]), window(f.camera, 0, LEFT_END, "cam_left"),
                     window(f.camera, SPLIT, w, "cam_right")))
    return out


def pipeline(labeler, **overrides):
    from partlift_ros.pipeline import LabelPipeline

    return LabelPipeline(apply_overrides(PipelineConfig(), {**FAST, **overrides}), labeler=labeler)


def label(pipe, points, cameras):
    (out,) = pipe.process(Frame(points, list(cameras), index=0, frame_id="velodyne"))
    return out


# ---------------------------------------------------------------------------------------------- pipeline
def test_two_cameras_cover_the_union_of_their_views(labeler, rig):
    points, left, right = rig[0]
    pipe = pipeline(labeler, **{"affinity.enabled": False})
    both, only_left, only_right = (label(pipe, points, c) for c in ([left, right], [left], [right]))

    # Visibility is decided per camera, so the rig sees exactly the union of what each camera sees.
    np.testing.assert_array_equal(both.visible, only_left.visible | only_right.visible)
    right_only = only_right.visible & ~only_left.visible
    assert right_only.sum() > 500 and (only_left.visible & ~only_right.visible).sum() > 500

    labelled = both.label != IGNORE
    assert labelled.sum() > max((only_left.label != IGNORE).sum(), (only_right.label != IGNORE).sum())
    # Points that only the right camera sees are labelled in the rig.
    assert labelled[right_only].sum() > 0.3 * right_only.sum()
    # The rule: labelled = visible in some camera and in a superpoint that had a crop; the label is the
    # superpoint's.
    should = both.visible & (both.instance >= 0)
    should[should] = both.instance_valid[both.instance[should]]
    np.testing.assert_array_equal(labelled, should)
    np.testing.assert_array_equal(both.label[labelled], both.instance_refined.argmax(axis=1)[both.instance[labelled]])


def test_overlap_gets_the_same_labels_whichever_camera_is_listed_first(labeler, rig):
    """Swapping the camera order changes only which camera wins a tie. A superpoint seen by more points
    in one camera keeps its crop from that camera; a superpoint seen equally by both lies in the overlap,
    where both cameras hold the same pixels, so its crop from either camera is the same image."""
    points, left, right = rig[0]
    # DBSCAN superpoints depend on geometry only (not on the cameras' order); the occlusion test is off
    # (huge threshold) because it uses each camera's own superpixels, which differ between the windows.
    over = {"affinity.enabled": False, "clustering.method": "dbscan", "visibility.depth_threshold": 1e9}
    pipe = pipeline(labeler, **over)
    lr, rl = label(pipe, points, [left, right]), label(pipe, points, [right, left])
    np.testing.assert_array_equal(lr.instance, rl.instance)
    np.testing.assert_array_equal(lr.visible, rl.visible)

    geo = pipe.geometry(Frame(points, [left, right], frame_id="velodyne"))
    m, inst = geo.num_instances, geo.instance
    seen = [np.bincount(inst[(inst >= 0) & v], minlength=m) for v in geo.visible_per_camera]
    tie = (seen[0] == seen[1]) & (seen[0] > 0)
    valid = lr.instance_valid
    np.testing.assert_array_equal(valid, rl.instance_valid)
    decided = valid & ~tie
    assert decided.sum() >= 10 and tie.sum() >= 10
    # Not a tie: the same camera wins in both orders, so the same box and the same scores.
    np.testing.assert_array_equal(lr.instance_boxes[decided], rl.instance_boxes[decided])
    np.testing.assert_array_equal(lr.instance_scores[decided], rl.instance_scores[decided])
    # A tie: the first camera listed gives the crop (left in lr, right in rl), and it is the same window
    # of the real image, shifted by SPLIT columns, unless the padded box was clipped at a window edge.
    shift = np.array([SPLIT, 0, SPLIT, 0])
    same_crop = tie & valid & (lr.instance_boxes - shift == rl.instance_boxes).all(axis=1)
    assert same_crop.sum() >= 0.8 * (tie & valid).sum()
    assert (lr.instance_boxes[tie & valid, 2] <= LEFT_END).all() and (rl.instance_boxes[tie & valid, 0] >= 0).all()
    np.testing.assert_allclose(lr.instance_scores[same_crop], rl.instance_scores[same_crop], rtol=0, atol=1e-6)

    # Hence every point seen by both cameras gets the same label in both orders (clipped ties aside).
    overlap = geo.visible_per_camera[0] & geo.visible_per_camera[1]
    assert overlap.sum() > 1000
    comparable = overlap & (inst >= 0)
    comparable[comparable] = (decided | same_crop)[inst[comparable]]
    assert comparable.sum() > 0.8 * (overlap & (lr.label != IGNORE)).sum()
    np.testing.assert_array_equal(lr.label[comparable], rl.label[comparable])
    assert (lr.label[comparable] != IGNORE).any()


def test_affinity_refines_the_instances_of_all_cameras_together(labeler, rig):
    from partlift_ros.affinity import OnlineWindow

    points, left, right = rig[0]
    pipe = pipeline(labeler, **{"affinity.mode": "online", "clustering.method": "dbscan"})
    out = label(pipe, points, [left, right])
    a = pipe.cfg.affinity
    valid = out.instance_valid
    F, Y = out.instance_features[valid], out.instance_scores[valid]
    # The refinement is one affinity over every valid instance of the frame, whichever camera cropped it...
    expected = OnlineWindow(a.scale, a.beta, a.window_frames).push(0, F, Y)
    np.testing.assert_allclose(out.instance_refined[valid], expected, rtol=1e-5, atol=1e-6)
    # ... and instances cropped from the right camera change the refinement of the left camera's ones.
    geo = pipe.geometry(Frame(points, [left, right], frame_id="velodyne"))
    inst = geo.instance
    seen = [np.bincount(inst[(inst >= 0) & v], minlength=geo.num_instances) for v in geo.visible_per_camera]
    from_left = (seen[0] >= seen[1])[valid]
    assert from_left.sum() >= 5 and (~from_left).sum() >= 5
    alone = OnlineWindow(a.scale, a.beta, a.window_frames).push(0, F[from_left], Y[from_left])
    assert not np.allclose(alone, expected[from_left], atol=1e-4)


# ---------------------------------------------------------------------------------------------- bags
def _write_rig_bag(path, rig, right_stamps=(None, 0.0), tf_right=None):
    """Clouds at 10.0 and 10.1 s; left images at the same stamps; right images at the cloud stamps
    plus ``right_stamps`` offsets (None = no right image for that cloud)."""
    from partlift_ros.calibration import invert_se3
    from partlift_ros.io.bag_writer import BagOutput, camera_info_msg, image_msg, pointcloud2_msg, tf_static_msg
    from partlift_ros.io.pointcloud2 import encode_pointcloud2

    xyzi = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    with BagOutput(path) as bag:
        ts = bag.ts
        for topic, msgtype in [("/velodyne_points", "sensor_msgs/msg/PointCloud2"),
                               ("/left/image_raw", "sensor_msgs/msg/Image"),
                               ("/left/camera_info", "sensor_msgs/msg/CameraInfo"),
                               ("/right/image_raw", "sensor_msgs/msg/Image"),
                               ("/right/camera_info", "sensor_msgs/msg/CameraInfo"),
                               ("/tf_static", "tf2_msgs/msg/TFMessage")]:
            bag.add_topic(topic, msgtype, latched=topic == "/tf_static")
        _, left, right = rig[0]
        T_right = right.T_cam_lidar if tf_right is None else tf_right
        bag.write("/tf_static", tf_static_msg(ts, [("velodyne", "cam_left", invert_se3(left.T_cam_lidar)),
                                                   ("velodyne", "cam_right", invert_se3(T_right))], 1.0), 1.0)
        for k, (points, left, right) in enumerate(rig):
            stamp = 10.0 + 0.1 * k
            cloud = np.ascontiguousarray(points[::8], dtype="<f4").view(xyzi).reshape(-1)
            bag.write("/velodyne_points", pointcloud2_msg(ts, encode_pointcloud2(cloud), stamp, "velodyne"), stamp)
            for name, cam, offset in (("left", left, 0.0), ("right", right, right_stamps[k])):
                if offset is None:
                    continue
                h, w = cam.image.shape[:2]
                bag.write(f"/{name}/image_raw", image_msg(ts, cam.image, stamp + offset, cam.frame_id), stamp + offset)
                bag.write(f"/{name}/camera_info", camera_info_msg(ts, cam.K, (w, h), stamp + offset, cam.frame_id),
                          stamp + offset)
    return path


def test_bag_with_two_image_topics_gives_frames_with_both_cameras(rig, tmp_path):
    from partlift_ros.calibration import se3
    from partlift_ros.io.rosbag_reader import RosbagReader

    T_right = se3(np.eye(3), [0.5, 0.0, 0.0]) @ rig[0][2].T_cam_lidar  # a right camera 0.5 m to the side
    path = _write_rig_bag(tmp_path / "rig.mcap", rig, tf_right=T_right)
    with pytest.raises(InputError, match="several sensor_msgs/msg/Image topics"):
        RosbagReader(path)
    reader = RosbagReader(path, image_topic=["/left/image_raw", "/right/image_raw"])
    # CameraInfo topics come from each image topic's namespace.
    assert reader.camera_info_topics == ["/left/camera_info", "/right/camera_info"]
    frames = list(reader)
    assert [f.index for f in frames] == [0, 1] and len(reader) == 2
    # Frame 0 has no right image: it keeps the camera it has. Frame 1 has both, in the order given.
    assert [c.frame_id for c in frames[0].cameras] == ["cam_left"]
    assert [c.frame_id for c in frames[1].cameras] == ["cam_left", "cam_right"]
    _, left, right = rig[1]
    got_left, got_right = frames[1].cameras
    np.testing.assert_array_equal(got_left.image, left.image)
    np.testing.assert_array_equal(got_right.image, right.image)
    np.testing.assert_allclose(got_left.K, left.K)
    np.testing.assert_allclose(got_right.K, right.K)
    np.testing.assert_allclose(got_left.T_cam_lidar, left.T_cam_lidar, atol=1e-6)
    np.testing.assert_allclose(got_right.T_cam_lidar, T_right, atol=1e-6)
    np.testing.assert_array_equal(frames[1].points, rig[1][0][::8])
    frames[1].validate()

    # Given extrinsics, one per camera (None = from /tf_static).
    T = se3(np.eye(3), [1.0, 2.0, 3.0])
    frames = list(RosbagReader(path, image_topic=["/right/image_raw", "/left/image_raw"], T_cam_lidar=[T, None]))
    assert [c.frame_id for c in frames[-1].cameras] == ["cam_right", "cam_left"]
    np.testing.assert_array_equal(frames[-1].cameras[0].T_cam_lidar, T)
    np.testing.assert_allclose(frames[-1].cameras[1].T_cam_lidar, left.T_cam_lidar, atol=1e-6)
    with pytest.raises(InputError, match="1 camera_info topics given for 2 image topics"):
        RosbagReader(path, image_topic=["/left/image_raw", "/right/image_raw"], camera_info_topic=["/left/camera_info"])
    with pytest.raises(InputError, match="one 4x4 matrix given for 2 cameras"):
        RosbagReader(path, image_topic=["/left/image_raw", "/right/image_raw"], T_cam_lidar=T)


def test_label_source_and_cli_take_several_image_topics(rig, tmp_path):
    import yaml

    from partlift_ros.cli.label import _topics
    from partlift_ros.label_job import SourceSpec, detect_source, iter_source

    assert _topics(["/left/image_raw,/right/image_raw"]) == _topics(["/left/image_raw", " /right/image_raw"])
    assert _topics(["/left/image_raw"]) == "/left/image_raw" and _topics(None) is None
    path = _write_rig_bag(tmp_path / "rig.mcap", rig, right_stamps=(0.01, 0.2))  # frame 1: right image too late
    spec = detect_source(path, image_topic=_topics(["/left/image_raw,/right/image_raw"]))
    # source.yaml keeps the list, and a later job (student training) reads the same spec back.
    assert SourceSpec(**yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec
    frames = [f for _, f in iter_source(spec, None, lambda i: False)]
    assert [len(f.cameras) for f in frames] == [2, 1]


# ---------------------------------------------------------------------------------------------- node
@pytest.fixture(scope="module")
def ros_context():
    pytest.importorskip("rclpy")
    for module in ("sensor_msgs.msg", "diagnostic_msgs.msg"):
        pytest.importorskip(module)
    with spinning_context(1 + (os.getpid() + 151) % 200) as ctx_and_executor:
        yield ctx_and_executor


def test_node_labels_with_two_camera_topic_pairs(ros_context, labeler, rig):
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from partlift_ros.io.pointcloud2 import decode_pointcloud2
    from partlift_ros.pipeline import LabelPipeline
    from partlift_ros.ros import conversions as conv
    from partlift_ros.ros.labeller_node import LabellerNode

    ctx, executor = ros_context
    ns = "/surround"
    _, left, right = rig[0]
    params = {**FAST, "cameras": ["left", "right"], "right.image_topic": "cams/right/image_rect",
              "left.T_cam_lidar": left.T_cam_lidar.reshape(-1).tolist(),
              "right.T_cam_lidar": right.T_cam_lidar.reshape(-1).tolist(),
              "lidar_frame": "velodyne", "pair_timeout": 0.3, "diagnostics_period": 0.2, "compute_threads": -1}
    node = LabellerNode(labeler=labeler, namespace=ns, context=ctx,
                        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    probe = Node("probe", namespace=ns, context=ctx)
    topics = {("left", "image"): "left/image", ("left", "info"): "left/camera_info",
              ("right", "image"): "cams/right/image_rect", ("right", "info"): "right/camera_info"}
    pubs = {k: probe.create_publisher(Image if k[1] == "image" else CameraInfo, t, qos_profile_sensor_data)
            for k, t in topics.items()}
    pubs["points"] = probe.create_publisher(PointCloud2, "points", qos_profile_sensor_data)
    got: dict[str, list] = {"labelled_points": [], "left/overlay": [], "right/overlay": [], "diagnostics": []}
    lock = threading.Lock()

    def recorder(key):
        def record(msg):
            with lock:
                got[key].append(msg)
        return record

    for key, kind in (("labelled_points", PointCloud2), ("left/overlay", Image), ("right/overlay", Image)):
        probe.create_subscription(kind, key, recorder(key), QoSProfile(depth=20))
    probe.create_subscription(DiagnosticArray, "/diagnostics", recorder("diagnostics"), QoSProfile(depth=50))
    executor.add_node(node)
    executor.add_node(probe)
    try:
        assert [(c.name, c.image_topic, c.camera_info_topic) for c in node.cameras] == [
            ("left", "left/image", "left/camera_info"), ("right", "cams/right/image_rect", "right/camera_info")]
        wait_until(lambda: all(p.get_subscription_count() >= 1 for p in pubs.values()), 10, "discovery")
        wait_until(lambda: node.count_subscribers(f"{ns}/labelled_points") >= 1, 10, "output discovery")

        def header(frame_id, stamp):
            return conv.make_header(frame_id, conv.sec_to_stamp(stamp))

        def send(points, cams, stamp):
            before = node.stats()["labelled"]
            for name, cam in cams.items():
                h, w = cam.image.shape[:2]
                info = CameraInfo(header=header(cam.frame_id, stamp), width=w, height=h, distortion_model="plumb_bob")
                info.k = cam.K.reshape(-1).tolist()
                info.d = [0.0] * 5
                pubs[(name, "info")].publish(info)
                wait_until(lambda: node.stats()["received"].get(f"{name}/camera_info", 0) > 0, 10, "camera_info")
                seen = node.stats()["received"].get(f"{name}/image", 0)
                pubs[(name, "image")].publish(conv.image_msg(cam.image, header(cam.frame_id, stamp)))
                wait_until(lambda: node.stats()["received"].get(f"{name}/image", 0) > seen, 10, f"{name} image")
            arr = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
            for i, f in enumerate(("x", "y", "z", "intensity")):
                arr[f] = points[:, i]
            pubs["points"].publish(conv.pointcloud2_msg(arr, header("velodyne", stamp)))
            wait_until(lambda: node.stats()["labelled"] > before, 30, f"frame at {stamp} to be labelled")
            key = conv.sec_to_stamp(stamp)
            wait_until(lambda: any(m.header.stamp == key for m in got["labelled_points"]), 10, "labelled_points")
            return next(m for m in got["labelled_points"] if m.header.stamp == key)

        # The node's result equals the pipeline's on the same frames: both cameras, in the listed order,
        # then a frame whose right image never comes (labelled with the left camera after pair_timeout).
        reference = LabelPipeline(copy.deepcopy(node.pipeline.cfg), labeler=labeler)
        points0, left0, right0 = rig[0]
        out = send(points0, {"left": left0, "right": right0}, 50.0)
        want = label(reference, points0, [left0, right0])
        np.testing.assert_array_equal(decode_pointcloud2(out)["label"], want.label)
        left_only = label(pipeline(labeler, **{"affinity.enabled": False}), points0, [left0])
        assert (want.label[want.visible & ~left_only.visible] != IGNORE).sum() > 100  # seen by the right camera only

        points1, left1, _ = rig[1]
        out = send(points1, {"left": left1}, 50.1)
        np.testing.assert_array_equal(decode_pointcloud2(out)["label"], label(reference, points1, [left1]).label)
        assert node.stats()["frames_without"] == {"right": 1}

        # One overlay per camera, each the size of its own image.
        wait_until(lambda: got["left/overlay"] and got["right/overlay"], 10, "overlays")
        assert (got["left/overlay"][0].width, got["right/overlay"][0].width) == (LEFT_END, 1226 - SPLIT)
        assert got["right/overlay"][0].header.frame_id == "cam_right"

        me = node.get_fully_qualified_name()

        def pairing():
            with lock:
                arrays = list(got["diagnostics"])
            for arr in reversed(arrays):
                for s in arr.status:
                    if s.name == f"{me}: pairing":
                        return {kv.key: kv.value for kv in s.values}
            return {}

        wait_until(lambda: pairing().get("frames without right") == "1", 10, "the missing camera on /diagnostics")
        assert pairing()["frames without left"] == "0" and pairing()["clouds paired"] == "2"

        # The rig is fixed at start; a camera's extrinsic may change but is checked.
        for bad in (Parameter("cameras", value=["left"]), Parameter("left.image_topic", value="other"),
                    Parameter("right.T_cam_lidar", value=[1.0, 2.0, 3.0])):
            (res,) = node.set_parameters([bad])
            assert not res.successful and res.reason, bad.name
        (res,) = node.set_parameters([Parameter("right.T_cam_lidar", value=np.eye(4).reshape(-1).tolist())])
        assert res.successful, res.reason
        np.testing.assert_array_equal(node.cameras[1].T_cam_lidar, np.eye(4).reshape(-1))
    finally:
        executor.remove_node(node)
        executor.remove_node(probe)
        node.destroy_node()
        probe.destroy_node()


def test_camera_names_and_topics_are_checked():
    from partlift_ros.config import ConfigError
    from partlift_ros.ros.params import build_cameras, build_config, build_settings

    (default,) = build_cameras({})
    assert (default.name, default.image_topic, default.camera_info_topic) == ("", "image", "camera_info")
    specs = build_cameras({"cameras": ["front", "rear"], "rear.camera_info_topic": "/rear/info"})
    assert [(s.image_topic, s.camera_info_topic) for s in specs] == [
        ("front/image", "front/camera_info"), ("rear/image", "/rear/info")]
    # Camera keys never reach the core config.
    build_config({"cameras": ["front"], "front.image_topic": "x", "clip.batch_size": 8})
    for values, message in [
        ({"cameras": ["clip"]}, "taken by a parameter"),
        ({"cameras": ["9cam"]}, "not a valid name"),
        ({"cameras": ["a", "b"], "b.image_topic": "a/image"}, "share a topic"),
        ({"cameras": ["a"], "a.T_cam_lidar": [1.0] * 12}, "16 values"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_cameras(values)
    with pytest.raises(ConfigError, match="unique"):
        build_settings({"cameras": ["a", "a"]})


# ------------------------------------------------------------------------- the real KITTI stereo pair
def test_real_two_camera_kitti_run_covers_the_single_camera_run(labeler, seq08, tmp_path):
    """image_2 + image_3 through the CLI's source options: every point the left camera sees is still seen."""
    import yaml

    from partlift_ros.cli.label import parse_cameras
    from partlift_ros.label_job import SourceSpec, detect_source, iter_source

    spec = detect_source(seq08, cameras=parse_cameras("2,3"))
    assert SourceSpec(**yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec  # source.yaml round trip
    (_, stereo), = list(iter_source(spec, slice(0, 1), lambda i: False))
    (_, mono), = list(iter_source(detect_source(seq08), slice(0, 1), lambda i: False))
    assert len(stereo.cameras) == 2 and len(mono.cameras) == 1
    off = {"affinity.enabled": False}
    two = label(pipeline(labeler, **off), stereo.points, stereo.cameras)
    one = label(pipeline(labeler, **off), mono.points, mono.cameras)
    assert (two.visible | ~one.visible).all()  # visibility is the union over cameras
    assert two.visible.sum() > one.visible.sum()  # the right camera sees a strip the left one does not
    assert (two.label != IGNORE).sum() >= 0.95 * (one.label != IGNORE).sum()
    with pytest.raises(InputError, match="--cameras expects KITTI camera numbers"):
        parse_cameras("left")
