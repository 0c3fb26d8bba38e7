"""KittiSequenceReader: real seq08 frames, and a tiny synthetic sequence broken in every way we check."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from partlift_ros.calibration import parse_kitti_calib
from partlift_ros.io.kitti import KittiSequenceReader
from partlift_ros.types import InputError

CALIB = (
    "P0: 700 0 600 0 0 700 180 0 0 0 1 0\n"
    "P2: 700 0 600 46.9 0 700 180 0.12 0 0 1 0.0062\n"
    "Tr: 0 -1 0 0 0 0 -1 -0.07 1 0 0 -0.33\n"
)


def make_sequence(root: Path, n: int = 3, size=(8, 6)) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("velodyne", "image_2", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        pts = rng.normal(size=(10 + i, 4)).astype(np.float32)
        pts[:, 3] = rng.uniform(0, 1, size=10 + i)  # KITTI remission is 0..1
        pts.tofile(root / "velodyne" / f"{i:06d}.bin")
        img = np.full((size[1], size[0], 3), (10 * i, 20, 30), np.uint8)  # RGB
        cv2.imwrite(str(root / "image_2" / f"{i:06d}.png"), img[:, :, ::-1])
        (np.arange(10 + i, dtype=np.uint32) | (7 << 16)).tofile(root / "labels" / f"{i:06d}.label")
    (root / "calib.txt").write_text(CALIB)
    (root / "times.txt").write_text("".join(f"{0.1 * i:e}\n" for i in range(n)))
    return root


@pytest.fixture()
def seq(tmp_path):
    return make_sequence(tmp_path / "seq")


def test_synthetic_sequence_reads_back_exactly(seq):
    reader = KittiSequenceReader(seq, load_labels=True)
    assert len(reader) == 3 and reader.frame_indices == [0, 1, 2]
    frame = reader.read(2)
    expected = np.fromfile(seq / "velodyne" / "000002.bin", np.float32).reshape(-1, 4)
    np.testing.assert_array_equal(frame.points, expected)
    assert frame.points.dtype == np.float32 and frame.index == 2
    assert frame.stamp == pytest.approx(0.2)
    assert frame.frame_id == "velodyne" and frame.camera.frame_id == "camera_color_left"
    np.testing.assert_array_equal(frame.camera.image[0, 0], [20, 20, 30])  # RGB order, not BGR
    np.testing.assert_allclose(frame.camera.K, [[700, 0, 600], [0, 700, 180], [0, 0, 1]])
    assert reader.read_labels(2)[3] == 3 | (7 << 16)
    frame.validate()


def test_frames_slice_selects_positions(seq):
    reader = KittiSequenceReader(seq, frames=slice(1, None))
    assert reader.frame_indices == [1, 2]
    assert [f.index for f in reader] == [1, 2]
    assert reader.read(-1).index == 2
    with pytest.raises(IndexError):
        reader.read(2)


def expect_error(seq, match, **kwargs):
    with pytest.raises(InputError, match=match):
        reader = KittiSequenceReader(seq, **kwargs)
        for _ in reader:
            pass


def test_missing_folder_and_files(seq, tmp_path):
    expect_error(tmp_path / "nope", "sequence folder not found")
    shutil.rmtree(seq / "image_2")
    expect_error(seq, "missing folder image_2/")


def test_missing_times(seq):
    (seq / "times.txt").unlink()
    expect_error(seq, "missing file times.txt")


def test_scan_without_image(seq):
    (seq / "image_2" / "000001.png").unlink()
    expect_error(seq, r"scans without an image .*\[1\]")


def test_image_without_scan(seq):
    (seq / "velodyne" / "000002.bin").unlink()
    expect_error(seq, r"extra images without a scan .*\[2\]")


def test_calib_without_tr(seq):
    (seq / "calib.txt").write_text(CALIB.splitlines()[1] + "\n")
    expect_error(seq, "missing Tr")


def test_bin_size_not_multiple_of_16(seq):
    with open(seq / "velodyne" / "000001.bin", "ab") as fh:
        fh.write(b"\x00" * 8)
    expect_error(seq, "not a multiple of 16")


def test_empty_scan(seq):
    (seq / "velodyne" / "000000.bin").write_bytes(b"")
    expect_error(seq, "empty scan")


def test_nan_points_keep_their_row_and_an_all_nan_scan_is_refused(seq):
    pts = np.fromfile(seq / "velodyne" / "000001.bin", np.float32).reshape(-1, 4)
    pts[3, 1] = np.nan
    pts[5, 0] = np.inf
    pts[6, 3] = np.nan  # a bad intensity on a good point
    pts.tofile(seq / "velodyne" / "000001.bin")
    frame = KittiSequenceReader(seq).read(1)
    assert frame.points.shape == (11, 4)  # rows stay where they were, so labels line up with the file
    assert np.isnan(frame.points[3, 1]) and np.isinf(frame.points[5, 0])
    assert frame.points[6, 3] == 0.0
    np.testing.assert_array_equal(frame.points[7], pts[7])
    frame.validate()
    np.full((4, 4), np.nan, np.float32).tofile(seq / "velodyne" / "000002.bin")
    with pytest.raises(InputError, match="000002.bin: every one of the 4 points has NaN/inf"):
        KittiSequenceReader(seq).read(2)


def test_label_count_differs_from_points(seq):
    np.zeros(5, np.uint32).tofile(seq / "labels" / "000001.label")
    expect_error(seq, "5 labels .* for 11 points", load_labels=True)
    reader = KittiSequenceReader(seq)  # labels are not looked at unless asked
    assert len(list(reader)) == 3
    with pytest.raises(InputError, match="5 labels"):
        reader.read_labels(1)


def test_missing_labels_folder(seq):
    shutil.rmtree(seq / "labels")
    expect_error(seq, "missing folder labels/", load_labels=True)


def test_image_size_differs_from_first(seq):
    cv2.imwrite(str(seq / "image_2" / "000002.png"), np.zeros((6, 9, 3), np.uint8))
    expect_error(seq, "image is 9x6, but the camera's first image is 8x6")


def test_times_too_short(seq):
    (seq / "times.txt").write_text("0.0\n0.1\n")
    expect_error(seq, "needs line 3")


def test_real_seq08_frames(seq08):
    reader = KittiSequenceReader(seq08, frames=slice(0, 2), load_labels=True)
    assert len(reader) == 2
    frame = reader.read(1)
    assert frame.points.shape == (123433, 4)
    assert frame.camera.image.shape == (370, 1226, 3)
    calib = parse_kitti_calib(seq08 / "calib.txt")
    np.testing.assert_allclose(frame.camera.T_cam_lidar, calib.T_cam_lidar)
    assert frame.stamp == pytest.approx(0.103992)
    labels = reader.read_labels(1)
    assert labels.dtype == np.uint32 and labels.shape == (123433,)
    assert 40 in set(np.unique(labels & 0xFFFF).tolist())  # road is present
    frame.validate()
