"""sensor_msgs/Image and CompressedImage <-> (H, W, 3) uint8 RGB arrays.

Messages are duck-typed: anything with the message's fields works (rclpy messages, rosbags
dataclasses, a SimpleNamespace in tests). ``data`` may be bytes, a memoryview, an array.array or a
numpy array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import InputError

# encoding -> (channels, bytes per channel); channel order is handled in _to_rgb.
RAW_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),
    "rgb16": (3, 2),
    "bgr16": (3, 2),
}


def _as_bytes(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` without copying where possible."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data), dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8)


def decode_image(msg: Any, where: str = "image") -> np.ndarray:
    """Decode a sensor_msgs/Image into (H, W, 3) uint8 RGB.

    Honours ``step`` (row padding) and ``is_bigendian`` (16-bit encodings, scaled to 8 bits by
    keeping the high byte). Raises InputError for unsupported encodings, empty images and data
    whose length is not ``height * step``.
    """
    encoding = str(msg.encoding).strip().lower()
    if encoding not in RAW_ENCODINGS:
        raise InputError(
            f"{where}: unsupported image encoding {msg.encoding!r}; supported: {sorted(RAW_ENCODINGS)} "
            "(or a sensor_msgs/CompressedImage with jpeg/png)"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise InputError(f"{where}: empty image ({width}x{height})")
    channels, depth = RAW_ENCODINGS[encoding]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise InputError(f"{where}: step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({encoding})")
    data = _as_bytes(msg.data)
    if data.size != height * step:
        raise InputError(
            f"{where}: data has {data.size} bytes, expected height*step = {height}*{step} = {height * step}"
        )
    rows = data.reshape(height, step)[:, :row_bytes]  # drop the row padding
    if depth == 1:
        pixels = rows.reshape(height, width, channels)
    else:
        big = bool(getattr(msg, "is_bigendian", 0))
        dtype = np.dtype(">u2" if big else "<u2")
        wide = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
        pixels = (wide >> 8).astype(np.uint8)
    return _to_rgb(pixels, encoding)


def _to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    if encoding.startswith("mono"):
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


def decode_compressed_image(msg: Any, where: str = "compressed image") -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) into (H, W, 3) uint8 RGB."""
    fmt = str(getattr(msg, "format", "")).lower()
    if "compresseddepth" in fmt:
        raise InputError(f"{where}: format {msg.format!r} is a depth image, expected a jpeg/png colour image")
    data = _as_bytes(msg.data)
    if data.size == 0:
        raise InputError(f"{where}: empty data (format {msg.format!r})")
    rgb = _imdecode_rgb(data)
    if rgb is None:
        raise InputError(f"{where}: could not decode {data.size} bytes as jpeg/png (format {msg.format!r})")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"{where}: decoded to an empty image")
    return rgb


def _imdecode_rgb(data: np.ndarray) -> np.ndarray | None:
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if img is None:
            return None
        return np.ascontiguousarray(img[:, :, ::-1])
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError):
        return None


def decode_any_image(msg: Any, where: str = "image") -> np.ndarray:
    """Image or CompressedImage, told apart by their fields (``encoding`` vs ``format``)."""
    if hasattr(msg, "encoding"):
        return decode_image(msg, where)
    if hasattr(msg, "format"):
        return decode_compressed_image(msg, where)
    raise InputError(f"{where}: {type(msg).__name__} is neither a sensor_msgs/Image nor a CompressedImage")


def image_msg_fields(rgb: np.ndarray) -> dict[str, Any]:
    """Fields of an rgb8 sensor_msgs/Image for ``rgb`` (H, W, 3) uint8.

    ``data`` is a flat uint8 numpy array (what rosbags serialises); rclpy wants
    ``array.array('B', data.tobytes())``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"image_msg_fields: expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(f"image_msg_fields: empty image {rgb.shape}")
    height, width = int(rgb.shape[0]), int(rgb.shape[1])
    return dict(
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=width * 3,
        data=np.ascontiguousarray(rgb).reshape(-1),
    )
