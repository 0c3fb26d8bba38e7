"""`partlift label` as a user relies on it: exit codes, the run fingerprint, --overwrite, output names and
modes, and labels that line up with the input points (non-finite points, organised clouds)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import yaml
import pytest

from job_fixtures import copy_sequence, invoke, text, write_config
from partlift_ros.io.writers import read_run_labels


@pytest.fixture
def clip_copy(tmp_path, tiny_clip_dir):
    """A CLIP folder the test may change in place."""
    return shutil.copytree(tiny_clip_dir, tmp_path / "clip")


@pytest.fixture(scope="module")
def other_clip_dir(tmp_path_factory, tiny_clip_dir):
    """Another tiny CLIP: the same architecture and tokenizer, other weights."""
    import torch
    from transformers import CLIPModel

    folder = shutil.copytree(tiny_clip_dir, tmp_path_factory.mktemp("other") / "clip")
    model = CLIPModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weights in model.parameters():
            weights.add_(0.05 * torch.randn(weights.shape, generator=generator))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("frames, message", [
    ("5:2", "--frames 5:2 is empty"),
    ("50:60", "has frames 0..9 (10 frames)"),
])
def test_an_empty_range_exits_2_before_any_model_loads(tmp_path, seq08, frames, message):
    r = invoke("label", seq08, "--out", tmp_path / "o", "--frames", frames, "--clip-model", tmp_path / "no-such-model")
    assert r.exit_code == 2, r.output
    assert message in text(r) and "CLIP" not in text(r)  # the model was never looked at
    assert not (tmp_path / "o").exists()


def test_resume_with_another_model_is_refused_and_overwrite_starts_afresh(tmp_path, seq08, clip_copy, other_clip_dir):
    """Acceptance: another --clip-model is refused naming it; other weights in the same folder too; --overwrite
    gives a fresh consistent run, and a failed --overwrite leaves the old run as it was."""
    out = tmp_path / "run"
    base = ("label", seq08, "--out", out, "--frames", "0:1", "--affinity", "off")
    old_mask = os.umask(0o027)
    try:
        r = invoke(*base, "--clip-model", clip_copy)
    finally:
        os.umask(old_mask)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((out / "labels" / "000000.label").stat().st_mode) == 0o640  # the user's umask, not 0600
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    r = invoke(*base, "--clip-model", other_clip_dir)
    assert r.exit_code == 2
    assert f"clip.model: the run has '{clip_copy}', this invocation '{other_clip_dir}'" in text(r)
    assert "--overwrite" in text(r)

    shutil.copy(other_clip_dir / "model.safetensors", clip_copy / "model.safetensors")  # new weights, same folder
    r = invoke(*base, "--clip-model", clip_copy)
    assert r.exit_code == 2
    assert "CLIP file model/model.safetensors" in text(r) and "sha256" in text(r)

    notclip = tmp_path / "notclip"
    notclip.mkdir()
    (notclip / "config.json").write_text(json.dumps({"model_type": "bert"}))
    r = invoke(*base, "--clip-model", notclip, "--overwrite")
    assert r.exit_code == 2 and "not 'clip'" in text(r)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # the old run is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left

    r = invoke(*base, "--clip-model", other_clip_dir, "--overwrite")
    assert r.exit_code == 0, r.output
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["config"]["clip.model"] == str(other_clip_dir)
    assert str(other_clip_dir) in (out / "config.yaml").read_text()
    assert (out / "text_embeddings.npy").read_bytes() != before[out / "text_embeddings.npy"]
    assert (out / "frames" / "000000.npz").read_bytes() != before[out / "frames" / "000000.npz"]  # relabelled
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_out_folders_that_are_not_runs_are_refused(tmp_path, seq08):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        r = invoke("label", seq08, "--out", other, "--frames", "0:1", *extra)
        assert r.exit_code == 2 and "is not a labelling run" in text(r)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "classes.yaml").write_text("classes: [car]\n")
    r = invoke("label", seq08, "--out", legacy, "--frames", "0:1")
    assert r.exit_code == 2 and "without a fingerprint.json" in text(r) and "--overwrite" in text(r)


def test_resuming_with_a_range_that_cuts_a_chunk_otherwise_is_refused(tmp_path, seq08, tiny_clip_dir):
    config = write_config(tmp_path / "c.yaml", chunk_frames=2)  # chunks 0-1, 2-3, ...
    out = tmp_path / "run"
    r = invoke("label", seq08, "--out", out, "--frames", "1:2", "--config", config, "--clip-model", tiny_clip_dir)
    assert r.exit_code == 0, r.output
    r = invoke("label", seq08, "--out", out, "--frames", "0:2", "--config", config, "--clip-model", tiny_clip_dir)
    assert r.exit_code == 2
    assert "frame 1 was labelled with frames 1..1 as its chunk; this invocation's chunk is frames 0..1" in text(r)


def test_bag_outputs_are_named_as_written_and_replaced_only_with_overwrite(tmp_path, seq08):
    r = invoke("kitti2bag", seq08, tmp_path / "x.bag", "--frames", "0:1")
    assert r.exit_code == 2 and "name it x.mcap (one file)" in text(r)
    assert list(tmp_path.iterdir()) == []

    bag = tmp_path / "x.mcap"
    assert invoke("kitti2bag", seq08, bag, "--frames", "0:1").exit_code == 0
    assert bag.is_file()
    r = invoke("kitti2bag", seq08, bag, "--frames", "0:2")
    assert r.exit_code == 2 and "exists already (pass --overwrite to replace it)" in text(r)
    r = invoke("kitti2bag", seq08, bag, "--frames", "0:2", "--overwrite")
    assert r.exit_code == 0 and "(2 frames)" in text(r)

    r = invoke("label", bag, "--out", tmp_path / "o", "--write-bag", bag, "--clip-model", tmp_path / "no-model")
    assert r.exit_code == 2 and "pass --overwrite" in text(r) and not (tmp_path / "o").exists()


def test_non_finite_points_keep_their_index_in_the_labels_and_the_labelled_bag(tmp_path, seq08, tiny_clip_dir):
    from rosbags.highlevel import AnyReader

    from partlift_ros.io.pointcloud2 import decode_pointcloud2

    scan = np.fromfile(seq08 / "velodyne" / "000000.bin", dtype="<f4").reshape(-1, 4).copy()
    holes = np.arange(0, scan.shape[0], 97)
    scan[holes, 0] = np.nan
    scan[holes[::2], 2] = np.inf
    seq = copy_sequence(seq08, tmp_path / "seq", range(1), {0: scan})
    r = invoke("label", seq, "--out", tmp_path / "run", "--clip-model", tiny_clip_dir, "--affinity", "off",
               "--write-bag", tmp_path / "labelled.mcap")
    assert r.exit_code == 0, r.output
    label, superpoint = read_run_labels(tmp_path / "run", 0)
    assert label.shape == (scan.shape[0],)
    assert (label[holes] == -1).all() and (superpoint[holes] == -1).all()
    assert (label >= 0).any()
    with AnyReader([tmp_path / "labelled.mcap"]) as reader:
        conn = [c for c in reader.connections if c.topic == "/labelled_points"]
        (_, _, raw), = reader.messages(connections=conn)
        cloud = decode_pointcloud2(reader.deserialize(raw, conn[0].msgtype))
    assert cloud.shape == (scan.shape[0],)
    np.testing.assert_array_equal(cloud["label"], label)
    assert np.isnan(cloud["x"][holes]).all()


def range_image(points: np.ndarray, rows: int = 64, cols: int = 512) -> np.ndarray:
    """(rows, cols, 4) organised cloud of a real scan (elevation rows x azimuth columns), NaN where no return."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    elevation = np.arctan2(z, np.hypot(x, y))
    lo, hi = np.percentile(elevation, [0.1, 99.9])
    r = np.clip(((hi - elevation) / (hi - lo) * rows).astype(int), 0, rows - 1)
    c = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * cols).astype(int) % cols
    grid = np.full((rows, cols, 4), np.nan, dtype=np.float32)
    grid[r, c] = points
    return grid


def test_an_organised_bag_cloud_stays_organised_in_the_labelled_bag(tmp_path, seq08, tiny_clip_dir):
    """A range-image cloud (64 x 512 cells, NaN where no return) from a real scan, with its real image."""
    from rosbags.highlevel import AnyReader

    from partlift_ros.io.bag_writer import BagOutput, camera_info_msg, image_msg, pointcloud2_msg, tf_static_msg
    from partlift_ros.io.kitti import KittiSequenceReader
    from partlift_ros.io.pointcloud2 import decode_pointcloud2, encode_pointcloud2

    frame = KittiSequenceReader(seq08, frames=slice(0, 1)).read(0)
    grid = range_image(frame.points)
    cells = np.zeros(grid.shape[:2], np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")]))
    for k, name in enumerate("x y z intensity".split()):
        cells[name] = grid[..., k]
    cam, stamp = frame.camera, 100.0
    bag = tmp_path / "organised.mcap"
    with BagOutput(bag) as out:
        for topic, msgtype in [("/points", "sensor_msgs/msg/PointCloud2"), ("/cam/image_raw", "sensor_msgs/msg/Image"),
                               ("/cam/camera_info", "sensor_msgs/msg/CameraInfo")]:
            out.add_topic(topic, msgtype)
        out.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        out.write("/tf_static", tf_static_msg(out.ts, [("lidar", "cam", np.linalg.inv(cam.T_cam_lidar))], stamp), stamp)
        out.write("/points", pointcloud2_msg(out.ts, encode_pointcloud2(cells), stamp, "lidar"), stamp)
        out.write("/cam/image_raw", image_msg(out.ts, cam.image, stamp, "cam"), stamp)
        out.write("/cam/camera_info", camera_info_msg(out.ts, cam.K, cam.size, stamp, "cam"), stamp)
    r = invoke("label", bag, "--out", tmp_path / "run", "--clip-model", tiny_clip_dir, "--affinity", "off",
               "--write-bag", tmp_path / "labelled.mcap")
    assert r.exit_code == 0, r.output
    label, _ = read_run_labels(tmp_path / "run", 0)
    empty = np.isnan(grid[..., 0]).reshape(-1)
    assert label.shape == (64 * 512,) and empty.any() and (label[empty] == -1).all() and (label[~empty] >= 0).any()
    with AnyReader([tmp_path / "labelled.mcap"]) as reader:
        conn = [c for c in reader.connections if c.topic == "/labelled_points"]
        (_, _, raw), = reader.messages(connections=conn)
        msg = reader.deserialize(raw, conn[0].msgtype)
    assert (msg.height, msg.width) == (64, 512) and not msg.is_dense
    np.testing.assert_array_equal(decode_pointcloud2(msg)["label"], label)


def test_skipped_frames_and_messages_are_printed_as_written():
    # Reasons quote paths and message fields; brackets in them must reach the user, not be read as markup.
    from types import SimpleNamespace

    from partlift_ros.cli.common import console
    from partlift_ros.cli.label import print_skipped

    summary = SimpleNamespace(warnings=["bag /data/run[a]/x.mcap: no [camera_info]"],
                              skipped_messages=["/velodyne_points at 3.0: field [ring] missing [/x]"],
                              frames_failed=[(4, "frame 4 of /data/run[a]/x.mcap: bad [image]")])
    with console.capture() as captured:
        print_skipped(summary)
        print_skipped(summary, "run[a]")
    out = " ".join(captured.get().split())
    for why in ("bag /data/run[a]/x.mcap: no [camera_info]", "field [ring] missing [/x]",
                "frame 4 of /data/run[a]/x.mcap: bad [image]", "run[a]: frame 4"):
        assert why in out, (why, out)


def test_a_runs_source_yaml_is_read_by_one_rule(tmp_path):
    # render, eval and the student's dataset all read a run's source through read_source_spec.
    from partlift_ros.label_job import SourceSpec, read_source_spec
    from partlift_ros.types import InputError

    assert read_source_spec(tmp_path) is None
    spec = SourceSpec("rosbag", "/bags/x.mcap", image_topic=["/a/image", "/b/image"], slop=0.1)
    (tmp_path / "source.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    assert read_source_spec(tmp_path) == spec
    for text, says in (("kind: [unclosed", "not valid YAML"), ("- kitti\n", "expected a mapping"),
                       ("kind: kitti\npath: /x\nlens: fisheye\n", "unexpected keys")):
        (tmp_path / "source.yaml").write_text(text)
        with pytest.raises(InputError, match=says):
            read_source_spec(tmp_path)
