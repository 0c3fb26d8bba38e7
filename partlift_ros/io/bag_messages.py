"""Single rosbag2 messages without ROS: CDR headers read without a full decode, CameraInfo checks.

TF chains are ``calibration.chain_transform`` (the node follows /tf with the same code).

Used by ``rosbag_reader.RosbagReader``; every function raises ``InputError`` saying which message is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..types import InputError


@dataclass
class CameraModel:
    stamp: float
    K: np.ndarray  # (3, 3)
    D: np.ndarray | None  # plumb_bob k1 k2 p1 p2 k3, None when all zero
    size: tuple[int, int]  # (width, height)


def frame_name(frame_id: str) -> str:
    return str(frame_id).lstrip("/")


def header_from_cdr(raw: bytes | memoryview) -> tuple[float, str]:
    """(stamp seconds, frame_id) of a CDR message whose first field is a std_msgs/Header."""
    buf = memoryview(raw)
    if len(buf) < 16:
        raise InputError(f"CDR message of {len(buf)} bytes is too short to hold a header")
    order = "<" if buf[1] == 1 else ">"  # encapsulation id: 0x0001 CDR_LE, 0x0000 CDR_BE
    sec, nanosec, length = struct.unpack_from(order + "iII", buf, 4)
    if length == 0 or 16 + length > len(buf):
        raise InputError("CDR header has a malformed frame_id string")
    frame_id = bytes(buf[16 : 16 + length - 1]).decode("utf-8", errors="replace")
    return sec + nanosec * 1e-9, frame_id


def stamp_of(msg: Any) -> float:
    return int(msg.header.stamp.sec) + int(msg.header.stamp.nanosec) * 1e-9


def camera_model(msg: Any, where: str) -> CameraModel:
    """K, D and size of a CameraInfo, checked (an all-zero K means an uncalibrated camera)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.any(K):
        raise InputError(f"{where}: CameraInfo K is all zeros (uncalibrated camera)")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{where}: CameraInfo K has invalid focal lengths: {K.tolist()}")
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: CameraInfo size is {width}x{height}")
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    model = str(msg.distortion_model)
    D = None
    if d.size and np.any(d):
        # project_points models plumb_bob (k1 k2 p1 p2 k3); rational_polynomial reduces to it when k4..k6 = 0.
        if model not in ("plumb_bob", "rational_polynomial") or np.any(d[5:]):
            raise InputError(
                f"{where}: distortion model {model!r} with D={d.tolist()} is not supported "
                "(use plumb_bob, or a rectified image with zero D)"
            )
        D = d[:5]
    return CameraModel(stamp=stamp_of(msg), K=K, D=D, size=(width, height))


@contextmanager
def decoding(where: str) -> Iterator[None]:
    """Any failure to decode a message's payload is an InputError naming the topic (the data is untrusted)."""
    try:
        yield
    except InputError as exc:
        raise InputError(str(exc) if where in str(exc) else f"{where}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - codecs (cv2, numpy) raise many types on corrupt bytes
        raise InputError(f"{where}: cannot decode ({type(exc).__name__}: {exc})") from exc
