"""rosbag2 I/O without ROS: kitti2bag -> RosbagReader round trips on real frames, synthetic bags
that break each rule RosbagReader checks, and the labelled-results bag read back message by message."""

import numpy as np
import pytest

from partlift_ros.calibration import se3
from partlift_ros.io.bag_writer import (
    BagOutput, LabelledBagWriter, camera_info_msg, image_msg, pointcloud2_msg, tf_static_msg,
)
from partlift_ros.io.kitti import KittiSequenceReader
from partlift_ros.io.kitti2bag import KITTI_STAMP_OFFSET, kitti_to_bag
from partlift_ros.io.pointcloud2 import decode_pointcloud2, encode_pointcloud2, unpack_rgb
from partlift_ros.io.rosbag_reader import RosbagReader, chain_transform
from partlift_ros.types import CameraView, Frame, InputError, LabelledCloud

# A small pinhole camera looking along the LiDAR's x axis (KITTI-like axes).
K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
R_CAM_LIDAR = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])
T_CAM_LIDAR = se3(R_CAM_LIDAR, [0.1, -0.2, 0.3])
W, H = 64, 48
XYZI = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])


def points_msg(ts, pts, stamp, frame="lidar"):
    cloud = np.ascontiguousarray(pts, dtype="<f4").view(XYZI).reshape(-1)
    return pointcloud2_msg(ts, encode_pointcloud2(cloud), stamp, frame)


def rgb(seed, w=W, h=H):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_bag(path, clouds=(), images=(), infos=None, tf=None, extra_cloud_topic=False, compressed=()):
    """clouds: (stamp, points); images: (stamp, rgb); infos default to one per image."""
    with BagOutput(path) as bag:
        ts = bag.ts
        topics = [("/points", "sensor_msgs/msg/PointCloud2"), ("/cam/image_raw", "sensor_msgs/msg/Image"),
                  ("/cam/camera_info", "sensor_msgs/msg/CameraInfo"), ("/tf_static", "tf2_msgs/msg/TFMessage")]
        if extra_cloud_topic:
            topics.append(("/points2", "sensor_msgs/msg/PointCloud2"))
        if compressed:
            topics.append(("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage"))
        for topic, msgtype in topics:
            bag.add_topic(topic, msgtype, latched=topic == "/tf_static")
        edges = [("lidar", "cam", np.linalg.inv(T_CAM_LIDAR))] if tf is None else tf
        if edges:
            bag.write("/tf_static", tf_static_msg(ts, edges, 1.0), 1.0)
        for stamp, pts in clouds:
            bag.write("/points", points_msg(ts, pts, stamp), stamp)
        for stamp, img in images:
            bag.write("/cam/image_raw", image_msg(ts, img, stamp, "cam"), stamp)
        for stamp, fmt, data in compressed:
            msg = ts.types["sensor_msgs/msg/CompressedImage"](
                header=image_msg(ts, rgb(0), stamp, "cam").header, format=fmt, data=np.frombuffer(data, np.uint8))
            bag.write("/cam/image_raw/compressed", msg, stamp)
        infos = [(s, K, (img.shape[1], img.shape[0])) for s, img in images] if infos is None else infos
        for stamp, k, size in infos:
            bag.write("/cam/camera_info", camera_info_msg(ts, k, size, stamp, "cam"), stamp)
    return path


def cloud(seed, n=20):
    pts = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    pts[:, 3] = np.abs(pts[:, 3]) / 4  # intensity in 0..1, as KITTI's remission
    return np.minimum(pts, np.float32(1.0), where=np.arange(4) == 3, out=pts)


# --- real frames: kitti2bag -> RosbagReader equals KittiSequenceReader ----------------------------

@pytest.mark.parametrize("name,frames", [("seq08.mcap", slice(0, 3)), ("seq08.db3", slice(4, 6))])
def test_kitti2bag_round_trip_matches_kitti_reader(seq08, tmp_path, name, frames):
    out = tmp_path / name
    assert kitti_to_bag(seq08, out, frames=frames) == len(range(10)[frames])
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp dir gone
    bag = RosbagReader(out)
    assert (bag.points_topic, bag.image_topic, bag.camera_info_topic) == (
        "/velodyne_points", "/camera/image_raw", "/camera/camera_info")
    kitti = KittiSequenceReader(seq08, frames=frames)
    got, want = list(bag), list(kitti)
    assert len(got) == len(want) == len(bag)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.points, w.points)
        np.testing.assert_array_equal(g.camera.image, w.camera.image)
        np.testing.assert_allclose(g.camera.K, w.camera.K)
        np.testing.assert_allclose(g.camera.T_cam_lidar, w.camera.T_cam_lidar, atol=1e-6)
        assert g.stamp - KITTI_STAMP_OFFSET == pytest.approx(w.stamp, abs=1e-6)
        assert (g.frame_id, g.camera.frame_id) == ("velodyne", "camera_color_left")
        assert g.camera.D is None
        g.validate()


def test_kitti2bag_folder_output_and_no_overwrite(seq08, tmp_path):
    out = tmp_path / "bagdir"
    kitti_to_bag(seq08, out, frames=slice(0, 1))
    assert (out / "metadata.yaml").is_file()  # a rosbag2 folder for `ros2 bag play`
    assert len(list(RosbagReader(out))) == 1
    with pytest.raises(InputError, match="exists already"):
        kitti_to_bag(seq08, out, frames=slice(0, 1))


def test_failed_bag_write_leaves_nothing(tmp_path):
    out = tmp_path / "broken.mcap"
    with pytest.raises(RuntimeError):
        with BagOutput(out) as bag:
            bag.add_topic("/points", "sensor_msgs/msg/PointCloud2")
            bag.write("/points", points_msg(bag.ts, cloud(0), 1.0), 1.0)
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


# --- synthetic bags ---------------------------------------------------------------------------------

def test_pairs_nearest_image_and_drops_clouds_without_one(tmp_path):
    images = [(10.00, rgb(1)), (10.11, rgb(2)), (10.50, rgb(3))]
    clouds = [(10.02, cloud(0)), (10.10, cloud(1)), (10.30, cloud(2))]  # the last has no image within 0.05
    reader = RosbagReader(write_bag(tmp_path / "b.mcap", clouds, images))
    frames = list(reader)
    assert [f.index for f in frames] == [0, 1]
    np.testing.assert_array_equal(frames[0].camera.image, images[0][1])
    np.testing.assert_array_equal(frames[1].camera.image, images[1][1])
    np.testing.assert_array_equal(frames[1].points, clouds[1][1])
    np.testing.assert_allclose(frames[0].camera.T_cam_lidar, T_CAM_LIDAR, atol=1e-9)
    assert frames[0].stamp == pytest.approx(10.02)


def test_image_written_after_its_cloud_is_still_paired(tmp_path):
    # clouds are all written first, so every image arrives after the cloud that needs it
    clouds = [(5.0, cloud(0)), (5.1, cloud(1))]
    images = [(5.01, rgb(1)), (5.09, rgb(2))]
    frames = list(RosbagReader(write_bag(tmp_path / "b.db3", clouds, images)))
    assert len(frames) == 2
    np.testing.assert_array_equal(frames[1].camera.image, images[1][1])


def test_nan_points_keep_their_rows(tmp_path):
    pts = cloud(0, n=10)
    pts[[2, 5], 0] = np.nan
    frame = next(iter(RosbagReader(write_bag(tmp_path / "b.mcap", [(1.0, pts)], [(1.0, rgb(1))]))))
    np.testing.assert_array_equal(frame.points, pts)  # NaN rows stay in place: labels line up with the bag
    assert frame.ring is None and frame.layout is None


def test_organised_uint8_cloud_with_ring_field_is_normalised_and_keeps_its_layout(tmp_path):
    """A Velodyne-style organised cloud: uint8 intensity 0..255, a uint16 ring field, NaN no-returns."""
    rows, cols = 4, 6
    xyz = np.random.default_rng(3).normal(size=(rows * cols, 3)).astype(np.float32)
    xyz[[1, 7], :] = np.nan
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "u1"), ("ring", "<u2")])
    arr = np.zeros(rows * cols, dtype)
    arr["x"], arr["y"], arr["z"] = xyz.T
    arr["intensity"] = np.arange(rows * cols) * 10
    arr["ring"] = np.arange(rows * cols) % 16  # not the row: the field wins
    with BagOutput(tmp_path / "org.mcap") as bag:
        ts = bag.ts
        bag.add_topic("/points", "sensor_msgs/msg/PointCloud2")
        bag.add_topic("/cam/image_raw", "sensor_msgs/msg/Image")
        bag.add_topic("/cam/camera_info", "sensor_msgs/msg/CameraInfo")
        bag.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        bag.write("/tf_static", tf_static_msg(ts, [("lidar", "cam", np.linalg.inv(T_CAM_LIDAR))], 1.0), 1.0)
        bag.write("/points", pointcloud2_msg(ts, encode_pointcloud2(arr.reshape(rows, cols)), 1.0, "lidar"), 1.0)
        bag.write("/cam/image_raw", image_msg(ts, rgb(1), 1.0, "cam"), 1.0)
        bag.write("/cam/camera_info", camera_info_msg(ts, K, (W, H), 1.0, "cam"), 1.0)
    frame = next(iter(RosbagReader(tmp_path / "org.mcap")))
    assert frame.layout == (rows, cols) and frame.points.shape == (rows * cols, 4)
    np.testing.assert_allclose(frame.points[:, 3], np.arange(rows * cols) * 10 / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(frame.ring, np.arange(rows * cols) % 16)
    assert np.isnan(frame.points[[1, 7], 0]).all()
    frame.validate()


def test_missing_topic_lists_what_the_bag_has(tmp_path):
    path = write_bag(tmp_path / "b.mcap", [(1.0, cloud(0))], [(1.0, rgb(1))])
    with pytest.raises(InputError, match=r"no topic '/lidar'; the bag has: .*/points \(sensor_msgs/msg/PointCloud2\)"):
        RosbagReader(path, points_topic="/lidar")
    with pytest.raises(InputError, match="expected sensor_msgs/msg/PointCloud2"):
        RosbagReader(path, points_topic="/cam/image_raw")
    with BagOutput(tmp_path / "only_points.mcap") as bag:
        bag.add_topic("/points", "sensor_msgs/msg/PointCloud2")
        bag.write("/points", points_msg(bag.ts, cloud(0), 1.0), 1.0)
    with pytest.raises(InputError, match=r"no sensor_msgs/msg/Image or .*CompressedImage topic; the bag has: /points"):
        RosbagReader(tmp_path / "only_points.mcap")


def test_ambiguous_point_topics_need_a_choice(tmp_path):
    path = write_bag(tmp_path / "b.mcap", [(1.0, cloud(0))], [(1.0, rgb(1))], extra_cloud_topic=True)
    with pytest.raises(InputError, match=r"several sensor_msgs/msg/PointCloud2 topics \['/points', '/points2'\]"):
        RosbagReader(path)
    assert len(RosbagReader(path, points_topic="/points")) == 1


def test_zero_k_and_size_mismatch_are_rejected(tmp_path):
    zero_k = write_bag(tmp_path / "a.mcap", [(1.0, cloud(0))], [(1.0, rgb(1))], infos=[(1.0, np.zeros((3, 3)), (W, H))])
    with pytest.raises(InputError, match="K is all zeros"):
        RosbagReader(zero_k)
    wrong = write_bag(tmp_path / "b.mcap", [(1.0, cloud(0))], [(1.0, rgb(1))], infos=[(1.0, K, (W + 1, H))])
    with pytest.raises(InputError, match=f"image is {W}x{H} but /cam/camera_info says {W + 1}x{H}"):
        list(RosbagReader(wrong))


def test_missing_tf_chain_or_explicit_extrinsic(tmp_path):
    path = write_bag(tmp_path / "b.mcap", [(1.0, cloud(0))], [(1.0, rgb(1))], tf=[])
    with pytest.raises(InputError, match="no /tf_static chain from 'lidar' to 'cam'"):
        RosbagReader(path)
    T = se3(np.eye(3), [1, 2, 3])
    frame = next(iter(RosbagReader(path, T_cam_lidar=T)))
    np.testing.assert_array_equal(frame.camera.T_cam_lidar, T)


def test_tf_chain_through_base_link(tmp_path):
    T_base_lidar = se3(np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), [1.0, 0.0, 1.8])
    T_base_cam = T_base_lidar @ np.linalg.inv(T_CAM_LIDAR)  # camera pose in base_link
    edges = [("base_link", "lidar", T_base_lidar), ("base_link", "cam", T_base_cam)]
    frame = next(iter(RosbagReader(write_bag(tmp_path / "b.mcap", [(1.0, cloud(0))], [(1.0, rgb(1))], tf=edges))))
    np.testing.assert_allclose(frame.camera.T_cam_lidar, T_CAM_LIDAR, atol=1e-9)
    assert chain_transform(edges, "lidar", "map") is None


def test_compressed_images_are_chosen_on_request(tmp_path):
    import cv2

    png = cv2.imencode(".png", rgb(7)[:, :, ::-1])[1].tobytes()
    path = write_bag(tmp_path / "b.mcap", [(1.0, cloud(0))], [(1.0, rgb(1))], compressed=[(1.0, "png", png)])
    assert RosbagReader(path).image_topic == "/cam/image_raw"  # raw preferred when both exist
    reader = RosbagReader(path, compressed=True)
    assert reader.image_topic == "/cam/image_raw/compressed"
    np.testing.assert_array_equal(next(iter(reader)).camera.image, rgb(7))


def test_no_image_within_slop_is_an_error(tmp_path):
    path = write_bag(tmp_path / "b.mcap", [(1.0, cloud(0))], [(2.0, rgb(1))])
    with pytest.raises(InputError, match="within 0.05 s"):
        RosbagReader(path)
    assert len(RosbagReader(path, slop=1.5)) == 1


def test_not_a_bag(tmp_path):
    with pytest.raises(InputError, match="bag not found"):
        RosbagReader(tmp_path / "none.mcap")
    (tmp_path / "junk.mcap").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot open as a rosbag2"):
        RosbagReader(tmp_path / "junk.mcap")


# --- labelled results bag ---------------------------------------------------------------------------

def labelled_cloud(stamp=3.0):
    pts = np.array([
        [5.0, 0.0, 0.0, 0.1], [5.2, 0.1, 0.1, 0.2], [5.1, -0.1, -0.1, 0.3],  # instance 0: car
        [10.0, 2.0, 0.0, 0.4], [10.0, 2.2, 0.0, 0.5],  # instance 1: road
        [8.0, -1.0, 0.0, 0.6],  # unlabelled
    ], np.float32)
    frame = Frame(points=pts, cameras=[CameraView(rgb(3), K, T_CAM_LIDAR, frame_id="cam")], stamp=stamp,
                  index=0, frame_id="lidar")
    m = 2
    return LabelledCloud(
        frame=frame, class_names=["car", "road"],
        label=np.array([0, 0, 0, 1, 1, -1], np.int32),
        confidence=np.array([0.9, 0.9, 0.9, 0.5, 0.7, 0.0], np.float32),
        instance=np.array([0, 0, 0, 1, 1, -1], np.int32),
        visible=np.ones(6, bool),
        instance_scores=np.eye(m, dtype=np.float32), instance_refined=np.eye(m, dtype=np.float32),
        instance_features=np.eye(m, 4, dtype=np.float32), instance_valid=np.ones(m, bool),
    )


def test_labelled_bag_messages_read_back(tmp_path):
    from rosbags.highlevel import AnyReader

    palette = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    out = tmp_path / "labelled.mcap"
    with LabelledBagWriter(out, palette=palette) as writer:
        writer.write(labelled_cloud(3.0))
        writer.write(labelled_cloud(3.1))
    with AnyReader([out]) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {
            "/labelled_points": "sensor_msgs/msg/PointCloud2",
            "/instance_markers": "visualization_msgs/msg/MarkerArray",
            "/overlay": "sensor_msgs/msg/Image",
            "/camera_info": "sensor_msgs/msg/CameraInfo",
            "/tf_static": "tf2_msgs/msg/TFMessage",
        }
        msgs: dict[str, list] = {}
        for conn, t, raw in reader.messages(connections=reader.connections):
            msg = reader.deserialize(raw, conn.msgtype)
            msgs.setdefault(conn.topic, []).append((t, msg))
    assert len(msgs["/tf_static"]) == 1 and len(msgs["/labelled_points"]) == 2
    tf = msgs["/tf_static"][0][1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("lidar", "cam")

    t, pc = msgs["/labelled_points"][1]
    assert t == 3_100_000_000 and pc.header.frame_id == "lidar"
    assert (pc.header.stamp.sec, pc.header.stamp.nanosec) == (3, 100_000_000)
    arr = decode_pointcloud2(pc)
    assert arr["label"].tolist() == [0, 0, 0, 1, 1, -1]
    np.testing.assert_array_equal(unpack_rgb(arr["rgb"])[[0, 3]], palette)

    markers = msgs["/instance_markers"][0][1].markers
    assert markers[0].action == 3  # DELETEALL first
    texts = {m.id: m for m in markers[1:]}
    assert texts[0].text == "car 0.90" and texts[1].text == "road 0.60"
    assert all(m.type == 9 and m.header.frame_id == "lidar" for m in markers[1:])  # TEXT_VIEW_FACING
    assert (texts[1].pose.position.x, texts[1].pose.position.y) == pytest.approx((10.0, 2.1))
    assert (texts[0].color.r, texts[0].color.b) == (1.0, 0.0)

    overlay = msgs["/overlay"][0][1]
    assert (overlay.width, overlay.height, overlay.encoding, overlay.header.frame_id) == (W, H, "rgb8", "cam")
    img = overlay.data.reshape(H, W, 3)
    # instance 1 projects to the left of the centre (lidar +y is image left): drawn in the road colour
    cam = T_CAM_LIDAR[:3, :3] @ np.array([10.0, 2.0, 0.0]) + T_CAM_LIDAR[:3, 3]
    u, v = (K @ cam / cam[2])[:2]
    np.testing.assert_array_equal(img[int(v), int(u)], palette[1])
    assert not out.with_suffix(".mcap.tmp").exists()


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_labelled_bag_replays_through_rosbag_reader(tmp_path, distro):
    out = tmp_path / "labelled.db3"
    with LabelledBagWriter(out, palette=np.array([[255, 0, 0], [0, 0, 255]], np.uint8), distro=distro) as writer:
        writer.write(labelled_cloud())
    frame = next(iter(RosbagReader(out)))
    np.testing.assert_allclose(frame.points, labelled_cloud().frame.points)
    np.testing.assert_allclose(frame.camera.T_cam_lidar, T_CAM_LIDAR, atol=1e-9)
    np.testing.assert_allclose(frame.camera.K, K)


def test_camera_info_in_the_image_namespace_is_preferred(tmp_path):
    path = tmp_path / "b.mcap"
    with BagOutput(path) as bag:
        for topic, msgtype in [("/points", "sensor_msgs/msg/PointCloud2"), ("/cam/image_raw", "sensor_msgs/msg/Image"),
                               ("/cam/camera_info", "sensor_msgs/msg/CameraInfo"),
                               ("/other/camera_info", "sensor_msgs/msg/CameraInfo")]:
            bag.add_topic(topic, msgtype)
        bag.write("/points", points_msg(bag.ts, cloud(0), 1.0), 1.0)
        bag.write("/cam/image_raw", image_msg(bag.ts, rgb(1), 1.0, "cam"), 1.0)
        bag.write("/cam/camera_info", camera_info_msg(bag.ts, K, (W, H), 1.0, "cam"), 1.0)
        bag.write("/other/camera_info", camera_info_msg(bag.ts, 2 * K, (W, H), 1.0, "other"), 1.0)
    frame = next(iter(RosbagReader(path, T_cam_lidar=np.eye(4))))
    np.testing.assert_allclose(frame.camera.K, K)
    frame = next(iter(RosbagReader(path, camera_info_topic="/other/camera_info", T_cam_lidar=np.eye(4))))
    assert frame.camera.K[0, 0] == 100.0
