"""The labelling job in three steps, so that a caller can check everything before a model loads.

1. ``prepare_label_job``: opens the source (folder listing or the bag's headers, nothing decoded), selects
   ``--frames`` (an empty selection is an error), checks OUT: a new or empty folder starts a run; a run
   whose fingerprint (``run_fingerprint.py``) equals this invocation's is resumed; any difference, an
   older run without a fingerprint or a folder that is not a run is refused unless ``overwrite``
   (never for a folder that is not a run). The CLIP files of a local folder or a cached hub model are
   compared here too. Writes nothing.
2. ``start_label_run``: loads CLIP, compares its files when that was not possible before (a hub id fetched
   now, a model built in code), and writes the run's metadata. A new run is assembled in a temporary
   folder beside OUT and moved into place only then, so a good run is replaced only by one that has
   started correctly.
3. ``execute_label_job``: labels chunk by chunk (``label_chunks.py``), then writes the labelled bag
   (every labelled frame in the range, read back from OUT) when one was asked for.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .config import PipelineConfig, atomic_write_bytes, atomic_write_text, umask
from .label_chunks import ChunkResult, chunk_conflicts, label_chunk, split_chunks
from .label_job import SOURCE_FILE, FrameSource, SourceSpec, frames_in_range, open_frame_source, seen_labels_for
from .run_fingerprint import (
    FINGERPRINT_FILE, clip_files, fingerprint_differences, read_fingerprint, run_fingerprint, write_fingerprint,
)
from .types import InputError

OVERWRITE_HINT = "pass --overwrite to label afresh (the old run is replaced once the new one has started)"


@dataclass
class LabelJob:
    """A labelling job whose inputs were checked without loading any model."""

    cfg: PipelineConfig
    spec: SourceSpec
    out_dir: Path
    source: FrameSource
    indices: list[int]  # frame numbers in the range
    chunks: list[list[int]]
    fingerprint: dict
    previous: dict | None  # the fingerprint of the run being resumed, None for a new run
    done_before: int = 0  # frames in the range already written by an earlier run
    seen_labels_dir: Path | None = None
    bag_out: Path | None = None
    overwrite: bool = False


@dataclass
class JobSummary:
    """Filled as the job goes, so a caller still has the counts when the job is interrupted."""

    frames_total: int = 0  # frames in the range
    frames_done: int = 0  # labelled by this invocation
    frames_skipped: int = 0  # already done by an earlier run (resumed)
    frames_failed: list[tuple[int, str]] = field(default_factory=list)
    frames_read: int = 0  # frames decoded from the source for labelling (context included)
    points_labelled: int = 0
    points_total: int = 0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    skipped_messages: list[str] = field(default_factory=list)  # image messages that could not be read
    warnings: list[str] = field(default_factory=list)  # broken calibration messages skipped
    bag_path: Path | None = None
    bag_frames: int = 0
    seconds: float = 0.0


def prepare_label_job(
    cfg: PipelineConfig,
    spec: SourceSpec,
    out_dir: str | Path,
    frames: slice | None = None,
    seen_labels_dir: str | Path | None = None,
    bag_out: str | Path | None = None,
    overwrite: bool = False,
) -> LabelJob:
    """Check the source, the range, OUT and the bag path (see module doc); raises InputError, writes nothing."""
    from .io.writers import LabelRunWriter

    out_dir = Path(out_dir)
    state = _run_state(out_dir)
    if seen_labels_dir is not None and not Path(seen_labels_dir).is_dir():
        raise InputError(f"--seen-labels: folder not found: {seen_labels_dir}")
    if bag_out is not None:
        from .io.bag_writer import check_bag_output

        if Path(bag_out).exists() and not overwrite:
            raise InputError(f"--write-bag {bag_out} exists already: choose another path, or pass --overwrite to "
                             "replace it (this also labels OUT afresh)")
        bag_out = check_bag_output(bag_out, overwrite)
    source = open_frame_source(spec)
    indices = frames_in_range(source, frames, spec.path)
    fingerprint = run_fingerprint(cfg, spec.to_dict(), None if seen_labels_dir is None else str(seen_labels_dir))
    previous = read_fingerprint(out_dir) if state == "run" and not overwrite else None
    files = clip_files(cfg.clip, (previous or {}).get("clip_files"))
    if any(name.startswith("model/") for name in files):  # a local folder or a cached hub model: check it now
        fingerprint["clip_files"] = files
    if previous is not None:
        diffs = fingerprint_differences(previous, fingerprint)
        if diffs:
            raise InputError(f"{out_dir} holds a run labelled differently:\n  " + "\n  ".join(diffs) +
                             f"\nResume with the same inputs and options, {OVERWRITE_HINT}, or choose another --out")
    elif state == "legacy" and not overwrite:
        raise InputError(f"{out_dir} holds a run without a {FINGERPRINT_FILE} (an older partlift), so what labelled "
                         f"it is unknown; {OVERWRITE_HINT}, or choose another --out")
    elif state == "other":
        raise InputError(f"{out_dir} exists and is not a labelling run (no classes.yaml); choose a new or empty "
                         "folder for --out")
    chunks = split_chunks(indices, cfg.job.chunk_frames)
    job = LabelJob(cfg, spec, out_dir, source, indices, chunks, fingerprint, previous,
                   seen_labels_dir=None if seen_labels_dir is None else Path(seen_labels_dir), bag_out=bag_out,
                   overwrite=overwrite)
    if previous is not None:
        done = {i for i in indices if LabelRunWriter.frame_done(out_dir, i)}
        job.done_before = len(done)
        if cfg.affinity.enabled:
            conflicts = chunk_conflicts(out_dir, chunks, done)
            if conflicts:
                raise InputError(
                    f"{out_dir} was labelled with another --frames range, and frames share affinity context only "
                    f"within a chunk of job.chunk_frames ({cfg.job.chunk_frames}) frames inside the range:\n  " +
                    "\n  ".join(conflicts[:5]) + "\nResume with the same --frames (or bounds on multiples of "
                    f"job.chunk_frames), {OVERWRITE_HINT}, or choose another --out")
    return job


def _run_state(out_dir: Path) -> str:
    """'new' (absent or empty), 'run' (has a fingerprint), 'legacy' (a run without one) or 'other'."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file; choose a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return "new"
    if (out_dir / FINGERPRINT_FILE).is_file():
        return "run"
    return "legacy" if (out_dir / "classes.yaml").is_file() else "other"


def start_label_run(pipeline, job: LabelJob) -> None:
    """Load CLIP, check its files against the run's (resume) and write the run's metadata (see module doc)."""
    from .io.writers import LabelRunWriter

    from .clip_preprocess import torch_threads
    from .label_chunks import job_threads

    cfg = pipeline.cfg
    with torch_threads(cfg.job.threads), job_threads(cfg.job.threads):  # cached for the scores: as an actor does
        text_embeddings = pipeline.text_embeddings()  # loads CLIP: a bad model fails here, before anything is written
    if "clip_files" not in job.fingerprint:  # a hub id fetched just now, or a model built in code
        known = (job.previous or {}).get("clip_files")
        job.fingerprint["clip_files"] = clip_files(cfg.clip, known, model=pipeline.labeler.model)
    job.fingerprint["clip_encoder"] = pipeline.labeler.backend
    if job.previous is not None:
        diffs = fingerprint_differences(job.previous, job.fingerprint)
        if diffs:
            raise InputError(f"{job.out_dir} holds a run labelled by other CLIP files:\n  " + "\n  ".join(diffs) +
                             f"\n{OVERWRITE_HINT[0].upper()}{OVERWRITE_HINT[1:]}, or choose another --out")
        write_fingerprint(job.out_dir, job.fingerprint)  # the same, with the hashes' file times refreshed
        if not (job.out_dir / "text_embeddings.npy").is_file():
            _save_npy(job.out_dir / "text_embeddings.npy", text_embeddings)
        return
    job.out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=job.out_dir.parent, prefix=f".{job.out_dir.name}.new-"))
    try:
        staging.chmod(0o777 & ~umask())  # mkdtemp makes it 0700; OUT gets the user's umask
        LabelRunWriter(staging, cfg.classes, cfg)
        atomic_write_text(staging / SOURCE_FILE, yaml.safe_dump(job.spec.to_dict(), sort_keys=False))
        _save_npy(staging / "text_embeddings.npy", text_embeddings)
        write_fingerprint(staging, job.fingerprint)
        _move_into_place(staging, job.out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (absent, empty or an old run) by ``staging``; the old run is deleted last."""
    if out_dir.exists() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.replaced-"))
        out_dir.rename(old / out_dir.name)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def execute_label_job(
    pipeline, job: LabelJob, summary: JobSummary | None = None, on_progress: Callable[[int, int], None] | None = None
) -> JobSummary:
    """Label the job's chunks into OUT (after ``start_label_run``); ``on_progress(finished, total)`` per frame."""
    from .io.writers import LabelRunWriter

    t_start = time.perf_counter()
    summary = begin_summary(job, summary)
    writer = LabelRunWriter.open(job.out_dir, pipeline.cfg.classes)  # start_label_run wrote the metadata
    finished = [job.done_before]

    def on_frame(index: int, what: str) -> None:
        summary.frames_done += what == "labelled"
        finished[0] += 1
        if on_progress:
            on_progress(finished[0], summary.frames_total)

    for chunk in job.chunks:
        record_chunk(summary, label_chunk(pipeline, job.source, chunk, writer, seen_labels_setter(job), on_frame))
    finish_label_job(job, summary)
    summary.seconds = time.perf_counter() - t_start
    return summary


def begin_summary(job: LabelJob, summary: JobSummary | None = None) -> JobSummary:
    """The job's summary before any chunk: the range, what was done before, messages skipped on opening."""
    summary = summary if summary is not None else JobSummary()
    summary.frames_total, summary.frames_skipped = len(job.indices), job.done_before
    summary.skipped_messages = list(job.source.skipped_images)
    summary.warnings = list(job.source.skipped_calibration)
    return summary


def record_chunk(summary: JobSummary, result: ChunkResult) -> None:
    """Add what one chunk did to the summary (``frames_done`` is counted as frames are written)."""
    summary.frames_failed.extend(result.failed)
    summary.frames_read += result.read
    summary.points_total += result.points_total
    summary.points_labelled += result.points_labelled
    for stage, values in result.stage_ms.items():
        summary.stage_ms.setdefault(stage, []).extend(values)


def finish_label_job(job: LabelJob, summary: JobSummary) -> None:
    """After the last chunk: timing.json (when frames were labelled now) and the labelled bag, if asked for."""
    from .io.writers import LabelRunWriter

    if summary.stage_ms:  # a run resumed with nothing left to do keeps the timing of the run that labelled it
        LabelRunWriter.open(job.out_dir, job.cfg.classes).write_timing(summary.stage_ms)
    if job.bag_out is not None:
        summary.bag_frames = write_run_bag(job, job.cfg.classes)
        summary.bag_path = job.bag_out


def seen_labels_setter(job: LabelJob) -> Callable | None:
    """``prepare_frame`` for ``label_chunk``: attaches the zero-shot seen labels, when the job has them."""
    if job.seen_labels_dir is None:
        return None
    folder, classes, unseen = job.seen_labels_dir, job.cfg.classes, job.cfg.unseen_classes

    def prepare(frame) -> None:
        frame.seen_labels = seen_labels_for(folder, frame.index, frame.points.shape[0], classes, unseen)

    return prepare


def write_run_bag(job: LabelJob, classes: list[str]) -> int:
    """Every labelled frame of the job's range, read back from OUT with its source frame, as a labelled bag."""
    from .io.bag_writer import LabelledBagWriter
    from .io.writers import LabelRunWriter, read_labelled_cloud

    written = [i for i in job.indices if LabelRunWriter.frame_done(job.out_dir, i)]
    with LabelledBagWriter(job.bag_out, overwrite=job.overwrite) as bag:
        for _, frame in job.source.read(written):
            if isinstance(frame, InputError):
                raise frame  # it was read a moment ago: the source changed under the job
            bag.write(read_labelled_cloud(job.out_dir, frame, classes))
    return len(written)


def _save_npy(path: Path, array: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())
