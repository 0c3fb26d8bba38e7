"""A fleet job on Ray: geometry in CPU tasks, CLIP in actors, the same bytes as one process.

Every chunk (``label_chunks.py``) is one task (1 CPU) that reads its frames, runs every stage but CLIP
(``LabelPipeline.prepare``) and sends the crops of each CLIP group (an offline affinity block: crops of
several frames) to a CLIP actor, preparing the next group while the actor encodes. CLIP actors hold the model
once each (``--gpus-per-actor`` GPUs, none on CPU-only clusters; they reserve no CPU, so a node's CPUs run
the geometry tasks and the actors fill the time those tasks wait). The driver keeps at most ``workers``
chunks in flight, source after source, and counts frames as tasks report them.

Faults: a task whose worker or node dies is run again (``max_retries``) and resumes its chunk from the frames
already written (atomic writes: a frame is written completely or not at all, never twice); an actor that
dies is restarted and its calls are retried. OUT and the sources must be on storage every node can read
and write (the same paths), and every node needs partlift (``pip install -e ".[ray]"``) and the CLIP files.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections import deque
from pathlib import Path

from .types import InputError

INSTALL_HINT = 'labelling with --workers N > 1 or --ray-address needs Ray: pip install -e ".[ray]"'
TASK_RETRIES = 3  # a chunk whose worker or node died is run again this often
ACTOR_RESTARTS = 3


def import_ray():
    """``ray``, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


class ClipWorker:
    """A CLIP model in an actor: ``clip_scores`` for the CLIP groups of any chunk task."""

    def __init__(self, cfg) -> None:
        from .pipeline import LabelPipeline

        self.pipeline = LabelPipeline(cfg)
        self.pipeline.labeler  # load now, not on the first call

    def clip_scores(self, crops):
        from .label_chunks import timed_clip_scores

        return timed_clip_scores(self.pipeline, crops)

    def peak_rss_mb(self) -> float:
        return _peak_rss_mb()


class RemoteClip:
    """``label_chunk``'s ``clip`` argument in a task: groups go to a CLIP actor, results come back in order."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def submit(self, crops):
        return self.actor.clip_scores.remote(crops)

    def result(self, handle):
        import ray

        return ray.get(handle)


def label_chunk_task(job, chunk: list[int], actor, progress, source_no: int):
    """One chunk of ``job`` labelled in a Ray worker; returns (ChunkResult, seconds, peak RSS MiB)."""
    from .helper_threads import geometry_threads_at_most
    from .io.writers import LabelRunWriter
    from .label_chunks import label_chunk
    from .label_run import seen_labels_setter
    from .pipeline import LabelPipeline

    t0 = time.perf_counter()
    # No CLIP here (the actor encodes); the task holds one CPU, so its geometry keeps to job.threads.
    pipeline = LabelPipeline(geometry_threads_at_most(job.cfg, job.cfg.job.threads))
    writer = LabelRunWriter.open(job.out_dir, job.cfg.classes)

    def on_frame(index: int, what: str) -> None:
        progress.put((source_no, index, what))

    result = label_chunk(pipeline, job.source, chunk, writer, seen_labels_setter(job), on_frame, RemoteClip(actor))
    return result, time.perf_counter() - t0, _peak_rss_mb()


def _import_stages() -> None:
    """Run in a fresh worker: the imports a chunk task needs, done before the clock of the labelling starts."""
    from . import clip_labeling, image_regions, superpoints, label_chunks, pipeline, visibility  # noqa: F401
    from .io import kitti, rosbag_reader  # noqa: F401


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_on_ray(fleet, workers: int | None, address: str | None, gpus_per_actor: float, clip_actors: int | None,
               on_frame) -> dict:
    """Label the fleet's chunks on Ray (see module doc), ``workers`` chunks at once (None: one per CPU of the
    cluster at ``address``); ``on_frame()`` per frame written or skipped.
    Returns {"startup_s", "workers", "clip_actors", "worker_peak_rss_mb", "clip_peak_rss_mb"}."""
    ray = import_ray()
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .io.writers import LabelRunWriter
    from .label_run import begin_summary, finish_label_job, record_chunk

    cfg = fleet.sources[0].job.cfg
    if gpus_per_actor > 0 and not cfg.clip.device.startswith("cuda"):
        raise InputError("--gpus-per-actor needs --device cuda (clip.device), which is part of the run's fingerprint")
    if gpus_per_actor == 0 and cfg.clip.device.startswith("cuda"):
        raise InputError("--device cuda on Ray needs --gpus-per-actor (GPUs per CLIP actor, e.g. 1 or 0.5)")
    t0 = time.perf_counter()
    started = connect(ray, address, workers or 1)
    try:
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        k = clip_actors or _default_actors(ray, workers, gpus_per_actor)
        actor_class = ray.remote(ClipWorker).options(
            num_cpus=0, num_gpus=gpus_per_actor, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS,
            scheduling_strategy="SPREAD")
        actors = [actor_class.remote(cfg) for _ in range(k)]
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        progress = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})  # dies only with the driver
        task = ray.remote(label_chunk_task).options(num_cpus=1, max_retries=TASK_RETRIES, scheduling_strategy="SPREAD")
        warm = ray.remote(_import_stages).options(num_cpus=1, scheduling_strategy="SPREAD")
        # Every model loaded and the first workers' imports done: the start-up ends here.
        ray.get([a.peak_rss_mb.remote() for a in actors] + [warm.remote() for _ in range(workers)])
        stats = {"startup_s": time.perf_counter() - t0, "workers": workers, "clip_actors": k, "worker_peak_rss_mb": 0.0}
        queue = deque()
        for no, s in enumerate(fleet.sources):
            begin_summary(s.job, s.summary)
            job_ref = ray.put(s.job)
            for chunk in s.job.chunks:
                if not all(LabelRunWriter.frame_done(s.job.out_dir, i) for i in chunk):
                    queue.append((no, job_ref, chunk))
        running: dict = {}
        submitted = 0
        try:
            while queue or running:
                while queue and len(running) < workers:
                    no, job_ref, chunk = queue.popleft()
                    running[task.remote(job_ref, chunk, actors[submitted % k], progress, no)] = (no, chunk)
                    submitted += 1
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                _drain(progress, on_frame)
                for ref in ready:
                    no, chunk = running.pop(ref)
                    summary = fleet.sources[no].summary
                    try:
                        result, seconds, rss = ray.get(ref)
                    except InputError as exc:  # the source changed or vanished under the job
                        summary.frames_failed += [(i, f"frame {i}: {exc}") for i in chunk]
                        continue
                    record_chunk(summary, result)
                    summary.seconds += seconds
                    stats["worker_peak_rss_mb"] = max(stats["worker_peak_rss_mb"], rss)
            _drain(progress, on_frame)
        except BaseException:
            for ref in running:
                ray.cancel(ref, force=True)
            raise
        finally:
            from .fleet import frames_written

            for s in fleet.sources:  # counted on disk: frames a dead attempt wrote are counted too
                s.summary.frames_done = frames_written(s.job) - s.job.done_before
        for s in fleet.sources:
            finish_label_job(s.job, s.summary)
        stats["clip_peak_rss_mb"] = max(ray.get([a.peak_rss_mb.remote() for a in actors]))
        return stats
    finally:
        if started:
            ray.shutdown()


def connect(ray, address: str | None, workers: int) -> bool:
    """Join the cluster at ``address`` ("auto": the one ``ray start`` runs here) or start a local one with
    ``workers`` CPUs; True when this call connected (and so disconnects at the end)."""
    if ray.is_initialized():
        return False
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if address is not None:
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:
            raise InputError(f"--ray-address {address}: {exc}") from None
        return True
    # Workers of a local cluster import partlift from where this process does (a source checkout included).
    package_root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=workers, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, **options)
    return True


def _default_actors(ray, workers: int, gpus_per_actor: float) -> int:
    """One CLIP actor per worker on CPUs; on GPUs as many as fit, at most one per worker."""
    if gpus_per_actor <= 0:
        return workers
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus < gpus_per_actor:
        raise InputError(f"--gpus-per-actor {gpus_per_actor}: the Ray cluster has {gpus:g} GPUs")
    return max(1, min(workers, int(gpus // gpus_per_actor)))


def _drain(progress, on_frame) -> None:
    """Report the frames the tasks have written or skipped since the last call."""
    waiting = progress.qsize()
    if waiting:
        for _ in progress.get_nowait_batch(waiting):
            on_frame()
