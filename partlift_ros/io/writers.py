"""Result folders of a labelling run, and readers for them.

Layout of ``OUT``::

    labels/NNNNNN.label  uint32 per point (SemanticKITTI style): low 16 bits = class id + 1
                         (1-based into classes.yaml, 0 = ignore), high 16 bits = superpoint id + 1 (0 = none)
    frames/NNNNNN.npz    per point: confidence, visible, instance; per instance: instance_scores,
                         instance_refined, instance_features, instance_valid, instance_boxes; stamp, index;
                         labelling job records (label_chunks.py): chunk (first, last frame of the frames
                         labelled together), block (the frames whose instances were refined together)
    classes.yaml         the run's class list (the meaning of the label ids)
    config.yaml          the resolved PipelineConfig
    timing.json          per-stage median / p90 milliseconds

Every file is written atomically (temp file + rename) and the ``.label`` of a frame is written after
its ``.npz``, so a frame is complete exactly when both exist: a re-run skips it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from ..config import PipelineConfig, atomic_write_bytes, atomic_write_text, dump_config
from ..types import IGNORE, InputError, LabelledCloud

LABEL_FORMAT = "uint32: low16 = class id + 1 (0 = ignore), high16 = superpoint id + 1 (0 = none)"
MAX_ID = 0xFFFE  # ids are stored +1 in 16 bits
FRAME_ARRAYS = (
    "confidence", "visible", "instance", "instance_scores", "instance_refined",
    "instance_features", "instance_valid", "instance_boxes",
)


def label_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / "labels" / f"{index:06d}.label"


def frame_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / "frames" / f"{index:06d}.npz"


def encode_labels(label: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """Per-point class ids and superpoint ids (0-based, IGNORE = -1) -> packed uint32."""
    label = np.asarray(label, dtype=np.int64)
    instance = np.asarray(instance, dtype=np.int64)
    if label.shape != instance.shape or label.ndim != 1:
        raise InputError(f"labels {label.shape} and instances {instance.shape} must be two (N,) arrays")
    for name, ids in (("class", label), ("superpoint", instance)):
        if ids.size and (ids.min() < IGNORE or ids.max() > MAX_ID):
            raise InputError(f"{name} ids must lie in [-1, {MAX_ID}], got [{ids.min()}, {ids.max()}]")
    low = (label + 1).astype(np.uint32)
    high = (instance + 1).astype(np.uint32)
    return low | (high << np.uint32(16))


def decode_labels(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed uint32 -> (class ids, superpoint ids), int32, 0-based with IGNORE = -1."""
    packed = np.asarray(packed, dtype=np.uint32)
    class_ids = (packed & np.uint32(0xFFFF)).astype(np.int32) - 1
    superpoints = (packed >> np.uint32(16)).astype(np.int32) - 1
    return class_ids, superpoints


def timing_summary(stats: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]]) -> dict[str, dict]:
    """Per-stage median / p90 / mean ms from {stage: [ms per frame]} or [{stage: ms} per frame]."""
    if isinstance(stats, Mapping):
        per_stage = {k: list(v) for k, v in stats.items()}
    else:
        per_stage = {}
        for frame_times in stats:
            for stage, ms in frame_times.items():
                per_stage.setdefault(stage, []).append(ms)
    out = {}
    for stage, values in per_stage.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            continue
        out[stage] = {
            "median_ms": float(np.median(arr)),
            "p90_ms": float(np.percentile(arr, 90)),
            "mean_ms": float(arr.mean()),
            "frames": int(arr.size),
        }
    return out


class LabelRunWriter:
    """Writes one labelling run into ``out_dir``; can resume a run with the same class list."""

    def __init__(self, out_dir: str | Path, class_names: Sequence[str], config: PipelineConfig) -> None:
        self.out_dir = Path(out_dir)
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise InputError("LabelRunWriter: the class list is empty")
        if len(self.class_names) > MAX_ID + 1:
            raise InputError(f"LabelRunWriter: {len(self.class_names)} classes do not fit in 16 bits")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"output path exists and is not a folder: {self.out_dir}")
        classes_file = self.out_dir / "classes.yaml"
        if classes_file.is_file():
            existing = read_run_classes(self.out_dir)
            if existing != self.class_names:
                raise InputError(
                    f"{self.out_dir} holds a run with different classes ({classes_file}: {existing}); "
                    f"this run has {self.class_names}. Use another output folder."
                )
        (self.out_dir / "labels").mkdir(parents=True, exist_ok=True)
        (self.out_dir / "frames").mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            classes_file, yaml.safe_dump({"classes": self.class_names, "label_format": LABEL_FORMAT}, sort_keys=False)
        )
        dump_config(config, self.out_dir / "config.yaml")
        self.timings: list[dict[str, float]] = []

    @classmethod
    def open(cls, out_dir: str | Path, class_names: Sequence[str]) -> "LabelRunWriter":
        """A writer for the frames of a run whose metadata is written already (``classes.yaml`` with these
        classes): nothing in the run's root is rewritten, so chunk workers never race on it."""
        writer = cls.__new__(cls)
        writer.out_dir, writer.class_names, writer.timings = Path(out_dir), [str(c) for c in class_names], []
        existing = read_run_classes(writer.out_dir)
        if existing != writer.class_names:
            raise InputError(f"{writer.out_dir} holds a run with classes {existing}, not {writer.class_names}")
        return writer

    def done(self, index: int) -> bool:
        """True when frame ``index`` was completely written (both files exist)."""
        return self.frame_done(self.out_dir, index)

    @staticmethod
    def frame_done(out_dir: str | Path, index: int) -> bool:
        """``done`` for the run in ``out_dir``, without opening it for writing."""
        return label_path(out_dir, index).is_file() and frame_path(out_dir, index).is_file()

    def write(
        self, labelled: LabelledCloud, index: int | None = None, records: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Write one frame's results (``index`` defaults to ``labelled.frame.index``); ``records``: extra
        arrays for the ``.npz`` (the labelling job's chunk and block)."""
        index = labelled.frame.index if index is None else int(index)
        if list(labelled.class_names) != self.class_names:
            raise InputError(f"frame {index}: labelled with classes {labelled.class_names}, run has {self.class_names}")
        n = labelled.num_points
        for name in ("confidence", "visible", "instance"):
            if len(getattr(labelled, name)) != n:
                raise InputError(f"frame {index}: {name} has {len(getattr(labelled, name))} values for {n} points")
        packed = encode_labels(labelled.label, labelled.instance)
        arrays = {name: np.asarray(getattr(labelled, name)) for name in FRAME_ARRAYS}
        arrays["stamp"] = np.float64(labelled.frame.stamp)
        arrays["index"] = np.int64(index)
        for name, value in (records or {}).items():
            if name in arrays:
                raise InputError(f"frame {index}: record {name!r} would replace a result array")
            arrays[name] = np.asarray(value)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(frame_path(self.out_dir, index), buf.getvalue())
        # The .label goes last: its presence marks the frame as done.
        atomic_write_bytes(label_path(self.out_dir, index), packed.astype("<u4").tobytes())
        if labelled.timings_ms:
            self.timings.append(dict(labelled.timings_ms))

    def write_timing(self, stats: Mapping[str, Sequence[float]] | Sequence[Mapping[str, float]] | None = None) -> Path:
        """Write ``timing.json`` from ``stats`` or, by default, the timings of the frames written so far."""
        summary = timing_summary(self.timings if stats is None else stats)
        path = self.out_dir / "timing.json"
        atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
        return path


def read_run_classes(out_dir: str | Path) -> list[str]:
    path = Path(out_dir) / "classes.yaml"
    if not path.is_file():
        raise InputError(f"not a labelling run folder (no classes.yaml): {Path(out_dir)}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise InputError(f"{path}: expected a mapping with a 'classes' list")
    return [str(c) for c in data["classes"]]


def read_run_labels(out_dir: str | Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids, superpoint ids) of frame ``index``: int32, 0-based, IGNORE = -1."""
    path = label_path(out_dir, index)
    if not path.is_file():
        raise InputError(f"label file not found: {path}")
    if path.stat().st_size % 4:
        raise InputError(f"{path}: size is not a multiple of 4 bytes (uint32 per point)")
    return decode_labels(np.fromfile(path, dtype="<u4"))


def read_run_frame(out_dir: str | Path, index: int) -> dict[str, np.ndarray]:
    """All arrays of ``frames/NNNNNN.npz`` for frame ``index``."""
    path = frame_path(out_dir, index)
    if not path.is_file():
        raise InputError(f"frame file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def read_frame_arrays(out_dir: str | Path, index: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Only the named arrays of ``frames/NNNNNN.npz`` (the others are not decompressed); absent names are left out."""
    path = frame_path(out_dir, index)
    if not path.is_file():
        raise InputError(f"frame file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in names if k in data.files}


def read_labelled_cloud(out_dir: str | Path, frame, class_names: Sequence[str]) -> LabelledCloud:
    """The results of ``frame`` (its source Frame) as written in a run: what the labelled bag is made from."""
    label, instance = read_run_labels(out_dir, frame.index)
    if label.shape[0] != frame.points.shape[0]:
        raise InputError(f"frame {frame.index}: run has {label.shape[0]} labels, the source {frame.points.shape[0]} points")
    arrays = read_run_frame(out_dir, frame.index)
    return LabelledCloud(
        frame=frame, class_names=list(class_names), label=label, confidence=arrays["confidence"], instance=instance,
        visible=arrays["visible"], instance_scores=arrays["instance_scores"],
        instance_refined=arrays["instance_refined"], instance_features=arrays["instance_features"],
        instance_valid=arrays["instance_valid"], instance_boxes=arrays["instance_boxes"],
    )
