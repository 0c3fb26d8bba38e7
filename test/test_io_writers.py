"""Run folders: SemanticKITTI-style label encoding, atomic writes, resume rules, timing summary."""

import json
import os

import numpy as np
import pytest
import yaml

from partlift_ros.config import PipelineConfig
from partlift_ros.io.writers import (
    LabelRunWriter, decode_labels, encode_labels, label_path, read_run_classes, read_run_frame,
    read_run_labels, timing_summary,
)
from partlift_ros.types import IGNORE, CameraView, Frame, InputError, LabelledCloud

CLASSES = ["car", "road", "vegetation"]


def labelled(index=4, n=50, m=6, seed=0):
    rng = np.random.default_rng(seed)
    frame = Frame(
        points=rng.normal(size=(n, 4)).astype(np.float32),
        cameras=[CameraView(np.zeros((4, 4, 3), np.uint8), np.eye(3), np.eye(4))],
        stamp=12.5, index=index,
    )
    label = rng.integers(-1, len(CLASSES), n).astype(np.int32)
    instance = rng.integers(-1, m, n).astype(np.int32)
    scores = rng.random((m, len(CLASSES))).astype(np.float32)
    return LabelledCloud(
        frame=frame, class_names=list(CLASSES), label=label,
        confidence=np.where(label >= 0, rng.random(n), 0).astype(np.float32),
        instance=instance, visible=rng.random(n) > 0.5,
        instance_scores=scores, instance_refined=scores[::-1].copy(),
        instance_features=rng.normal(size=(m, 8)).astype(np.float32),
        instance_valid=np.arange(m) % 2 == 0,
        instance_boxes=rng.integers(0, 100, (m, 4)).astype(np.int32),
        timings_ms={"clip": 10.0 + seed, "clustering": 2.0},
    )


def test_label_encoding_matches_semantickitti_layout():
    packed = encode_labels(np.array([IGNORE, 0, 2, 5]), np.array([3, IGNORE, 0, 65533]))
    assert packed.dtype == np.uint32
    assert (packed & 0xFFFF).tolist() == [0, 1, 3, 6]  # class id + 1, 0 = ignore
    assert (packed >> 16).tolist() == [4, 0, 1, 65534]  # superpoint id + 1, 0 = none
    cls, sp = decode_labels(packed)
    assert cls.tolist() == [IGNORE, 0, 2, 5] and sp.tolist() == [3, IGNORE, 0, 65533]
    with pytest.raises(InputError, match="superpoint ids"):
        encode_labels(np.array([0]), np.array([70000]))
    with pytest.raises(InputError, match="class ids"):
        encode_labels(np.array([-2]), np.array([0]))


def test_write_then_read_back_every_array(tmp_path):
    lc = labelled()
    writer = LabelRunWriter(tmp_path / "run", CLASSES, PipelineConfig())
    assert not writer.done(4)
    writer.write(lc)
    assert writer.done(4)
    cls, sp = read_run_labels(tmp_path / "run", 4)
    np.testing.assert_array_equal(cls, lc.label)
    np.testing.assert_array_equal(sp, lc.instance)
    assert cls.dtype == np.int32 and sp.dtype == np.int32
    arrays = read_run_frame(tmp_path / "run", 4)
    for name in ("confidence", "visible", "instance", "instance_scores", "instance_refined",
                 "instance_features", "instance_valid", "instance_boxes"):
        np.testing.assert_array_equal(arrays[name], getattr(lc, name), err_msg=name)
    assert float(arrays["stamp"]) == 12.5
    assert read_run_classes(tmp_path / "run") == CLASSES
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["classes"] == PipelineConfig().classes and "clustering" in cfg
    # the .label file is what SemanticKITTI tools read: plain little-endian uint32, one per point
    assert label_path(tmp_path / "run", 4).stat().st_size == 4 * lc.num_points
    assert not [p for p in (tmp_path / "run").rglob("*.tmp")]  # no temp files left behind


def test_opening_a_written_run_writes_frames_and_leaves_its_metadata_alone(tmp_path):
    LabelRunWriter(tmp_path / "run", CLASSES, PipelineConfig())
    before = {f: (tmp_path / "run" / f).stat().st_mtime_ns for f in ("classes.yaml", "config.yaml")}
    writer = LabelRunWriter.open(tmp_path / "run", CLASSES)
    writer.write(labelled())
    assert writer.done(4)
    assert {f: (tmp_path / "run" / f).stat().st_mtime_ns for f in before} == before
    with pytest.raises(InputError, match="holds a run with classes"):
        LabelRunWriter.open(tmp_path / "run", CLASSES[:-1])
    with pytest.raises(InputError, match="no classes.yaml"):
        LabelRunWriter.open(tmp_path / "empty", CLASSES)


def test_done_needs_both_files(tmp_path):
    writer = LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    writer.write(labelled(index=7))
    os.unlink(tmp_path / "frames" / "000007.npz")
    assert not writer.done(7)  # a half-finished frame is redone
    writer.write(labelled(index=7))
    os.unlink(tmp_path / "labels" / "000007.label")
    assert not writer.done(7)


def test_failed_write_leaves_no_label_and_no_partial_file(tmp_path, monkeypatch):
    writer = LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    import partlift_ros.io.writers as w

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(w.np, "savez_compressed", boom)  # dies while building the .npz, before any file
    with pytest.raises(OSError):
        writer.write(labelled(index=1))
    assert not writer.done(1)
    assert not (tmp_path / "labels" / "000001.label").exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]


class _DiskFillsUp:
    """A file object from os.fdopen whose write stores half the bytes, then fails as a full disk does."""

    def __init__(self, fh, written: list):
        self.fh, self.written = fh, written

    def write(self, data):
        import errno

        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        self.written.append(os.fstat(self.fh.fileno()).st_size)
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["npz", "label"])
def test_disk_full_inside_the_real_write_leaves_no_partial_file(tmp_path, monkeypatch, target):
    """The temp file exists and holds part of the data when the disk fills up: it is removed, the frame is
    not done, and a file the failed write would have replaced keeps its bytes."""
    from partlift_ros.io.writers import frame_path

    writer = LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    writer.write(labelled(index=3, seed=1))
    path_of = {"npz": frame_path, "label": label_path}[target]
    before = _files(tmp_path)
    real_fdopen, partial = os.fdopen, []

    def fdopen(fd, *a, **k):
        fh = real_fdopen(fd, *a, **k)
        failing = os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and f".{target}." in os.readlink(f"/proc/self/fd/{fd}")
        return _DiskFillsUp(fh, partial) if failing else fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    for index in (5, 3):  # a new frame, and over a finished one
        with pytest.raises(OSError, match="No space left"):
            writer.write(labelled(index=index, seed=2))
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert len(partial) == 2 and min(partial) > 0  # the failure came after bytes reached the temp file
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not writer.done(5) and not path_of(tmp_path, 5).exists()
    assert path_of(tmp_path, 3).read_bytes() == before[path_of(tmp_path, 3).relative_to(tmp_path)]
    # The .label goes last, so a failed .npz leaves nothing of frame 5 at all.
    if target == "npz":
        assert _files(tmp_path) == before


def test_rename_refused_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    writer = LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    before = _files(tmp_path)
    real_replace = os.replace

    def refuse(src, dst, *a, **k):
        assert os.path.getsize(src) > 0
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        writer.write(labelled(index=2))
    monkeypatch.setattr(os, "replace", real_replace)
    assert _files(tmp_path) == before and not writer.done(2)


def test_resume_with_same_classes_keeps_done_frames(tmp_path):
    LabelRunWriter(tmp_path, CLASSES, PipelineConfig()).write(labelled(index=2))
    again = LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    assert again.done(2) and not again.done(3)


def test_resume_with_other_classes_is_refused(tmp_path):
    LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    with pytest.raises(InputError, match="different classes"):
        LabelRunWriter(tmp_path, ["car", "road"], PipelineConfig())
    assert read_run_classes(tmp_path) == CLASSES  # the old run is left alone


def test_write_rejects_mismatched_frames(tmp_path):
    writer = LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    lc = labelled()
    lc.class_names = ["a", "b", "c"]
    with pytest.raises(InputError, match="labelled with classes"):
        writer.write(lc)
    lc = labelled()
    lc.confidence = lc.confidence[:-1]
    with pytest.raises(InputError, match="confidence has 49 values for 50 points"):
        writer.write(lc)


def test_timing_json_has_median_and_p90(tmp_path):
    writer = LabelRunWriter(tmp_path, CLASSES, PipelineConfig())
    for seed in range(11):  # clip: 10..20 ms
        writer.write(labelled(index=seed, seed=seed))
    data = json.loads(writer.write_timing().read_text())
    assert data["clip"]["median_ms"] == pytest.approx(15.0)
    assert data["clip"]["p90_ms"] == pytest.approx(19.0)
    assert data["clustering"]["frames"] == 11
    assert timing_summary({"a": [1.0, 3.0]})["a"]["median_ms"] == 2.0


def test_readers_report_missing_files(tmp_path):
    with pytest.raises(InputError, match="no classes.yaml"):
        read_run_classes(tmp_path)
    with pytest.raises(InputError, match="label file not found"):
        read_run_labels(tmp_path, 0)
    with pytest.raises(InputError, match="frame file not found"):
        read_run_frame(tmp_path, 0)
