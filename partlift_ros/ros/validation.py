"""Checks on every input message before it is used: a bad message is refused with a short reason.

Each check returns the decoded input or raises ``Rejected(reason, message)``; the node counts the
reason (/diagnostics), logs it once per throttle period and drops the message. The byte-level work is
in the ROS-free codecs (``io/pointcloud2.py``, ``io/images.py``); messages are duck-typed, so these
functions run on rclpy messages and on plain test objects alike.

Clouds follow the one rule for sensor facts (``points.py``): intensity is brought to 0..1, and points
with NaN/inf x, y or z keep their place (they get no label); only a cloud with no finite point at all
is refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io.images import RAW_ENCODINGS
from ..io.pointcloud2 import CloudFormatError, Scan, cloud_to_scan
from ..points import finite_points_mask
from ..types import InputError
from . import conversions as conv


class Rejected(InputError):
    """An input message the node cannot use; ``reason`` is the short key it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_cloud(msg: Any, max_points: int, intensity_scale: str | float = "auto",
                need_frame_id: bool = True) -> Scan:
    """The decoded cloud (every point in its input order, organised layout kept), or Rejected."""
    frame_id = str(msg.header.frame_id)
    if need_frame_id and not frame_id:
        raise Rejected("cloud_no_frame_id", "PointCloud2 with an empty header.frame_id: cannot find its extrinsics")
    declared = int(msg.width) * int(msg.height)
    if declared > max_points:
        # Checked before decoding, so an oversized cloud costs nothing.
        raise Rejected("cloud_too_large", f"PointCloud2 with {declared} points exceeds max_points {max_points}")
    try:
        scan = cloud_to_scan(msg, intensity_scale)
    except CloudFormatError as exc:
        raise Rejected(exc.reason, f"PointCloud2 in {frame_id!r}: {exc}") from None
    except InputError as exc:
        raise Rejected("cloud_malformed", f"PointCloud2 in {frame_id!r}: {exc}") from None
    if scan.points.shape[0] == 0:
        raise Rejected("cloud_empty", f"PointCloud2 in {frame_id!r} has no points")
    if not finite_points_mask(scan.points).any():
        raise Rejected("cloud_all_nonfinite", f"PointCloud2 in {frame_id!r}: every point has NaN/inf coordinates")
    return scan


def check_image(msg: Any, where: str = "") -> np.ndarray:
    """(H, W, 3) uint8 RGB of an Image or CompressedImage, or Rejected."""
    if hasattr(msg, "encoding"):
        if int(msg.width) == 0 or int(msg.height) == 0:
            raise Rejected("image_empty", f"{where}Image is {msg.width}x{msg.height}")
        if str(msg.encoding).strip().lower() not in RAW_ENCODINGS:
            raise Rejected("image_unsupported_encoding", f"{where}Image encoding {msg.encoding!r} is not "
                           f"supported (use one of {sorted(RAW_ENCODINGS)})")
    try:
        return conv.image_from_msg(msg)
    except InputError as exc:
        raise Rejected("image_malformed" if hasattr(msg, "encoding") else "image_undecodable", f"{where}{exc}") from None


def check_camera_info(msg: Any, where: str = "") -> conv.CameraIntrinsics:
    """K, D and size of a CameraInfo, or Rejected (the node then keeps the previous one)."""
    try:
        return conv.camera_info_to_intrinsics(msg)
    except conv.CameraInfoError as exc:
        raise Rejected(exc.reason, f"{where}{exc} (keeping the previous CameraInfo)") from None
