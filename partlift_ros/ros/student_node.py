"""ROS 2 node `student`: the distilled LiDAR-only SPVCNN labels every scan, no camera needed.

    points (PointCloud2) ─► check ─► [worker] predict ─► labelled_points (the labeller's fields and the input's
                                    (newest wins)        layout; instance = -1), debug/processing_time_ms,
                                                         debug/pipeline_latency_ms, /diagnostics
Parameters: ``checkpoint`` (a ``partlift train`` student.pt, required), ``device``, ``max_points``,
``tta_rotations``, ``points.intensity_scale`` (the labeller's rule: intensity to 0..1), ``reliable``
(input QoS, see qos.py), ``diagnostics_period``, ``log_throttle``; the standard ``qos_overrides`` apply.
The checkpoint is loaded at start: a missing or unreadable one stops the node with one line (exit 2).

Non-finite points keep their index and come back unlabelled (IGNORE), the output keeps the input's
height x width. Bad clouds are counted under a reason, logged once per reason and throttle period, and
dropped; the node keeps running.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from ..config import ConfigError
from ..io.pointcloud2 import Scan, labelled_cloud_array
from ..points import parse_intensity_scale
from ..types import IGNORE, Frame, InputError, LabelledCloud
from . import conversions as conv
from .diagnostics import OK, WARN, InputLog
from .params import NUMBER_OR_WORD_KEYS
from .qos import input_qos, output_qos, overridable
from .queues import LatestSlot
from .spin import exit_now, steady_clock, unless_destroyed
from .validation import Rejected, check_cloud

PARAMETERS: dict[str, Any] = {
    "checkpoint": "",  # path of the student checkpoint (student.pt from `partlift train`)
    "device": "cpu",  # cpu | cuda | cuda:N
    "max_points": 300_000,  # clouds with more points are refused (bounded latency and memory)
    "tta_rotations": 0,  # extra rotated passes averaged at test time (0 = one pass)
    "points.intensity_scale": "auto",  # raw intensity of a full return, or auto (see partlift_ros/points.py)
    "reliable": False,  # inputs: reliable QoS instead of best-effort sensor data
    "diagnostics_period": 1.0,  # s
    "log_throttle": 5.0,  # s between two log lines of the same kind
}


@dataclass
class _Job:
    scan: Scan
    header: Any
    decode_ms: float


def _checked_parameters(p: dict[str, Any]) -> dict[str, Any]:
    """The parameters with their types, or ConfigError naming the bad one."""
    if not p["checkpoint"]:
        raise ConfigError("parameter 'checkpoint' is empty: give the student.pt written by `partlift train`")
    if int(p["max_points"]) < 1 or int(p["tta_rotations"]) < 0 or float(p["diagnostics_period"]) <= 0:
        raise ConfigError(f"bad parameters: max_points {p['max_points']} must be >= 1, tta_rotations "
                          f"{p['tta_rotations']} >= 0, diagnostics_period {p['diagnostics_period']} > 0")
    try:
        scale = parse_intensity_scale(p["points.intensity_scale"])
    except ValueError as exc:
        raise ConfigError(f"points.intensity_scale: {exc}") from None
    import torch

    try:
        device = torch.device(p["device"])
    except RuntimeError:
        raise ConfigError(f"device: {p['device']!r} is not a torch device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {p['device']!r} but CUDA is not available here; use cpu")
    return {**p, "points.intensity_scale": scale, "device": device}


class StudentNode(Node):
    """Loads the student once, then labels each incoming cloud on a worker thread."""

    def __init__(self, node_name: str = "student", **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        from rcl_interfaces.msg import ParameterDescriptor

        for key, default in PARAMETERS.items():
            self.declare_parameter(key, default, ParameterDescriptor(dynamic_typing=key in NUMBER_OR_WORD_KEYS))
        p = _checked_parameters({k: self.get_parameter(k).value for k in PARAMETERS})
        from ..render import palette_for
        from ..student.infer import load_student

        self.model, self.class_names = load_student(p["checkpoint"], p["device"])  # InputError: exit 2
        self.palette = palette_for(self.class_names)
        self.max_points = int(p["max_points"])
        self.tta_rotations = int(p["tta_rotations"])
        self.intensity_scale = p["points.intensity_scale"]

        self._lock = threading.Lock()
        self._labelled = 0
        self._dropped = 0
        self._proc_ms: deque[float] = deque(maxlen=500)
        self.log = InputLog(self.get_logger(), float(p["log_throttle"]))
        self._diagnostics_period = float(p["diagnostics_period"])

        qos_options = {"qos_overriding_options": overridable()}
        self._pub_points = self.create_publisher(conv.message_type("PointCloud2"), "labelled_points", output_qos(5),
                                                 **qos_options)
        self._pub_proc = self.create_publisher(conv.message_type("Float64"), "debug/processing_time_ms", output_qos(10))
        self._pub_latency = self.create_publisher(conv.message_type("Float64"), "debug/pipeline_latency_ms",
                                                  output_qos(10))
        self._diag_pub = conv.diagnostics_publisher(self)
        self.subscription = self.create_subscription(
            conv.message_type("PointCloud2"), "points", self._on_points, input_qos(bool(p["reliable"])),
            callback_group=MutuallyExclusiveCallbackGroup(), **qos_options)
        self.create_timer(self._diagnostics_period, self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup(), clock=steady_clock())
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._work, name="student-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"student ready: {len(self.class_names)} classes, voxel {self.model.voxel_size} m, "
                               f"device {p['device']}, max_points {self.max_points}")

    # ------------------------------------------------------------------ read-outs (tests, tools)
    def rejected_counts(self) -> dict[str, int]:
        return self.log.rejected()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"received": self.log.received().get("points", 0), "labelled": self._labelled,
                    "dropped": self._dropped, "rejected": sum(self.log.rejected().values()),
                    "processing_ms": list(self._proc_ms)}

    # ------------------------------------------------------------------ input (executor thread)
    def _on_points(self, msg: Any) -> None:
        self.log.seen("points")
        t0 = time.perf_counter()
        try:
            scan = check_cloud(msg, self.max_points, self.intensity_scale, need_frame_id=False)
        except Rejected as exc:
            self.log.reject(exc.reason, str(exc))
            return
        if self._slot.put(_Job(scan, msg.header, (time.perf_counter() - t0) * 1e3)):
            with self._lock:
                self._dropped += 1

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while not self._slot.closed:
            job = self._slot.get(timeout=0.2)
            if job is None:
                continue
            try:
                self._label(job)
            except Exception as exc:  # the node never dies on one cloud; the reason is counted and logged
                self.log.reject("inference_error", f"{type(exc).__name__}: {exc}")

    def _label(self, job: _Job) -> None:
        from ..student.infer import predict

        t0 = time.perf_counter()
        points = job.scan.points
        n = points.shape[0]
        # predict keeps non-finite points at their index, unlabelled (the one policy of points.py).
        label, confidence = predict(self.model, points, tta_rotations=self.tta_rotations)
        labelled = LabelledCloud(
            frame=Frame(points=points, cameras=[], frame_id=str(job.header.frame_id), layout=job.scan.layout),
            class_names=self.class_names, label=label, confidence=confidence,
            instance=np.full(n, IGNORE, np.int32), visible=np.zeros(n, bool),
            instance_scores=np.zeros((0, len(self.class_names)), np.float32),
            instance_refined=np.zeros((0, len(self.class_names)), np.float32),
            instance_features=np.zeros((0, 0), np.float32), instance_valid=np.zeros(0, bool),
        )
        cloud = labelled_cloud_array(labelled, self.palette)
        if job.scan.layout is not None:  # organised in, organised out
            cloud = cloud.reshape(job.scan.layout)
        self._pub_points.publish(conv.pointcloud2_msg(cloud, job.header))
        proc_ms = job.decode_ms + (time.perf_counter() - t0) * 1e3
        self._pub_proc.publish(conv.float64_msg(proc_ms))
        latency = self.get_clock().now().nanoseconds * 1e-9 - conv.stamp_to_sec(job.header.stamp)
        self._pub_latency.publish(conv.float64_msg(latency * 1e3))
        with self._lock:
            self._labelled += 1
            self._proc_ms.append(proc_ms)

    # ------------------------------------------------------------------ diagnostics
    def diagnostic_statuses(self) -> list:
        me = self.get_fully_qualified_name()
        age = self.log.ages(["points"])["points"]
        rejected = self.log.rejected()
        new = self.log.new_rejections()
        s = self.stats()
        stale = age is None or age > max(2.0, 3 * self._diagnostics_period)
        processing = {"clouds received": s["received"], "clouds labelled": s["labelled"], "dropped (busy)": s["dropped"]}
        if s["processing_ms"]:
            proc = np.array(s["processing_ms"])
            processing.update({f"processing ms p{q}": f"{np.percentile(proc, q):.1f}" for q in (50, 95)})
        return [
            conv.diagnostic_status(f"{me}: points", WARN if stale else OK,
                                   "no recent cloud" if stale else "clouds arriving",
                                   {"age s": "never" if age is None else f"{age:.2f}"}),
            conv.diagnostic_status(f"{me}: rejected inputs", WARN if new else OK,
                                   f"{sum(rejected.values())} rejected ({new} since last report)",
                                   {f"rejected {k}": v for k, v in sorted(rejected.items())}),
            conv.diagnostic_status(f"{me}: processing", OK,
                                   f"{s['labelled']} clouds labelled, {s['dropped']} dropped while busy", processing),
        ]

    @unless_destroyed
    def _publish_diagnostics(self) -> None:
        conv.publish_diagnostics(self, self._diag_pub, self.diagnostic_statuses())

    def destroy_node(self) -> None:
        slot = getattr(self, "_slot", None)  # absent when __init__ refused to start
        if slot is not None:
            slot.close()
            if self._worker.is_alive():
                self._worker.join(timeout=30.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Run the student until shut down; the exit code (0, or 2 when it refused to start)."""
    from .spin import run_node

    return run_node(StudentNode, "student", (ConfigError, InputError), threads=2, args=args)


def console() -> None:
    """Console entry ``student`` (``ros2 run partlift_ros student --ros-args -p checkpoint:=student.pt``)."""
    exit_now(main())


if __name__ == "__main__":
    console()
