"""ROS 2 node `labeller`: labels each LiDAR scan with open-vocabulary classes from the paired camera images.

    points (PointCloud2) ─┐ validation  pairing              worker (one thread, newest frame wins)
    image (Image)  ───────┼─► check ─► nearest image ─► Frame ─► LabelPipeline.process ─► labelled_points,
    camera_info ──────────┘            per camera                  instance_markers, overlay, debug/*
    /tf, /tf_static ─► transforms (extrinsics)          /diagnostics (counts, per-stage times)

This file wires the pieces; each is a module that reads on its own:
- ``params``      every core config key as a dotted parameter, the node settings, the camera rig;
- ``qos``         input/output QoS, the ``reliable`` switch and the standard ``qos_overrides``;
- ``validation``  checks on each message (a bad one is counted under a reason and dropped);
- ``pairing``     cloud/image pairing and the Frame built from it;
- ``transforms``  extrinsics from TF (tf2_ros, or /tf and /tf_static followed here) or the parameters;
- ``worker``      the pipeline thread and the outputs;
- ``diagnostics`` counters, per-stage times and the /diagnostics statuses;
- ``queues``      the queue of one between the executor and the worker.

Start-up: the parameters are checked and the CLIP model is loaded (and its text embeddings computed)
before any subscription exists, so the first frame is labelled at full speed and nothing is dropped
while the model loads; refused parameters or a model that cannot be loaded stop the node with one
line and exit code 2 (``spin.run_node``).

Non-finite points (NaN/inf x, y or z: the no-return cells of an organised cloud) keep their index and
get no label; ``labelled_points`` has the input's height x width, so label i belongs to input point i.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rcl_interfaces.msg import SetParametersResult

from ..clip_labeling import ModelLoadError
from ..config import ConfigError
from ..helper_threads import geometry_threads_at_most
from ..points import parse_intensity_scale
from ..types import InputError
from . import conversions as conv
from .diagnostics import InputLog, labeller_statuses
from .spin import exit_now, steady_clock, unless_destroyed
from .pairing import CameraImage, Cloud, Pairer
from .params import (
    NODE_KEYS, CameraSpec, NodeSettings, build_cameras, build_config, build_settings, current_values,
    declare_all, refuse_change,
)
from .qos import input_qos, output_qos, overridable
from .transforms import Extrinsics
from .validation import Rejected, check_camera_info, check_cloud, check_image
from .worker import LabelWorker, Outputs, limit_compute_threads, warm_up

# What stops the node at start-up with one line and exit code 2.
STARTUP_ERRORS = (ConfigError, InputError, ModelLoadError)


class LabellerNode(Node):
    """The labeller; ``labeler`` injects a CLIP labeller (tests), else the pipeline loads ``clip.model`` at start."""

    def __init__(self, labeler: Any = None, node_name: str = "labeller", **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        declare_all(self)
        values = current_values(self)
        self.settings: NodeSettings = build_settings(values)
        self._cameras: list[CameraSpec] = build_cameras(values)
        threads = limit_compute_threads(self.settings.compute_threads)
        cfg = geometry_threads_at_most(build_config(values), threads)
        self._intensity_scale = parse_intensity_scale(cfg.points.intensity_scale)
        from ..pipeline import LabelPipeline

        pipeline = LabelPipeline(cfg, labeler=labeler)
        if labeler is not None:
            # An injected labeller keeps its own template list; make it follow this node's parameters.
            pipeline.set_templates(cfg.clip.templates)
        t0 = time.monotonic()
        warm_up(pipeline)  # raises ModelLoadError: the node does not start with a model it cannot load
        model_s = time.monotonic() - t0

        self._lock = threading.RLock()  # guards the pairer, settings and cameras (executor threads)
        self.log = InputLog(self.get_logger(), self.settings.log_throttle)
        self._pairer = Pairer(len(self._cameras), self.settings.image_buffer)
        self._inputs = ("points", *(c.input_key(w) for c in self._cameras for w in ("image", "camera_info")))
        self._partial_at_last_report = 0
        self.extrinsics = Extrinsics(self, self.log)

        # Every topic gets the standard qos_overrides parameters, and its own profile object (see qos.py).
        over = {"qos_overriding_options": overridable()}
        msg = conv.message_type
        self._diag_pub = conv.diagnostics_publisher(self)
        outputs = Outputs(
            points=self.create_publisher(msg("PointCloud2"), "labelled_points", output_qos(5), **over),
            markers=self.create_publisher(msg("MarkerArray"), "instance_markers", output_qos(5), **over),
            overlays=[self.create_publisher(msg("Image"), f"{c.name}/overlay" if c.name else "overlay",
                                            output_qos(2), **over) for c in self._cameras],
            processing_ms=self.create_publisher(msg("Float64"), "debug/processing_time_ms", output_qos(10)),
            latency_ms=self.create_publisher(msg("Float64"), "debug/pipeline_latency_ms", output_qos(10)),
        )
        self.worker = LabelWorker(pipeline, outputs, self.log, self.get_logger(), lambda: self.settings,
                                  lambda: self.get_clock().now().nanoseconds * 1e-9, thread_cap=threads)

        inputs = MutuallyExclusiveCallbackGroup()
        reliable = self.settings.reliable
        image_type = msg("CompressedImage" if self.settings.use_compressed else "Image")
        self.subscriptions_by_input = {"points": self.create_subscription(
            msg("PointCloud2"), "points", self._on_points, input_qos(reliable), callback_group=inputs, **over)}
        for i, cam in enumerate(self._cameras):
            # The default camera is on the relative names ``image``/``camera_info`` that the launch file remaps.
            self.subscriptions_by_input[cam.input_key("image")] = self.create_subscription(
                image_type, cam.image_topic, partial(self._on_image, i), input_qos(reliable),
                callback_group=inputs, **over)
            self.subscriptions_by_input[cam.input_key("camera_info")] = self.create_subscription(
                msg("CameraInfo"), cam.camera_info_topic, partial(self._on_camera_info, i), input_qos(reliable),
                callback_group=inputs, **over)
        # Wall-clock timers: with use_sim_time a paused or finished bag stops /clock, and the node must still
        # report (inputs gone stale) and give up waiting clouds (pair_timeout is wall time).
        wall = steady_clock()
        self._diag_timer = self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup(), clock=wall)
        self._pair_timer = self.create_timer(max(self.settings.pair_timeout / 2, 0.05), self._pair_ready,
                                             callback_group=inputs, clock=wall)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.worker.start()
        self.get_logger().info(
            f"labeller ready: {len(cfg.classes)} classes, CLIP {cfg.clip.model!r} loaded in {model_s:.1f} s, "
            f"cameras {[c.label for c in self._cameras]}, extrinsics from {self.extrinsics.mode}, affinity online "
            f"(window {cfg.affinity.window_frames}), inputs {'reliable' if self.settings.reliable else 'best effort'}, "
            f"slop {self.settings.slop} s, max_points {self.settings.max_points}, "
            f"compute threads {threads or 'library defaults'} (geometry {cfg.geometry_threads})"
        )

    # ------------------------------------------------------------------ public read-outs (tests, tools)
    def rejected_counts(self) -> dict[str, int]:
        return self.log.rejected()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            paired, without = self._pairer.paired, dict(self._pairer.frames_without)
        w = self.worker
        return {
            "received": self.log.received(), "paired": paired, "labelled": w.labelled, "dropped": w.dropped,
            "rejected": sum(self.log.rejected().values()), "processing_ms": w.times.totals(),
            "processing_without_clip_ms": w.times.totals_without_clip(), "stages_ms": w.times.per_stage(),
            "frames_without": without,
        }

    @property
    def cameras(self) -> list[CameraSpec]:
        return list(self._cameras)

    @property
    def pipeline(self):
        return self.worker.pipeline

    # ------------------------------------------------------------------ input callbacks (executor thread)
    def _on_points(self, msg: Any) -> None:
        self.log.seen("points")
        t0 = time.perf_counter()
        try:
            scan = check_cloud(msg, self.settings.max_points, self._intensity_scale)
        except Rejected as exc:
            self.log.reject(exc.reason, str(exc))
            return
        cloud = Cloud(scan, conv.stamp_to_sec(msg.header.stamp), str(msg.header.frame_id), msg.header,
                      time.monotonic(), (time.perf_counter() - t0) * 1e3)
        with self._lock:
            if self._pairer.went_back("points", cloud.stamp):
                self.log.reject("cloud_stamp_backwards", f"PointCloud2 stamp {cloud.stamp:.3f} is older than the "
                                "previous one: time jumped back (bag loop?), pairing buffers and affinity window reset")
                self._pairer.clear(self._cameras)
                self.worker.reset()
            self._pairer.pending.append(cloud)
            self._pair_ready()

    def _on_image(self, cam: int, msg: Any) -> None:
        spec = self._cameras[cam]
        key = spec.input_key("image")
        where = f"camera {spec.label}: " if spec.name else ""
        self.log.seen(key)
        t0 = time.perf_counter()
        try:
            rgb = check_image(msg, where)
        except Rejected as exc:
            self.log.reject(exc.reason, str(exc))
            return
        image = CameraImage(rgb, str(msg.header.frame_id), msg.header, (time.perf_counter() - t0) * 1e3)
        stamp = conv.stamp_to_sec(msg.header.stamp)
        with self._lock:
            if self._pairer.went_back(key, stamp):
                self.log.reject("image_stamp_backwards", f"{where}Image stamp {stamp:.3f} is older than the "
                                "previous one: image buffer cleared")
                self._pairer.images[cam].clear()
            self._pairer.images[cam].push(stamp, image)
            self._pair_ready()

    def _on_camera_info(self, cam: int, msg: Any) -> None:
        spec = self._cameras[cam]
        self.log.seen(spec.input_key("camera_info"))
        try:
            info = check_camera_info(msg, f"camera {spec.label}: " if spec.name else "")
        except Rejected as exc:
            self.log.reject(exc.reason, str(exc))
            return
        with self._lock:
            self._pairer.camera_info[cam] = info

    @unless_destroyed
    def _pair_ready(self) -> None:
        """Hand every cloud that can be paired now to the worker."""
        with self._lock:
            for job in self._pairer.ready_frames(self.settings, self._cameras, self.extrinsics, self.log.reject):
                self.worker.submit(job)

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, params: list) -> SetParametersResult:
        values = current_values(self)
        values.update({p.name: p.value for p in params})
        reason = refuse_change({p.name for p in params}, values)
        return SetParametersResult(successful=reason is None, reason=reason or "")

    def _apply_parameters(self, params: list) -> None:
        values = current_values(self)
        settings, cameras = build_settings(values), build_cameras(values)
        camera_names = {c.name for c in cameras if c.name}
        with self._lock:
            self.settings, self._cameras = settings, cameras
            self.log.throttle.period = settings.log_throttle
        if any(p.name not in NODE_KEYS and p.name.split(".", 1)[0] not in camera_names for p in params):
            cfg = build_config(values)
            self._intensity_scale = parse_intensity_scale(cfg.points.intensity_scale)
            self.worker.reconfigure(cfg)

    # ------------------------------------------------------------------ diagnostics
    @unless_destroyed
    def _publish_diagnostics(self) -> None:
        self._pair_ready()
        conv.publish_diagnostics(self, self._diag_pub, self.diagnostic_statuses())

    def diagnostic_statuses(self) -> list:
        with self._lock:
            without = dict(self._pairer.frames_without)
            partial_total = sum(without.values())
            new_partial, self._partial_at_last_report = partial_total - self._partial_at_last_report, partial_total
            paired = self._pairer.paired
        counts = {"paired": paired, "labelled": self.worker.labelled, "dropped": self.worker.dropped,
                  "frames_without": without, "new_partial": new_partial}
        return labeller_statuses(self.get_fully_qualified_name(), list(self._inputs), self.log, self.worker.times,
                                 counts, [c.label for c in self._cameras], self.settings.diagnostics_period)

    # ------------------------------------------------------------------ shutdown
    def destroy_node(self) -> None:
        worker = getattr(self, "worker", None)  # absent when __init__ refused to start
        if worker is not None:
            worker.stop()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the labeller until shut down; the exit code (0, or 2 when it refused to start)."""
    from .spin import run_node

    return run_node(LabellerNode, "labeller", STARTUP_ERRORS, threads=3, args=args)


def console() -> None:
    """Console entry ``labeller`` (``ros2 run partlift_ros labeller``)."""
    exit_now(main())


if __name__ == "__main__":
    console()
