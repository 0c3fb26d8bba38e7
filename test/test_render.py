"""Pictures of labelled frames: every camera of the frame is drawn, the bird's-eye view fills its panel,
`partlift render` reads a bag with several image topics the way the run did.

The two cameras are test_multicamera.py's: windows of the real cam2 image of seq 08, ``left`` sees columns
[0, 800), ``right`` columns [426, 1226).
"""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from partlift_ros.cli import app
from partlift_ros.config import SEMANTIC_KITTI_CLASSES
from partlift_ros.types import Frame
from test_multicamera import _write_rig_bag, rig  # noqa: F401 - rig: the two-camera frames fixture


def labels_by_height(points: np.ndarray) -> np.ndarray:
    """A deterministic class per point (bands of height), so the picture has several classes."""
    return np.clip(((points[:, 2] + 2.0) / 0.8).astype(np.int32), 0, len(SEMANTIC_KITTI_CLASSES) - 1)


def test_every_camera_is_drawn_with_its_own_projection(rig):
    from partlift_ros.calibration import project_points
    from partlift_ros.render import NO_CLASS, class_colours, overlay_image, palette_for
    from partlift_ros.render_run import render_labels

    points, left, right = rig[0]
    frame = Frame(points, [left, right], frame_id="velodyne")
    label = labels_by_height(points)
    label[::7] = -1
    picture = render_labels(frame, label, list(SEMANTIC_KITTI_CLASSES), title="labels")
    colours = class_colours(label, palette_for(list(SEMANTIC_KITTI_CLASSES)))
    for cam in (left, right):
        x0, y0, x1, y1 = picture.boxes[f"labels / {cam.frame_id}"]
        proj = project_points(points, cam.K, cam.T_cam_lidar, cam.size)
        expected = overlay_image(cam.image, proj.uv, proj.in_image, colours, radius=1, depth=proj.depth, alpha=0.85)
        np.testing.assert_array_equal(picture.image[y0:y1, x0:x1], expected)
        assert proj.in_image.sum() > 5000
    # Two cameras side by side, the bird's-eye view below as wide as both.
    (lx0, ly0, _, _), (rx0, ry0, _, _) = picture.boxes["labels / cam_left"], picture.boxes["labels / cam_right"]
    assert ly0 == ry0 and rx0 > lx0
    bx0, by0, bx1, by1 = picture.boxes["bird's-eye view (x forward = up)"]
    assert bx1 - bx0 == picture.image.shape[1] and by0 > ly0
    present = {SEMANTIC_KITTI_CLASSES[i] for i in np.unique(label[label >= 0])}
    assert set(picture.legend) == present | {NO_CLASS}


def test_non_finite_points_are_drawn_nowhere_and_change_nothing(rig):
    # Readers keep non-finite returns at their index (points.py): the picture must ignore them.
    from partlift_ros.render_run import render_labels

    points, left, right = rig[0]
    label = labels_by_height(points)
    clean = render_labels(Frame(points, [left, right], frame_id="velodyne"), label, list(SEMANTIC_KITTI_CLASSES))
    holed = np.insert(points, [10, 500], np.nan, axis=0)
    holed[[10, 501], 3] = 0.0
    holed_label = np.insert(label, [10, 500], -1)
    picture = render_labels(Frame(holed, [left, right], frame_id="velodyne"), holed_label,
                            list(SEMANTIC_KITTI_CLASSES))
    np.testing.assert_array_equal(picture.image, clean.image)


def test_birds_eye_view_fills_its_panel(rig):
    from partlift_ros.render import bev_image

    points = rig[0][0]
    colours = np.full((len(points), 3), 255, np.uint8)
    for width, height in ((1226, 900), (1600, 500), (500, 1200)):
        bev = bev_image(points, colours, width=width, height=height)
        assert bev.shape == (height, width, 3)
        rows, cols = np.nonzero(bev.any(axis=2))
        spans = ((cols.max() - cols.min()) / width, (rows.max() - rows.min()) / height)
        # The points reach the panel's edges in one direction and are centred in the other.
        assert max(spans) > 0.95, spans
        assert abs((cols.max() + cols.min()) / 2 / width - 0.5) < 0.1 or spans[0] > 0.95
        assert abs((rows.max() + rows.min()) / 2 / height - 0.5) < 0.1 or spans[1] > 0.95


def test_render_draws_both_cameras_of_a_bag_with_two_image_topics(rig, tmp_path, tiny_clip_dir):
    """The run recorded its image topics in source.yaml; `partlift render` reads the bag with them (it used
    to refuse a bag with several image topics) and draws both cameras."""
    from PIL import Image

    from partlift_ros.io.rosbag_reader import RosbagReader
    from partlift_ros.io.writers import read_run_classes, read_run_labels
    from partlift_ros.render_run import render_labels

    bag = _write_rig_bag(tmp_path / "rig.mcap", rig, right_stamps=(0.0, 0.0))
    run = tmp_path / "run"
    topics = ("--image-topic", "/left/image_raw", "--image-topic", "/right/image_raw")
    r = CliRunner().invoke(app, ["label", str(bag), "--out", str(run), "--clip-model", str(tiny_clip_dir),
                                 "--affinity", "off", "--frames", "1:2", *topics])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["render", str(run), str(bag), "--frame", "1"])
    assert r.exit_code == 0, r.output
    png = np.asarray(Image.open(run / "render" / "000001.png").convert("RGB"))

    frames = list(RosbagReader(bag, image_topic=["/left/image_raw", "/right/image_raw"]))
    assert [c.frame_id for c in frames[1].cameras] == ["cam_left", "cam_right"]
    label, _ = read_run_labels(run, 1)
    expected = render_labels(frames[1], label, read_run_classes(run), f"labels of {run.name}, frame 1")
    np.testing.assert_array_equal(png, expected.image)
    assert {k.split(" / ")[-1] for k in expected.boxes if " / " in k} == {"cam_left", "cam_right"}
