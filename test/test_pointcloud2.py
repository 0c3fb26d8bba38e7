"""PointCloud2 codec: layouts (padding, field order, byte order, padded rows), errors, labelled clouds."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import pytest

from partlift_ros.io.pointcloud2 import (
    FLOAT32,
    FLOAT64,
    LABELLED_DTYPE,
    UINT16,
    UINT8,
    cloud_to_points,
    decode_pointcloud2,
    encode_pointcloud2,
    labelled_cloud_array,
    pack_rgb,
    unpack_rgb,
)
from partlift_ros.types import IGNORE, CameraView, Frame, InputError, LabelledCloud


def _field(name, offset, datatype, count=1):
    return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=count)


def _msg_from_dict(d: dict, data=None) -> SimpleNamespace:
    return SimpleNamespace(
        fields=[_field(*f) for f in d["fields"]], point_step=d["point_step"], row_step=d["row_step"],
        data=d["data"] if data is None else data, height=d["height"], width=d["width"],
        is_bigendian=d["is_bigendian"], is_dense=d["is_dense"],
    )


def _xyzi_msg(points: np.ndarray) -> SimpleNamespace:
    arr = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    for i, c in enumerate("xyz"):
        arr[c] = points[:, i]
    arr["intensity"] = points[:, 3]
    return _msg_from_dict(encode_pointcloud2(arr))


def test_roundtrip_keeps_padding_field_order_and_values():
    # intensity first, a 3-byte hole after a uint8 ring, z before y: decode must follow the offsets.
    dt = np.dtype({
        "names": ["intensity", "ring", "x", "z", "y", "t"],
        "formats": ["<f4", "u1", "<f4", "<f4", "<f4", "<f8"],
        "offsets": [0, 4, 8, 12, 16, 24],
        "itemsize": 40,
    })
    rng = np.random.default_rng(0)
    arr = np.zeros(100, dtype=dt)
    for name in ("intensity", "x", "y", "z", "t"):
        arr[name] = rng.normal(size=100)
    arr["ring"] = np.arange(100) % 64
    d = encode_pointcloud2(arr)
    assert d["point_step"] == 40 and d["row_step"] == 4000 and d["height"] == 1 and d["width"] == 100
    assert ("ring", 4, UINT8, 1) in d["fields"] and ("t", 24, FLOAT64, 1) in d["fields"]
    out = decode_pointcloud2(_msg_from_dict(d))
    for name in dt.names:
        np.testing.assert_array_equal(out[name], arr[name])
    pts = cloud_to_points(_msg_from_dict(d))
    np.testing.assert_array_equal(pts[:, 0], arr["x"])
    np.testing.assert_array_equal(pts[:, 1], arr["y"])
    np.testing.assert_array_equal(pts[:, 2], arr["z"])
    np.testing.assert_array_equal(pts[:, 3], arr["intensity"])


def test_decode_is_zero_copy_on_the_message_buffer():
    pts = np.arange(40, dtype=np.float32).reshape(10, 4)
    msg = _xyzi_msg(pts)
    buf = np.frombuffer(bytearray(msg.data), dtype=np.uint8)
    msg.data = buf
    out = decode_pointcloud2(msg)
    assert np.shares_memory(out, buf)


def test_big_endian_cloud_decodes_to_the_same_values():
    pts = np.array([[1.5, -2.0, 3.25, 7.0], [0.0, 1e3, -1e-3, 0.5]], dtype=np.float32)
    # Hand-packed big-endian bytes, so the test does not rely on the encoder.
    data = b"".join(struct.pack(">ffff", *p) for p in pts)
    msg = SimpleNamespace(
        fields=[_field(n, 4 * i, FLOAT32) for i, n in enumerate(["x", "y", "z", "intensity"])],
        point_step=16, row_step=32, data=data, height=1, width=2, is_bigendian=True,
    )
    np.testing.assert_array_equal(cloud_to_points(msg), pts)


def test_organised_cloud_with_padded_rows():
    h, w, step = 3, 4, 12
    row_step = w * step + 8  # 8 bytes of row padding that must be skipped
    raw = bytearray(row_step * h)
    expected = []
    for r in range(h):
        for c in range(w):
            p = (r * 10 + c, -c, r * 0.5)
            struct.pack_into("<fff", raw, r * row_step + c * step, *p)
            expected.append(p)
        raw[r * row_step + w * step: (r + 1) * row_step] = b"\xff" * 8
    msg = SimpleNamespace(
        fields=[_field(n, 4 * i, FLOAT32) for i, n in enumerate("xyz")],
        point_step=step, row_step=row_step, data=bytes(raw), height=h, width=w, is_bigendian=False,
    )
    pts = cloud_to_points(msg)
    assert pts.shape == (12, 4)
    np.testing.assert_allclose(pts[:, :3], np.array(expected, dtype=np.float32))
    assert (pts[:, 3] == 0).all()  # no intensity field -> 0


def test_integer_intensity_and_count_fields():
    dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<u2"), ("normal", "<f4", (3,))])
    arr = np.zeros(3, dtype=dt)
    arr["intensity"] = [0, 100, 65535]
    arr["normal"] = [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    d = encode_pointcloud2(arr)
    assert ("intensity", 12, UINT16, 1) in d["fields"]
    assert ("normal", 14, FLOAT32, 3) in d["fields"]
    out = decode_pointcloud2(_msg_from_dict(d))
    np.testing.assert_array_equal(out["normal"], arr["normal"])
    np.testing.assert_array_equal(cloud_to_points(_msg_from_dict(d))[:, 3], [0, 100, 65535])


def test_organised_array_encodes_height_and_width():
    arr = np.zeros((4, 5), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    arr["x"][1, 2] = np.nan
    d = encode_pointcloud2(arr)
    assert (d["height"], d["width"], d["row_step"]) == (4, 5, 60)
    assert d["is_dense"] is False
    assert decode_pointcloud2(_msg_from_dict(d)).shape == (20,)


def test_rosbags_message_decodes(tmp_path):
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    PointCloud2 = ts.types["sensor_msgs/msg/PointCloud2"]
    PointField = ts.types["sensor_msgs/msg/PointField"]
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    pts = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    d = encode_pointcloud2(decode_pointcloud2(_xyzi_msg(pts)))
    msg = PointCloud2(
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="velodyne"),
        height=d["height"], width=d["width"],
        fields=[PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in d["fields"]],
        is_bigendian=d["is_bigendian"], point_step=d["point_step"], row_step=d["row_step"],
        data=np.frombuffer(d["data"], dtype=np.uint8), is_dense=d["is_dense"],
    )
    # Through the CDR serializer and back, as a bag reader would hand it over.
    raw = ts.serialize_cdr(msg, PointCloud2.__msgtype__)
    back = ts.deserialize_cdr(raw, PointCloud2.__msgtype__)
    np.testing.assert_array_equal(cloud_to_points(back), pts)


def test_rclpy_message_decodes():
    pytest.importorskip("sensor_msgs.msg")
    import array

    from sensor_msgs.msg import PointCloud2, PointField

    pts = np.random.default_rng(2).normal(size=(20, 4)).astype(np.float32)
    d = encode_pointcloud2(decode_pointcloud2(_xyzi_msg(pts)))
    msg = PointCloud2(height=1, width=20, point_step=d["point_step"], row_step=d["row_step"])
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in d["fields"]]
    data = array.array("B")
    data.frombytes(d["data"])
    msg.data = data
    out = cloud_to_points(msg)
    np.testing.assert_array_equal(out, pts)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: setattr(m, "fields", [f for f in m.fields if f.name != "y"]), "no y field"),
        (lambda m: setattr(m, "fields", [f for f in m.fields if f.name not in "xyz"]), "no x/y/z field"),
        (lambda m: setattr(m, "point_step", 12), "point_step is smaller than the fields"),
        (lambda m: setattr(m, "point_step", 0), "point_step must be positive"),
        (lambda m: setattr(m, "data", m.data[:-3]), "expected row_step"),
        (lambda m: setattr(m, "width", m.width + 1), "row_step 48 < width 4"),
        (lambda m: setattr(m, "row_step", m.row_step - 16), "row_step 32 < width 3"),
        (lambda m: setattr(m.fields[0], "datatype", 9), "unsupported datatype 9"),
        (lambda m: setattr(m.fields[1], "datatype", 0), "unsupported datatype 0"),
        (lambda m: setattr(m.fields[1], "name", "x"), "field 'x' twice"),
        (lambda m: setattr(m, "data", object()), "not a byte buffer"),
        (lambda m: setattr(m.fields[3], "count", 2), "'intensity' ends at byte 20 but point_step is 16"),
        (lambda m: setattr(m.fields[0], "count", 2), "field 'x' has count 2, expected 1"),
    ],
)
def test_malformed_clouds_raise_specific_input_errors(mutate, message):
    msg = _xyzi_msg(np.ones((3, 4), dtype=np.float32))
    mutate(msg)
    with pytest.raises(InputError, match=message):
        cloud_to_points(msg)


def test_empty_cloud_decodes_to_zero_points():
    msg = _xyzi_msg(np.zeros((0, 4), dtype=np.float32))
    assert cloud_to_points(msg).shape == (0, 4)


def test_rgb_packing_matches_rviz_bit_layout():
    colours = np.array([[255, 0, 0], [0, 255, 0], [1, 2, 3]], dtype=np.uint8)
    packed = pack_rgb(colours)
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0xFF0000, 0x00FF00, 0x010203]
    np.testing.assert_array_equal(unpack_rgb(packed), colours)


def _labelled(points, label, instance):
    n = len(points)
    cam = CameraView(np.zeros((10, 10, 3), np.uint8), np.eye(3), np.eye(4))
    return LabelledCloud(
        frame=Frame(points=points, cameras=[cam]), class_names=["a", "b"],
        label=np.asarray(label, np.int32), confidence=np.linspace(0, 1, n, dtype=np.float32),
        instance=np.asarray(instance, np.int32), visible=np.ones(n, bool),
        instance_scores=np.zeros((2, 2), np.float32), instance_refined=np.zeros((2, 2), np.float32),
        instance_features=np.zeros((2, 4), np.float32), instance_valid=np.ones(2, bool),
    )


def test_labelled_cloud_array_fields_and_colours():
    pts = np.arange(16, dtype=np.float32).reshape(4, 4)
    palette = np.array([[10, 20, 30], [200, 100, 0]], dtype=np.uint8)
    arr = labelled_cloud_array(_labelled(pts, [0, 1, IGNORE, 7], [0, 1, IGNORE, 1]), palette)
    assert arr.dtype == LABELLED_DTYPE
    assert list(arr.dtype.names) == ["x", "y", "z", "intensity", "label", "confidence", "instance", "rgb"]
    np.testing.assert_array_equal(arr["x"], pts[:, 0])
    np.testing.assert_array_equal(arr["intensity"], pts[:, 3])
    assert arr["label"].tolist() == [0, 1, -1, 7]
    assert arr["instance"].tolist() == [0, 1, -1, 1]
    assert unpack_rgb(arr["rgb"]).tolist() == [[10, 20, 30], [200, 100, 0], [128, 128, 128], [128, 128, 128]]
    d = encode_pointcloud2(arr)
    assert [f[0] for f in d["fields"]] == list(arr.dtype.names)
    assert d["point_step"] == 32
    np.testing.assert_array_equal(decode_pointcloud2(_msg_from_dict(d))["label"], arr["label"])


def test_labelled_cloud_array_rejects_length_mismatch():
    pts = np.zeros((3, 4), np.float32)
    with pytest.raises(InputError, match="2 labels for 3 points"):
        labelled_cloud_array(_labelled(pts, [0, 1], [0, 0]), np.zeros((2, 3), np.uint8))


def test_real_kitti_scan_roundtrip(seq08):
    scan = np.fromfile(seq08 / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    msg = _xyzi_msg(scan)
    assert msg.point_step == 16 and msg.width == scan.shape[0]
    np.testing.assert_array_equal(cloud_to_points(msg), scan)
