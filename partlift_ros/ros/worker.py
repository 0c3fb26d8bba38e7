"""The labeller's worker thread: runs ``LabelPipeline.process`` on each frame and publishes the results.

    Job (Frame + headers) ─► pipeline.process ─► labelled_points (the input's layout: organised stays
                                                  organised), instance_markers, overlay per camera,
                                                  debug/processing_time_ms, debug/pipeline_latency_ms

One thread, fed through a ``LatestSlot`` (newest frame wins). Each frame's time is recorded per stage
(``StageTimes``): decode and pairing (done on the executor before the frame got here), the queue wait,
the pipeline's own stages, encode, markers, overlay and publish. ``debug/processing_time_ms`` is the
sum of all but the queue wait. Markers and overlays are only built while someone subscribes to them.

Parameter changes reach the pipeline here, between two frames, so they never race ``process``. A new
``clip.model`` is loaded right away (not on the next frame); if it cannot be loaded the current model
is kept and the reason is logged and counted.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..config import PipelineConfig, flatten
from ..helper_threads import geometry_threads_at_most
from ..io.pointcloud2 import labelled_cloud_array
from ..types import InputError
from . import conversions as conv
from .diagnostics import ENCODE, MARKERS, OVERLAY, PUBLISH, QUEUE, InputLog, StageTimes
from .pairing import Job
from .params import MODEL_KEYS, NodeSettings
from .queues import LatestSlot


@dataclass
class Outputs:
    """The labeller's publishers (``overlays``: one per camera, in the node's camera order)."""

    points: Any
    markers: Any
    overlays: list
    processing_ms: Any
    latency_ms: Any


def limit_compute_threads(n: int) -> int:
    """Cap the CPU threads of torch, the BLAS/OpenMP pools (numpy, scikit-learn) and OpenCV; returns the cap.

    ``n`` > 0: that many; 0: every core this process may use but one (at least one), left to the executor
    threads; -1: leave the libraries' defaults (returns 0). Process-wide, so the node sets it once at start.
    Each pipeline stage is a chain of short library calls; with more threads than free cores, every call's
    fork/join waits for a scheduler slice.
    """
    if n < 0:
        return 0
    if n == 0:
        n = max(len(os.sched_getaffinity(0)) - 1, 1)
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)
    cv2.setNumThreads(n)
    return n


def warm_up(pipeline: Any) -> None:
    """Load the CLIP model and compute the text embeddings now, so the first frame does not pay for them.

    Raises ModelLoadError (or ConfigError) when the model cannot be loaded: the node refuses to start.
    """
    pipeline.text_embeddings()
    # The first forward pass allocates the model's buffers; do it on one blank crop.
    size = int(pipeline.cfg.clip.min_crop)
    pipeline.labeler.encode_crops([np.zeros((size, size, 3), np.uint8)])


class LabelWorker:
    def __init__(self, pipeline: Any, outputs: Outputs, log: InputLog, logger: Any,
                 settings: Callable[[], NodeSettings], now: Callable[[], float], thread_cap: int = 0) -> None:
        from ..pipeline import LabelPipeline
        from ..render import palette_for

        self._LabelPipeline, self._palette_for = LabelPipeline, palette_for
        self._pipeline = pipeline
        self._palette = palette_for(pipeline.cfg.classes)
        self._outputs = outputs
        self._log = log
        self._logger = logger
        self._settings = settings
        self._now = now  # node clock, seconds (sim time when use_sim_time)
        self._thread_cap = thread_cap  # resolved compute_threads (0 = none), caps geometry_threads
        self.times = StageTimes()
        self._lock = threading.Lock()
        self.labelled = 0
        self.dropped = 0
        self._pending_cfg: PipelineConfig | None = None
        self._pending_reset = False
        self._slot = LatestSlot()
        self._thread = threading.Thread(target=self._run, name="labeller-worker", daemon=True)

    @property
    def pipeline(self):
        return self._pipeline

    @property
    def outputs(self) -> Outputs:
        return self._outputs

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._slot.close()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def submit(self, job: Job) -> None:
        """Hand a frame over; one still waiting is replaced (counted as dropped)."""
        job.submitted = time.perf_counter()
        if self._slot.put(job):
            with self._lock:
                self.dropped += 1

    def reconfigure(self, cfg: PipelineConfig) -> None:
        """Use ``cfg`` from the next frame on."""
        with self._lock:
            self._pending_cfg = cfg
        self._slot.wake()

    def reset(self) -> None:
        """Forget the affinity context before the next frame (time jumped back)."""
        with self._lock:
            self._pending_reset = True
        self._slot.wake()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._slot.closed:
            job = self._slot.get(timeout=0.2)
            try:
                self._apply_pending_config()
            except Exception as exc:  # e.g. a new clip.model that cannot be loaded: keep running, say why
                self._log.reject("reconfigure_error", f"could not apply the new parameters, keeping the previous "
                                 f"ones: {type(exc).__name__}: {exc}")
            if job is None:
                continue
            try:
                self._label(job)
            except InputError as exc:
                self._log.reject("pipeline_input_error", str(exc))
            except Exception as exc:  # the node never dies on one frame; the reason is counted and logged
                self._log.reject("pipeline_error", f"frame {job.frame.index}: {type(exc).__name__}: {exc}")

    def _label(self, job: Job) -> None:
        stages = dict(job.stages_ms)
        stages[QUEUE] = (time.perf_counter() - job.submitted) * 1e3
        t0 = time.perf_counter()
        labelled = self._pipeline.process(job.frame)[-1]
        pipeline_ms = (time.perf_counter() - t0) * 1e3
        parts = {k: v for k, v in labelled.timings_ms.items() if k != "total"}
        stages.update(parts)
        stages["pipeline other"] = max(pipeline_ms - sum(parts.values()), 0.0)
        out, settings, palette = self._outputs, self._settings(), self._palette

        t = time.perf_counter()
        cloud = labelled_cloud_array(labelled, palette)
        layout = labelled.frame.layout
        if layout is not None:  # organised in, organised out: label i belongs to input point i
            cloud = cloud.reshape(int(layout[0]), int(layout[1]))
        points_msg = conv.pointcloud2_msg(cloud, job.cloud_header)
        stages[ENCODE] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        markers_msg = None
        if out.markers.get_subscription_count() > 0:
            markers_msg = conv.instance_markers(labelled, palette, job.cloud_header)
        stages[MARKERS] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        overlays = []
        if settings.publish_overlay:
            for j, (cam, header) in enumerate(zip(job.camera_ids, job.image_headers)):
                pub = out.overlays[cam]
                if pub.get_subscription_count() > 0:
                    overlays.append((pub, conv.image_msg(self._overlay(labelled, j, settings.overlay_radius), header)))
        stages[OVERLAY] = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        out.points.publish(points_msg)
        if markers_msg is not None:
            out.markers.publish(markers_msg)
        for pub, msg in overlays:
            pub.publish(msg)
        stages[PUBLISH] = (time.perf_counter() - t) * 1e3

        total = self.times.add(stages)
        out.processing_ms.publish(conv.float64_msg(total))
        latency = self._now() - conv.stamp_to_sec(job.cloud_header.stamp)
        out.latency_ms.publish(conv.float64_msg(latency * 1e3))
        with self._lock:
            self.labelled += 1

    def _overlay(self, labelled, camera: int, radius: int) -> np.ndarray:
        from ..calibration import project_points
        from ..render import class_colours, overlay_image

        cam = labelled.frame.cameras[camera]
        proj = project_points(labelled.frame.points, cam.K, cam.T_cam_lidar, cam.size, cam.D)
        colours = class_colours(labelled.label, self._palette)
        return overlay_image(cam.image, proj.uv, proj.in_image, colours, radius, proj.depth)

    def _apply_pending_config(self) -> None:
        """Swap in a new config between frames."""
        with self._lock:
            cfg, self._pending_cfg = self._pending_cfg, None
            reset, self._pending_reset = self._pending_reset, False
        if reset:
            self._pipeline.reset()
        if cfg is None:
            return
        cfg = geometry_threads_at_most(cfg, self._thread_cap)
        old = flatten(self._pipeline.cfg)
        changed = {k for k, v in flatten(cfg).items() if old.get(k) != v}
        if not changed:
            return
        new_model = bool(changed & set(MODEL_KEYS))
        pipeline = self._LabelPipeline(cfg, labeler=None if new_model else self._pipeline.labeler)
        pipeline.set_templates(cfg.clip.templates)  # also hands the templates to a kept labeller
        if new_model or changed & {"classes", "unseen_classes", "clip.templates"}:
            warm_up(pipeline)  # load the model / text embeddings now, not on the next frame
        self._pipeline = pipeline
        self._palette = self._palette_for(cfg.classes)
        if new_model:
            self._logger.info(f"CLIP model {cfg.clip.model!r} loaded")
        elif changed & {"classes", "unseen_classes", "clip.templates"}:
            self._logger.info(f"vocabulary updated: {len(cfg.classes)} classes, {len(cfg.clip.templates)} templates")
        else:
            self._logger.info(f"config updated: {sorted(changed)}")
