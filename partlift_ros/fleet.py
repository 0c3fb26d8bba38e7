"""Labelling many sources in one job: ``partlift label SOURCE [SOURCE ...] --out OUT [--workers N]``.

One source keeps the layout of a single run (OUT is the run). Several sources (or an OUT that already holds
``fleet.json``) give a *fleet folder*: one run per source in ``OUT/<name>/`` (names: ``fleet_sources.py``)
and ``OUT/fleet.json``, rewritten atomically at the start and at the end of every invocation:

    {"format": 1, "updated": "<ISO time>",
     "sources": [{"name", "path", "kind", "frames", "labelled", "labelled_now", "resumed",
                  "skipped": [{"frame", "reason"}], "skipped_messages", "seconds"}, ...]}

``frames``: frames in the range; ``labelled``: those written (by any invocation); ``skipped``: frames that
could not be labelled now, with the reason; ``seconds``: time spent labelling the source in this invocation
(summed over workers). Every source is checked (``label_run.prepare_label_job``: its range, its run's
fingerprint) before any model loads; a source that fails stops the job before anything is written.

``start_fleet`` loads CLIP and writes each run's metadata; ``label_fleet`` labels the sources in this process (``workers=1``, Ray is not imported) or on a Ray cluster
(``fleet_ray.py``). Either way the chunks and CLIP groups are the same, so the bytes are the same.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import PipelineConfig, atomic_write_text
from .label_run import JobSummary, LabelJob, execute_label_job, prepare_label_job, start_label_run
from .types import InputError

FLEET_FILE = "fleet.json"
FORMAT = 1


@dataclass
class FleetSource:
    name: str  # its folder in a fleet folder
    path: Path
    job: LabelJob
    summary: JobSummary = field(default_factory=JobSummary)


@dataclass
class Fleet:
    out_dir: Path
    is_fleet: bool  # False: one source, OUT is its run
    sources: list[FleetSource]

    @property
    def frames_total(self) -> int:
        return sum(len(s.job.indices) for s in self.sources)

    @property
    def done_before(self) -> int:
        return sum(s.job.done_before for s in self.sources)


def read_fleet_file(out_dir: Path) -> dict:
    """``OUT/fleet.json`` as written by ``write_fleet_file``; an error when it is absent or not one."""
    path = Path(out_dir) / FLEET_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the fleet record ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise InputError(f"{path} is not a fleet record written by partlift label")
    return data


def plan_fleet(
    cfg: PipelineConfig,
    paths: Sequence[Path],
    out_dir: str | Path,
    detect: Callable[[Path], object],
    frames: slice | None = None,
    seen_labels_dir: str | Path | None = None,
    bag_out: str | Path | None = None,
    overwrite: bool = False,
) -> Fleet:
    """Check every source (``detect(path) -> SourceSpec``, then ``prepare_label_job``) without a model; one
    InputError naming every source that failed. Writes nothing."""
    from .fleet_sources import source_names

    out_dir = Path(out_dir)
    is_fleet = len(paths) > 1 or (out_dir / FLEET_FILE).is_file()
    if not is_fleet:
        spec = detect(paths[0])
        job = prepare_label_job(cfg, spec, out_dir, frames, seen_labels_dir, bag_out, overwrite)
        return Fleet(out_dir, False, [FleetSource(out_dir.name, paths[0], job)])
    if bag_out is not None or seen_labels_dir is not None:
        raise InputError("--write-bag and --seen-labels take one source; label several sources without them")
    known = {}
    if (out_dir / FLEET_FILE).is_file():
        known = {s["path"]: s["name"] for s in read_fleet_file(out_dir)["sources"]}
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise InputError(f"--out {out_dir} exists and is not a fleet folder (no {FLEET_FILE}); several sources need "
                         "a new or empty folder")
    names = source_names(paths, known)
    sources, errors = [], []
    for path in paths:
        try:
            job = prepare_label_job(cfg, detect(path), out_dir / names[path], frames, None, None, overwrite)
            sources.append(FleetSource(names[path], path, job))
        except InputError as exc:
            errors.append(f"{path}: {exc}")
    if errors:
        raise InputError(f"{len(errors)} of {len(paths)} sources cannot be labelled (nothing was written):\n  " +
                         "\n  ".join("\n    ".join(e.splitlines()) for e in errors))
    return Fleet(out_dir, True, sources)


def start_fleet(pipeline, fleet: Fleet) -> None:
    """Load CLIP (when a source has frames left) and write each run's metadata, then ``fleet.json``."""
    for s in fleet.sources:
        if len(s.job.indices) > s.job.done_before:  # a finished run needs no model
            start_label_run(pipeline, s.job)
    write_fleet_file(fleet)


def label_fleet(
    pipeline,
    fleet: Fleet,
    workers: int | None = 1,
    ray_address: str | None = None,
    gpus_per_actor: float = 0.0,
    clip_actors: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Label every source of ``fleet`` (after ``start_fleet``); fills each source's summary (also when
    interrupted) and returns the Ray figures (``fleet_ray.run_on_ray``), {} in this process.
    ``on_progress(frames done, frames in all ranges)``."""
    finished = [fleet.done_before]

    def progress(delta: int) -> None:
        finished[0] += delta
        if on_progress:
            on_progress(finished[0], fleet.frames_total)

    try:
        finished_before = fleet.done_before == fleet.frames_total  # nothing to label: no cluster to start
        if finished_before or ((workers or 1) == 1 and ray_address is None):
            for s in fleet.sources:
                seen = [s.job.done_before]

                def step(done: int, total: int, seen=seen) -> None:
                    progress(done - seen[0])
                    seen[0] = done

                execute_label_job(pipeline, s.job, s.summary, step)
            return {}
        from .fleet_ray import run_on_ray

        return run_on_ray(fleet, workers, ray_address, gpus_per_actor, clip_actors, lambda: progress(1))
    finally:
        for s in fleet.sources:
            _remove_temp_files(s.job.out_dir)
        write_fleet_file(fleet)
        if on_progress:  # counted on disk (a frame a killed Ray worker wrote is never reported)
            on_progress(sum(frames_written(s.job) for s in fleet.sources), fleet.frames_total)


def frames_written(job: LabelJob) -> int:
    """Frames of the job's range whose outputs exist now."""
    from .io.writers import LabelRunWriter

    return sum(LabelRunWriter.frame_done(job.out_dir, i) for i in job.indices)


def write_fleet_file(fleet: Fleet) -> Path | None:
    """``OUT/fleet.json`` (see module doc), merged with the sources an earlier invocation recorded."""
    if not fleet.is_fleet:
        return None
    path = fleet.out_dir / FLEET_FILE
    rows = {}
    if path.is_file():
        rows = {s["name"]: s for s in read_fleet_file(fleet.out_dir)["sources"]}
    for s in fleet.sources:
        rows[s.name] = source_record(s)
    fleet.out_dir.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sources": [rows[name] for name in sorted(rows)]}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def source_record(s: FleetSource) -> dict:
    summary = s.summary
    return {
        "name": s.name,
        "path": str(s.path),
        "kind": s.job.spec.kind,
        "frames": len(s.job.indices),
        "labelled": frames_written(s.job),
        "labelled_now": summary.frames_done,
        "resumed": s.job.done_before,
        "skipped": [{"frame": int(i), "reason": why} for i, why in summary.frames_failed],
        "skipped_messages": list(summary.skipped_messages),
        "seconds": round(summary.seconds, 3),
    }


def _remove_temp_files(out_dir: Path) -> None:
    """Temporary files a killed worker left mid-write (hidden; never a frame): no writer runs now."""
    for folder in ("labels", "frames"):
        for tmp in (out_dir / folder).glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
