"""ROS 2 message <-> numpy conversions for the nodes (the only layer that builds rclpy messages).

The byte-level work lives in the ROS-free codecs (``io/pointcloud2.py``, ``io/images.py``); this
module only fills messages from their dicts and reads calibration and stamps out of messages.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..io.images import decode_any_image, image_msg_fields
from ..io.pointcloud2 import encode_pointcloud2
from ..types import InputError, LabelledCloud

# Distortion models that calibration.project_points reproduces (plumb_bob k1 k2 p1 p2 k3).
_PLUMB_BOB_MODELS = ("", "plumb_bob", "rational_polynomial")


def message_type(name: str):
    """The nodes' message classes by name, imported when a node is built."""
    if name in ("PointCloud2", "Image", "CompressedImage", "CameraInfo"):
        import sensor_msgs.msg as mod
    elif name == "MarkerArray":
        import visualization_msgs.msg as mod
    else:
        import std_msgs.msg as mod
    return getattr(mod, name)


def stamp_to_sec(stamp: Any) -> float:
    """builtin_interfaces/Time (rclpy or rosbags) -> float seconds."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def sec_to_stamp(t: float):
    from builtin_interfaces.msg import Time

    sec = int(np.floor(t))
    return Time(sec=sec, nanosec=min(int(round((t - sec) * 1e9)), 999_999_999))


def make_header(frame_id: str, stamp: Any):
    from std_msgs.msg import Header

    return Header(frame_id=str(frame_id), stamp=stamp)


def _byte_array(data: bytes | np.ndarray) -> array.array:
    # rclpy accepts array.array('B') as is; anything else is checked element by element.
    out = array.array("B")
    out.frombytes(data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes())
    return out


def pointcloud2_msg(cloud: np.ndarray, header: Any):
    """sensor_msgs/PointCloud2 for a structured array (see io.pointcloud2.encode_pointcloud2)."""
    from sensor_msgs.msg import PointCloud2, PointField

    d = encode_pointcloud2(cloud)
    msg = PointCloud2(
        header=header, height=d["height"], width=d["width"], is_bigendian=d["is_bigendian"],
        point_step=d["point_step"], row_step=d["row_step"], is_dense=d["is_dense"],
    )
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=c) for n, o, t, c in d["fields"]]
    msg.data = _byte_array(d["data"])
    return msg


def image_msg(rgb: np.ndarray, header: Any):
    """sensor_msgs/Image (rgb8) for an (H, W, 3) uint8 array."""
    from sensor_msgs.msg import Image

    f = image_msg_fields(rgb)
    msg = Image(header=header, height=f["height"], width=f["width"], encoding=f["encoding"],
                is_bigendian=f["is_bigendian"], step=f["step"])
    msg.data = _byte_array(f["data"])
    return msg


def image_from_msg(msg: Any, where: str = "image") -> np.ndarray:
    """Image or CompressedImage -> (H, W, 3) uint8 RGB; InputError when it cannot be decoded."""
    return decode_any_image(msg, where)


class CameraInfoError(InputError):
    """A CameraInfo that cannot be used; ``reason`` is a short key for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class CameraIntrinsics:
    K: np.ndarray  # (3, 3)
    D: np.ndarray | None  # plumb_bob coefficients, None when all zero
    size: tuple[int, int]  # (width, height); (0, 0) when the CameraInfo leaves it unset
    frame_id: str
    stamp: float


def camera_info_to_intrinsics(msg: Any) -> CameraIntrinsics:
    """K, D and image size from a sensor_msgs/CameraInfo, with InputError for unusable ones."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if K.size != 9 or not np.isfinite(K).all():
        raise CameraInfoError("camera_info_bad_k", f"CameraInfo K must be 9 finite numbers, got {K.tolist()}")
    K = K.reshape(3, 3)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CameraInfoError("camera_info_zero_k", f"CameraInfo K has no positive focal length (fx={K[0, 0]}, fy={K[1, 1]}): uncalibrated camera")
    model = str(msg.distortion_model).strip().lower()
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if not np.isfinite(D).all():
        raise CameraInfoError("camera_info_distortion", f"CameraInfo D has NaN/inf: {D.tolist()}")
    if model not in _PLUMB_BOB_MODELS and np.any(D != 0):
        raise CameraInfoError("camera_info_distortion", f"CameraInfo distortion model {msg.distortion_model!r} is not supported (plumb_bob only)")
    if model == "rational_polynomial" and np.any(D[5:8] != 0):
        raise CameraInfoError("camera_info_distortion", "CameraInfo rational_polynomial with k4..k6 != 0 is not supported (plumb_bob only)")
    width, height = int(msg.width), int(msg.height)
    if width < 0 or height < 0:
        raise CameraInfoError("camera_info_bad_size", f"CameraInfo has a negative size {width}x{height}")
    return CameraIntrinsics(
        K=K, D=D[:5] if np.any(D[:5] != 0) else None, size=(width, height),
        frame_id=str(msg.header.frame_id), stamp=stamp_to_sec(msg.header.stamp),
    )


def matrix_param(values: list[float]) -> np.ndarray | None:
    """The ``T_cam_lidar`` parameter (16 numbers, row-major) -> (4, 4), or None when empty."""
    if len(values) == 0:
        return None
    T = np.asarray(values, dtype=np.float64)
    if T.size != 16 or not np.isfinite(T).all():
        raise InputError(f"T_cam_lidar must be 16 finite numbers (row-major 4x4), got {len(values)} values")
    T = T.reshape(4, 4)
    if not np.allclose(T[3], [0, 0, 0, 1]):
        raise InputError(f"T_cam_lidar last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    return T


def instance_centroids(labelled: LabelledCloud) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (K, 3) centroids) of the instances that carry a label, from their labelled points."""
    inst = labelled.instance
    keep = (inst >= 0) & (labelled.label >= 0)
    m = labelled.num_instances
    if m == 0 or not keep.any():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
    xyz = labelled.frame.points[keep, :3].astype(np.float64)
    ids = inst[keep]
    counts = np.bincount(ids, minlength=m)
    sums = np.stack([np.bincount(ids, weights=xyz[:, i], minlength=m) for i in range(3)], axis=1)
    present = np.flatnonzero(counts > 0)
    return present, sums[present] / counts[present, None]


def instance_markers(labelled: LabelledCloud, palette: np.ndarray, header: Any, text_size: float = 0.6):
    """visualization_msgs/MarkerArray: DELETEALL, then class name + confidence at each instance centroid."""
    from visualization_msgs.msg import Marker, MarkerArray

    out = MarkerArray()
    out.markers.append(Marker(header=header, action=Marker.DELETEALL))
    ids, centroids = instance_centroids(labelled)
    if ids.size == 0:
        return out
    refined = labelled.instance_refined
    cls = refined[ids].argmax(axis=1)
    conf = refined[ids].max(axis=1)
    for i, c, p, k in zip(ids.tolist(), cls.tolist(), centroids, conf.tolist()):
        m = Marker(header=header, ns="partlift_instances", id=int(i), type=Marker.TEXT_VIEW_FACING,
                   action=Marker.ADD, text=f"{labelled.class_names[c]} {k:.2f}")
        m.pose.position.x, m.pose.position.y, m.pose.position.z = float(p[0]), float(p[1]), float(p[2]) + 1.0
        m.pose.orientation.w = 1.0
        m.scale.z = float(text_size)
        rgb = palette[c] if c < len(palette) else (255, 255, 255)
        m.color.r, m.color.g, m.color.b, m.color.a = (float(rgb[0]) / 255, float(rgb[1]) / 255, float(rgb[2]) / 255, 1.0)
        out.markers.append(m)
    return out


def float64_msg(value: float):
    from std_msgs.msg import Float64

    return Float64(data=float(value))


def diagnostic_status(name: str, level: int, message: str, values: dict[str, Any]):
    """diagnostic_msgs/DiagnosticStatus (levels: 0 OK, 1 WARN, 2 ERROR, 3 STALE); ImportError when absent."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    return DiagnosticStatus(
        level=bytes([level]), name=name, message=message, hardware_id="partlift_ros",
        values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()],
    )


def diagnostics_publisher(node):
    """A /diagnostics publisher, or None (with one warning) where diagnostic_msgs is not installed."""
    try:
        from diagnostic_msgs.msg import DiagnosticArray
    except ImportError:
        node.get_logger().warning(
            "diagnostic_msgs is not importable: /diagnostics is not published "
            "(install ros-<distro>-diagnostic-msgs or pip install ros-diagnostic-msgs)"
        )
        return None
    return node.create_publisher(DiagnosticArray, "/diagnostics", 10)


def publish_diagnostics(node, publisher, statuses: list) -> None:
    """Publish ``statuses`` (DiagnosticStatus list) stamped now; no-op without a publisher."""
    if publisher is None:
        return
    from diagnostic_msgs.msg import DiagnosticArray

    msg = DiagnosticArray()
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.status = statuses
    publisher.publish(msg)
