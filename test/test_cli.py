"""End to end through the `partlift` CLI on real frames, with a random-weight CLIP saved as a local folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from partlift_ros.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def text(result) -> str:
    """The command's output with line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory, seq08, tiny_clip_dir):
    out = tmp_path_factory.mktemp("run")
    r = invoke("label", seq08, "--out", out, "--clip-model", tiny_clip_dir, "--frames", "0:3")
    assert r.exit_code == 0, r.output
    return out


def test_label_writes_the_documented_layout(labelled_run, seq08):
    out = labelled_run
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["000000.label", "000001.label", "000002.label"]
    assert yaml.safe_load((out / "classes.yaml").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["affinity"]["beta"] == 2.0 and cfg["clip"]["model"]
    assert (out / "text_embeddings.npy").is_file()
    timing = json.loads((out / "timing.json").read_text())
    assert {"median_ms", "p90_ms"} <= set(timing["total"])
    packed = np.fromfile(out / "labels" / "000000.label", dtype=np.uint32)
    n = (seq08 / "velodyne" / "000000.bin").stat().st_size // 16
    assert packed.shape == (n,)
    cls, sp = packed & 0xFFFF, packed >> 16
    assert cls.max() <= 19 and (cls > 0).any()
    assert (sp[cls > 0] > 0).all()  # every labelled point belongs to a superpoint
    npz = np.load(out / "frames" / "000000.npz")
    assert npz["confidence"].shape == (n,) and npz["visible"].dtype == bool


def test_eval_reports_the_documented_metrics(labelled_run, seq08, tmp_path):
    from eval_reference import eval_json, reference_scores

    m, printed = eval_json(labelled_run, seq08, tmp_path)
    assert m["frames"] == 3
    # The same numbers from class names alone (eval_reference.py): a wrong id table, a wrong front view or
    # a ceiling taken from the predictions instead of the superpoints would all miss them.
    ref = reference_scores(labelled_run, seq08)
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
        assert printed[key] == f"{100 * value:.2f}", key
    assert 0.5 < m["ceiling_miou_front"] < 1  # geometry alone: superpoints are mostly, not all, class-pure
    assert m["miou_all"] < m["miou_front"]  # points outside the camera are all misses
    # The random CLIP's crops: one per valid superpoint whose points have a majority class, near chance.
    crops = m["crops"]
    valid = sum(int(np.load(labelled_run / "frames" / f"{i:06d}.npz")["instance_valid"].sum()) for i in range(3))
    assert 0.8 * valid < crops["count"] <= valid and abs(crops["kappa"]) < 0.2


def test_render_writes_a_png(labelled_run, seq08):
    from PIL import Image

    from partlift_ros.io.kitti import KittiSequenceReader
    from partlift_ros.io.writers import read_run_classes, read_run_labels
    from partlift_ros.render_run import render_labels

    r = invoke("render", labelled_run, seq08, "--frame", "1")
    assert r.exit_code == 0, r.output
    png = np.asarray(Image.open(labelled_run / "render" / "000001.png").convert("RGB"))
    # The picture of frame 1 (not another frame's, not another run's labels).
    label, _ = read_run_labels(labelled_run, 1)
    frame = KittiSequenceReader(seq08).read(1)
    expected = render_labels(frame, label, read_run_classes(labelled_run), f"labels of {labelled_run.name}, frame 1")
    np.testing.assert_array_equal(png, expected.image)
    assert png.shape[1] == 1226 and len(expected.legend) >= 2


def test_rerun_resumes_and_skips_finished_frames(labelled_run, seq08, tiny_clip_dir):
    before = {p.name: p.stat().st_mtime_ns for p in (labelled_run / "labels").iterdir()}
    (labelled_run / "labels" / "000001.label").unlink()  # as if the run died before finishing frame 1
    r = invoke("label", seq08, "--out", labelled_run, "--clip-model", tiny_clip_dir, "--frames", "0:3")
    assert r.exit_code == 0, r.output
    after = {p.name: p.stat().st_mtime_ns for p in (labelled_run / "labels").iterdir()}
    assert set(after) == set(before)
    assert after["000000.label"] == before["000000.label"]  # untouched
    assert after["000002.label"] == before["000002.label"]
    assert after["000001.label"] > before["000001.label"]  # redone


def test_disk_full_mid_run_leaves_no_partial_files_and_resumes_to_the_same_bytes(tmp_path, seq08, tiny_clip_dir,
                                                                                 monkeypatch):
    """The disk fills up while frame 1's .label is being moved into place (its temp file is written):
    the run stops, frame 1 is not done, no temp file remains; the resumed run then writes frame 1 exactly
    as an uninterrupted run does. Affinity is off: with it on, a resumed frame is refined without the
    frames labelled before the crash, so its labels may differ (see the report of issue 11)."""
    import errno
    import os

    from partlift_ros.io.writers import read_run_frame

    real_replace = os.replace

    def disk_full_on_frame_1_label(src, dst, *a, **k):
        if str(dst).endswith(os.path.join("labels", "000001.label")):
            assert os.path.getsize(src) > 0  # the temp file exists and holds the data
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *a, **k)

    args = ("--clip-model", tiny_clip_dir, "--frames", "0:2", "--affinity", "off")
    out = tmp_path / "run"
    monkeypatch.setattr(os, "replace", disk_full_on_frame_1_label)
    r = invoke("label", seq08, "--out", out, *args)
    monkeypatch.setattr(os, "replace", real_replace)
    assert isinstance(r.exception, OSError) and r.exception.errno == errno.ENOSPC
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["000000.label"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    r = invoke("label", seq08, "--out", out, *args)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["000000.label", "000001.label"]

    # Frames are independent with affinity off, so frame 1 of a run of frame 1 alone is the reference.
    whole = tmp_path / "uninterrupted"
    r = invoke("label", seq08, "--out", whole, "--clip-model", tiny_clip_dir, "--frames", "1:2", "--affinity", "off")
    assert r.exit_code == 0, r.output
    name = "000001.label"
    assert (out / "labels" / name).read_bytes() == (whole / "labels" / name).read_bytes()
    resumed, straight = read_run_frame(out, 1), read_run_frame(whole, 1)
    assert resumed.keys() == straight.keys()
    for key in resumed.keys() - {"chunk"}:  # the chunk record is the invocation's range: 0..1 against 1..1
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    assert (np.frombuffer((out / "labels" / "000001.label").read_bytes(), "<u4") & 0xFFFF).any()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--classes", "car,car"), "duplicate"),
        (("--frames", "x:y"), "--frames"),
        (("--affinity", "sideways"), "affinity.mode"),
    ],
)
def test_bad_options_give_specific_errors(tmp_path, seq08, tiny_clip_dir, args, message):
    r = invoke("label", seq08, "--out", tmp_path / "o", "--clip-model", tiny_clip_dir, *args)
    assert r.exit_code == 2
    assert message in text(r)
    assert not (tmp_path / "o" / "labels").exists()


def test_label_rejects_a_folder_that_is_not_a_source(tmp_path):
    (tmp_path / "junk").mkdir()
    r = invoke("label", tmp_path / "junk", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "not a SemanticKITTI sequence folder" in text(r)


def test_label_rejects_a_clip_folder_that_is_not_clip(tmp_path, seq08):
    bad = tmp_path / "notclip"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    r = invoke("label", seq08, "--out", tmp_path / "o", "--clip-model", bad, "--frames", "0:1")
    assert r.exit_code == 2
    assert "CLIP" in text(r)
    assert not (tmp_path / "o" / "labels").exists() or not list((tmp_path / "o" / "labels").iterdir())


def demo_summary(out):
    """demo.json and each picture as an array."""
    from PIL import Image

    summary = json.loads((out / "demo.json").read_text())
    images = [np.asarray(Image.open(out / p["png"]).convert("RGB")) for p in summary["pictures"]]
    return summary, images


def check_demo_pictures(summary, images, first_title_starts):
    from partlift_ros.demo import GT_CAPTION

    assert len(images) == 2
    for picture, image in zip(summary["pictures"], images):
        boxes = picture["boxes"]
        titles = [k.split(" / ")[0] for k in boxes]
        assert titles[0].startswith(first_title_starts) and titles[1] == GT_CAPTION, titles
        # One camera, so one overlay per panel, as large as the image.
        (gt_box,) = [b for k, b in boxes.items() if k.startswith(f"{GT_CAPTION} / ")]
        x0, y0, x1, y1 = gt_box
        assert (x1 - x0, y1 - y0) == (1226, 370)
        # The bird's-eye view is as wide as the picture and its points reach the panel's edges.
        bev = next(b for k, b in boxes.items() if k.startswith("bird's-eye view"))
        assert bev[2] - bev[0] == image.shape[1] and bev[3] == image.shape[0]
        rows, cols = np.nonzero(image[bev[1]:bev[3], bev[0]:bev[2]].any(axis=2))
        assert max((cols.max() - cols.min()) / (bev[2] - bev[0]), (rows.max() - rows.min()) / (bev[3] - bev[1])) > 0.95
        assert {"road", "car", "building", "vegetation"} <= set(picture["legend"])


def test_demo_without_weights_reports_geometry_only(tmp_path, tokenizer_dir):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    r = invoke("demo", "--out", tmp_path / "demo", "--clip-model", empty)
    assert r.exit_code == 0, r.output
    summary, images = demo_summary(tmp_path / "demo")
    ceiling = 100 * summary["metrics"]["ceiling_miou_front"]
    assert "No labels" in text(r) and f"front view) {ceiling:.2f}" in text(r)
    assert 60 < ceiling < 95 and summary["metrics"]["superpoints_per_frame_median"] == 300
    assert not summary["labelled"] and not (tmp_path / "demo" / "labels_run").exists()
    check_demo_pictures(summary, images, "300 superpoints")


def test_demo_with_untrained_clip_says_its_output_is_not_labels(tmp_path, tiny_clip_dir):
    """The tiny CLIP has random weights: its crop classes agree with the ground truth at chance level,
    so the demo says so and never presents its output as labels."""
    r = invoke("demo", "--out", tmp_path / "demo", "--clip-model", tiny_clip_dir)
    assert r.exit_code == 0, r.output
    summary, images = demo_summary(tmp_path / "demo")
    crops = summary["metrics"]["crops"]
    assert summary["labelled"] and not summary["trusted"]
    assert crops["count"] > 100 and abs(crops["kappa"]) < 0.2 and abs(crops["accuracy"] - crops["chance"]) < 0.1
    out = text(r)
    assert "These are not labels" in out and "chance" in out and "labels come from CLIP" not in out
    assert f"{100 * crops['accuracy']:.1f} % right on {crops['count']} crops, {100 * crops['chance']:.1f} % by chance" in out
    assert "mIoU front view" not in out and "pseudo-label accuracy" not in out  # nothing is scored as labels
    assert sorted(p.name for p in (tmp_path / "demo").glob("*.png")) == ["clip_output_000000.png", "clip_output_000001.png"]
    check_demo_pictures(summary, images, "CLIP output, NOT labels")


def test_crops_beyond_chance_needs_kappa_above_the_threshold():
    from partlift_ros.demo import MIN_CROP_KAPPA, crops_beyond_chance

    def crops(kappa, count=200):
        return {"crops": {"count": count, "accuracy": 0.5, "chance": 0.3, "kappa": kappa}}

    assert crops_beyond_chance(crops(MIN_CROP_KAPPA + 0.01))
    assert not crops_beyond_chance(crops(MIN_CROP_KAPPA - 0.01))
    assert not crops_beyond_chance(crops(0.9, count=0)) and not crops_beyond_chance({"crops": None})
