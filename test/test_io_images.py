"""Image message decoding: every supported encoding gives the same RGB; bad messages say what is wrong."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from partlift_ros.io.images import decode_any_image, decode_compressed_image, decode_image, image_msg_fields
from partlift_ros.types import InputError

RGB = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def raw_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: int = 0) -> SimpleNamespace:
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1).view(np.uint8).reshape(h, -1)
    rows = np.concatenate([rows, np.full((h, pad), 77, np.uint8)], axis=1)  # padding bytes must be ignored
    return SimpleNamespace(
        height=h, width=w, encoding=encoding, is_bigendian=bigendian, step=rows.shape[1], data=rows.tobytes()
    )


@pytest.mark.parametrize("pad", [0, 3])
def test_rgb_bgr_rgba_bgra_decode_to_the_same_rgb(pad):
    alpha = np.full(RGB.shape[:2] + (1,), 200, np.uint8)
    cases = {
        "rgb8": RGB,
        "bgr8": RGB[:, :, ::-1],
        "rgba8": np.concatenate([RGB, alpha], axis=2),
        "bgra8": np.concatenate([RGB[:, :, ::-1], alpha], axis=2),
    }
    for encoding, pixels in cases.items():
        out = decode_image(raw_msg(np.ascontiguousarray(pixels), encoding, pad=pad))
        assert out.shape == (5, 7, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, RGB, err_msg=encoding)


def test_mono8_is_replicated_to_three_channels():
    grey = RGB[:, :, 0].copy()
    out = decode_image(raw_msg(grey[:, :, None], "mono8", pad=1))
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


@pytest.mark.parametrize("bigendian", [0, 1])
def test_mono16_honours_endianness(bigendian):
    values = (RGB[:, :, 0].astype(np.uint16) << 8) | 0x34  # high byte carries the 8-bit value
    wide = values.astype(">u2" if bigendian else "<u2")
    out = decode_image(raw_msg(wide[:, :, None], "mono16", pad=2, bigendian=bigendian))
    np.testing.assert_array_equal(out[:, :, 1], RGB[:, :, 0])


def test_data_can_be_a_numpy_array_or_a_list():
    msg = raw_msg(RGB, "rgb8")
    msg.data = np.frombuffer(msg.data, np.uint8)
    np.testing.assert_array_equal(decode_image(msg), RGB)
    msg.data = list(msg.data.tolist())
    np.testing.assert_array_equal(decode_image(msg), RGB)


def test_bad_messages_raise_specific_errors():
    with pytest.raises(InputError, match="unsupported image encoding '32FC1'"):
        decode_image(SimpleNamespace(height=2, width=2, encoding="32FC1", is_bigendian=0, step=8, data=bytes(16)))
    with pytest.raises(InputError, match="empty image"):
        decode_image(SimpleNamespace(height=0, width=0, encoding="rgb8", is_bigendian=0, step=0, data=b""))
    short = raw_msg(RGB, "rgb8")
    short.data = short.data[:-1]
    with pytest.raises(InputError, match="expected height\\*step"):
        decode_image(short)
    narrow = raw_msg(RGB, "rgb8")
    narrow.step = 7 * 3 - 1
    with pytest.raises(InputError, match="step 20 is smaller"):
        decode_image(narrow)


@pytest.mark.parametrize("ext,fmt", [(".png", "png"), (".png", "rgb8; png compressed bgr8")])
def test_compressed_png_is_lossless(ext, fmt):
    ok, enc = cv2.imencode(ext, RGB[:, :, ::-1])
    assert ok
    msg = SimpleNamespace(format=fmt, data=enc.tobytes())
    np.testing.assert_array_equal(decode_any_image(msg), RGB)


def test_compressed_jpeg_is_close():
    smooth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (32, 1, 3))
    smooth[:, :, 0] = 255 - smooth[:, :, 0]
    ok, enc = cv2.imencode(".jpg", smooth[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed_image(SimpleNamespace(format="jpeg", data=np.frombuffer(enc.tobytes(), np.uint8)))
    assert out.shape == smooth.shape
    assert np.abs(out.astype(int) - smooth.astype(int)).mean() < 3  # red channel really decreases: order is RGB


def test_compressed_garbage_and_depth_are_rejected():
    with pytest.raises(InputError, match="could not decode"):
        decode_compressed_image(SimpleNamespace(format="jpeg", data=b"not an image at all"))
    with pytest.raises(InputError, match="empty data"):
        decode_compressed_image(SimpleNamespace(format="jpeg", data=b""))
    with pytest.raises(InputError, match="depth"):
        decode_compressed_image(SimpleNamespace(format="16UC1; compressedDepth png", data=b"\x00" * 20))


def test_image_msg_fields_round_trip():
    fields = image_msg_fields(RGB)
    assert (fields["height"], fields["width"], fields["encoding"], fields["step"]) == (5, 7, "rgb8", 21)
    np.testing.assert_array_equal(decode_image(SimpleNamespace(**fields)), RGB)
    with pytest.raises(InputError):
        image_msg_fields(RGB[:, :, 0])


def test_rclpy_messages_decode_too():
    import array

    msgs = pytest.importorskip("sensor_msgs.msg")
    fields = image_msg_fields(RGB)
    fields["data"] = array.array("B", fields["data"].tobytes())  # what rclpy stores
    np.testing.assert_array_equal(decode_any_image(msgs.Image(**fields)), RGB)
    png = cv2.imencode(".png", RGB[:, :, ::-1])[1].tobytes()
    compressed = msgs.CompressedImage(format="png", data=array.array("B", png))
    np.testing.assert_array_equal(decode_any_image(compressed), RGB)
