"""The one rule per sensor fact (points.py): intensity scale, non-finite points, rings; and the real
two-camera KITTI reader that depends on nothing but the data."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from partlift_ros.io.pointcloud2 import CloudFormatError, cloud_to_scan, encode_pointcloud2
from partlift_ros.points import (
    finite_points_mask, intensity_full_scale, normalise_intensity, parse_intensity_scale,
)
from partlift_ros.types import InputError


@pytest.mark.parametrize("values,dtype,full", [
    (np.array([0.0, 0.3, 1.0], np.float32), None, 1.0),  # KITTI remission
    (np.array([0, 12, 200], np.uint8), None, 255.0),  # Velodyne/Livox uint8
    (np.array([0, 3, 7], np.uint8), None, 255.0),  # a dark uint8 frame is still out of 255
    (np.array([0.0, 17.0, 254.0], np.float32), None, 255.0),  # Velodyne driver float 0..255
    (np.array([0, 9, 250], np.uint16), None, 255.0),  # uint16 reflectivity that stays below 256
    (np.array([0, 900, 40000], np.uint16), None, 65535.0),  # Ouster-style uint16 signal
    (np.array([np.nan, 0.5, np.inf], np.float32), None, 1.0),  # non-finite values do not set the scale
    (np.array([0.0, 70000.0], np.float64), None, 70000.0),  # beyond 16 bits: the largest value
    (np.array([0.0, 0.5]), np.uint8, 255.0),  # the field's datatype wins over the values' dtype
])
def test_auto_full_scale_follows_datatype_and_values(values, dtype, full):
    assert intensity_full_scale(values, dtype) == full


def test_normalised_intensity_is_in_0_1_and_the_same_return_reads_the_same_on_every_scale():
    remission = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    as_uint8 = np.round(remission * 255).astype(np.uint8)
    as_float255 = (remission * 255).astype(np.float32)
    as_uint16 = np.round(remission * 65535).astype(np.uint16)
    for raw in (remission, as_uint8, as_float255, as_uint16):
        np.testing.assert_allclose(normalise_intensity(raw), remission, atol=1 / 255)
    weird = np.array([-3.0, np.nan, 0.5, 2.0], np.float32)
    np.testing.assert_allclose(normalise_intensity(weird, scale=1.0), [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalise_intensity(np.array([50.0, 100.0]), scale="100"), [0.5, 1.0])


@pytest.mark.parametrize("bad", ["x", "-1", 0, "nan", None])
def test_intensity_scale_must_be_auto_or_positive(bad):
    with pytest.raises(ValueError, match="expected 'auto' or a positive number"):
        parse_intensity_scale(bad)
    assert parse_intensity_scale(" AUTO ") == "auto" and parse_intensity_scale("255") == 255.0


def test_config_key_is_checked():
    from partlift_ros.config import ConfigError, load_config

    assert load_config(overrides={"points.intensity_scale": 255}).points.intensity_scale == "255"
    with pytest.raises(ConfigError, match="points.intensity_scale: expected 'auto'"):
        load_config(overrides={"points.intensity_scale": "bright"})


def test_finite_mask_looks_at_coordinates_only():
    pts = np.zeros((4, 4), np.float32)
    pts[1, 0], pts[2, 2], pts[3, 3] = np.nan, np.inf, np.nan
    np.testing.assert_array_equal(finite_points_mask(pts), [True, False, False, True])


def _msg(arr: np.ndarray):
    return SimpleNamespace(**{**encode_pointcloud2(arr), "fields": [
        SimpleNamespace(name=n, offset=o, datatype=d, count=c) for n, o, d, c in encode_pointcloud2(arr)["fields"]
    ]})


def test_scan_rings_come_from_a_field_else_from_organised_rows():
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    organised = np.zeros((3, 5), dtype)
    scan = cloud_to_scan(_msg(organised))
    assert scan.layout == (3, 5)
    np.testing.assert_array_equal(scan.ring, np.repeat([0, 1, 2], 5))
    flat = cloud_to_scan(_msg(organised.reshape(-1)))
    assert flat.ring is None and flat.layout is None
    for name in ("ring", "channel", "laser_id", "line"):
        with_field = np.zeros(6, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), (name, "u1")])
        with_field[name] = [5, 4, 3, 2, 1, 0]
        np.testing.assert_array_equal(cloud_to_scan(_msg(with_field)).ring, [5, 4, 3, 2, 1, 0])
    fractional = np.zeros(2, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("ring", "<f4")])
    fractional["ring"] = [0.5, 1.0]
    with pytest.raises(CloudFormatError, match="whole laser numbers"):
        cloud_to_scan(_msg(fractional))


def test_frame_checks_ring_and_layout_sizes():
    from partlift_ros.types import CameraView, Frame

    cam = CameraView(np.zeros((4, 4, 3), np.uint8), np.diag([1.0, 1.0, 1.0]), np.eye(4))
    pts = np.zeros((6, 4), np.float32)
    Frame(pts, [cam], ring=np.zeros(6, np.int32), layout=(2, 3)).validate()
    with pytest.raises(InputError, match="ring has shape"):
        Frame(pts, [cam], ring=np.zeros(5, np.int32)).validate()
    with pytest.raises(InputError, match="organised layout"):
        Frame(pts, [cam], layout=(4, 4)).validate()


# --------------------------------------------------------------------------- two real KITTI cameras
def test_kitti_reader_gives_both_colour_cameras_with_their_own_projection(seq08):
    from partlift_ros.calibration import project_points
    from partlift_ros.io.kitti import KittiSequenceReader

    two = KittiSequenceReader(seq08, frames=slice(0, 2), cameras=(2, 3)).read(0)
    one = KittiSequenceReader(seq08, frames=slice(0, 2)).read(0)
    assert [c.frame_id for c in two.cameras] == ["camera_color_left", "camera_color_right"]
    np.testing.assert_array_equal(two.cameras[0].image, one.camera.image)
    left, right = two.cameras
    # The right camera sits ~0.54 m to the right of the left one (the KITTI stereo baseline).
    offset = (left.T_cam_lidar @ np.linalg.inv(right.T_cam_lidar))[:3, 3]
    assert offset[0] == pytest.approx(0.54, abs=0.02) and abs(offset[1]) < 0.02
    # A point in front of both cameras lands further left in the right image (positive disparity).
    xyz = two.points[(two.points[:, 0] > 8) & (two.points[:, 0] < 12) & (np.abs(two.points[:, 1]) < 1)]
    pl = project_points(xyz, left.K, left.T_cam_lidar, left.size)
    pr = project_points(xyz, right.K, right.T_cam_lidar, right.size)
    both = pl.in_image & pr.in_image
    assert both.sum() > 50
    disparity = pl.uv[both, 0] - pr.uv[both, 0]
    assert (disparity > 0).all() and np.allclose(pl.uv[both, 1], pr.uv[both, 1], atol=1.0)


def test_kitti_frames_without_a_right_image_keep_the_left_camera(kitti_root):
    from partlift_ros.io.kitti import KittiSequenceReader

    seq00 = kitti_root / "sequences" / "00"  # image_3 holds frames 0-9 of its 25
    reader = KittiSequenceReader(seq00, frames=slice(9, 11), cameras=(2, 3))
    assert reader.frame_indices == [9, 10]
    assert [len(f.cameras) for f in reader] == [2, 1]
    assert reader.read(1).camera.frame_id == "camera_color_left"
    with pytest.raises(InputError, match="cameras: expected distinct KITTI colour cameras"):
        KittiSequenceReader(seq00, cameras=(2, 2))
