"""The offline labelling job behind ``partlift label``: a reader, the pipeline, the writers.

Resumable: frames whose outputs exist are skipped, everything is written atomically, and the
resolved config, class list, text embeddings and source description sit beside the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .config import PipelineConfig, atomic_write_bytes, atomic_write_text
from .types import IGNORE, Frame, InputError, LabelledCloud


@dataclass
class SourceSpec:
    """Where the frames of a run come from; written to OUT/source.yaml so later jobs find the points."""

    kind: str  # "kitti" | "rosbag"
    path: str
    points_topic: str | None = None
    # Bags with several cameras: a list of image topics (and CameraInfo topics in the same order, or None
    # for each image topic's namespace); see io/rosbag_reader.py for how a cloud pairs with them.
    image_topic: str | list[str] | None = None
    camera_info_topic: str | list[str] | None = None
    slop: float = 0.05
    # SemanticKITTI folders: the colour cameras to read (2 = image_2 with P2, 3 = image_3 with P3).
    cameras: list[int] | None = None
    # How the points are read (config ``points.intensity_scale``); kept here so later jobs read them the same way.
    intensity_scale: str = "auto"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def detect_source(
    path: str | Path, cameras: list[int] | None = None, intensity_scale: str = "auto", **bag_options
) -> SourceSpec:
    """A SemanticKITTI sequence folder or a rosbag2 (.mcap, .db3 or a bag folder)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"source not found: {p}")
    if p.is_dir() and (p / "velodyne").is_dir():
        return SourceSpec("kitti", str(p.resolve()), cameras=cameras, intensity_scale=str(intensity_scale))
    if p.suffix in (".mcap", ".db3") or (p.is_dir() and (p / "metadata.yaml").is_file()):
        if cameras is not None:
            raise InputError("--cameras picks KITTI cameras; for a bag give one --image-topic per camera")
        return SourceSpec("rosbag", str(p.resolve()), intensity_scale=str(intensity_scale), **bag_options)
    raise InputError(
        f"{p}: not a SemanticKITTI sequence folder (needs velodyne/, image_2/, calib.txt) "
        "nor a rosbag2 (.mcap, .db3 or a folder with metadata.yaml)"
    )


def parse_frame_range(text: str | None) -> slice | None:
    """'A:B' (B exclusive), 'A:' or ':B' -> slice over frame numbers."""
    if not text:
        return None
    if ":" not in text:
        raise InputError(f"--frames expects A:B, got {text!r}")
    a, b = text.split(":", 1)
    try:
        return slice(int(a) if a else None, int(b) if b else None)
    except ValueError as exc:
        raise InputError(f"--frames expects integers A:B, got {text!r}") from exc


def open_source(spec: SourceSpec, frames: slice | None = None) -> tuple[list[int], Callable[[int], Frame]]:
    """Frame numbers of a SemanticKITTI source within ``frames`` (a range of numbers) and a reader by number."""
    if spec.kind != "kitti":
        raise InputError(f"random access needs a SemanticKITTI folder; {spec.path} is a {spec.kind}")
    from .io.kitti import KittiSequenceReader

    reader = KittiSequenceReader(spec.path, cameras=spec.cameras or (2,), intensity_scale=spec.intensity_scale)
    position = {index: pos for pos, index in enumerate(reader.frame_indices)}
    return _in_range(reader.frame_indices, frames), lambda index: reader.read(position[index])


def iter_source(
    spec: SourceSpec, frames: slice | None, skip: Callable[[int], bool]
) -> Iterator[tuple[int, Frame | InputError]]:
    """(number, frame) of the source within ``frames``, except those ``skip`` accepts; read lazily, in order.

    A frame that cannot be read comes as (number, the InputError) so the caller can report it and go on.
    """
    if spec.kind == "kitti":
        indices, read = open_source(spec, frames)
        for index in indices:
            if not skip(index):
                try:
                    yield index, read(index)
                except InputError as exc:
                    yield index, exc
        return
    from .io.rosbag_reader import RosbagReader

    reader = RosbagReader(
        spec.path, points_topic=spec.points_topic, image_topic=spec.image_topic,
        camera_info_topic=spec.camera_info_topic, slop=spec.slop, intensity_scale=spec.intensity_scale,
    )
    # Bag frames are numbered in pairing order, so a resumed run skips the same frames.
    for frame in reader:
        if _in_range([frame.index], frames) and not skip(frame.index):
            yield frame.index, frame


def _in_range(indices: list[int], frames: slice | None) -> list[int]:
    if frames is None:
        return list(indices)
    lo = -np.inf if frames.start is None else frames.start
    hi = np.inf if frames.stop is None else frames.stop
    return [i for i in indices if lo <= i < hi]


def seen_labels_for(labels_dir: Path, index: int, n_points: int, classes: list[str], unseen: list[str]) -> np.ndarray:
    """Run class ids of the seen classes from the ground truth (zero-shot setting); unseen and unlabelled -> IGNORE."""
    from .semantickitti import read_train_ids, train_to_run_ids

    train = read_train_ids(labels_dir / f"{index:06d}.label", n_points)
    return train_to_run_ids(train, classes, only=[c for c in classes if c not in unseen])


@dataclass
class JobSummary:
    frames_total: int = 0
    frames_done: int = 0
    frames_skipped: int = 0
    frames_failed: list[tuple[int, str]] = field(default_factory=list)
    points_labelled: int = 0
    points_total: int = 0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def run_label_job(
    pipeline,
    spec: SourceSpec,
    out_dir: Path,
    frames: slice | None = None,
    seen_labels_dir: Path | None = None,
    bag_out: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> JobSummary:
    """Label every frame of ``spec`` into ``out_dir``; frames already written are skipped."""
    from .io.writers import LabelRunWriter

    cfg: PipelineConfig = pipeline.cfg
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    # Load CLIP (and fail on a bad model) before anything is written.
    text_embeddings = pipeline.text_embeddings()
    writer = LabelRunWriter(out_dir, cfg.classes, cfg)
    atomic_write_text(out_dir / "source.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    summary = JobSummary()

    def skip(index: int) -> bool:
        summary.frames_total += 1
        if writer.done(index):
            summary.frames_skipped += 1
            return True
        return False

    if not (out_dir / "text_embeddings.npy").is_file():
        _save_npy(out_dir / "text_embeddings.npy", text_embeddings)
    bag = None
    if bag_out is not None:
        from .io.bag_writer import LabelledBagWriter

        bag = LabelledBagWriter(bag_out)

    def emit(results: list[LabelledCloud]) -> None:
        for lc in results:
            writer.write(lc)
            if bag is not None:
                bag.write(lc)
            summary.frames_done += 1
            summary.points_total += lc.num_points
            summary.points_labelled += int((lc.label != IGNORE).sum())
            for k, v in lc.timings_ms.items():
                summary.stage_ms.setdefault(k, []).append(v)
            if on_progress:
                on_progress(summary.frames_skipped + summary.frames_done, summary.frames_total)

    try:
        for frame in _frames(iter_source(spec, frames, skip), seen_labels_dir, cfg, summary):
            try:
                results = pipeline.process(frame)
            except InputError as exc:
                summary.frames_failed.append((frame.index, str(exc)))
                continue
            emit(results)
        emit(pipeline.flush())
    except BaseException:
        if bag is not None:
            bag.abort()  # never leave a half-written bag under the real name
        raise
    if bag is not None:
        bag.close()
    writer.write_timing(summary.stage_ms)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _frames(items: Iterator[tuple[int, Frame | InputError]], seen_labels_dir, cfg, summary) -> Iterator[Frame]:
    for index, frame in items:
        try:
            if isinstance(frame, InputError):
                raise frame
            if seen_labels_dir is not None:
                frame.seen_labels = seen_labels_for(
                    Path(seen_labels_dir), frame.index, frame.points.shape[0], cfg.classes, cfg.unseen_classes
                )
        except InputError as exc:
            # A bad frame is reported and skipped; the rest of the run goes on.
            summary.frames_failed.append((index, str(exc)))
            continue
        yield frame


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
