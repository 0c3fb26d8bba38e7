"""ROS 2 node `student`: the distilled LiDAR-only SPVCNN labels every scan, no camera needed.

    points (PointCloud2) ─► check ─► [worker] predict ─► labelled_points (the labeller's layout; instance = -1)
                                    (newest wins)        debug/processing_time_ms, debug/pipeline_latency_ms,
                                                         /diagnostics
Parameters: ``checkpoint`` (a ``partlift train`` student.pt, required), ``device``, ``max_points``,
``tta_rotations``, ``diagnostics_period``, ``log_throttle``. Bad clouds are counted under a reason, logged
once per reason and throttle period, and dropped; the node keeps running.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data

from ..io.pointcloud2 import CloudFormatError, cloud_to_points, labelled_cloud_array
from ..types import IGNORE, Frame, InputError, LabelledCloud
from . import conversions as conv
from .labeller_node import LatestSlot, Throttle, conv_type

PARAMETERS: dict[str, Any] = {
    "checkpoint": "",  # path of the student checkpoint (student.pt from `partlift train`)
    "device": "cpu",  # cpu | cuda | cuda:N
    "max_points": 300_000,  # clouds with more points are refused (bounded latency and memory)
    "tta_rotations": 0,  # extra rotated passes averaged at test time (0 = one pass)
    "diagnostics_period": 1.0,  # s
    "log_throttle": 5.0,  # s between two log lines of the same kind
}


@dataclass
class _Job:
    points: np.ndarray
    header: Any


class StudentNode(Node):
    """Loads the student once, then labels each incoming cloud on a worker thread."""

    def __init__(self, node_name: str = "student", **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        for key, default in PARAMETERS.items():
            self.declare_parameter(key, default)
        p = {k: self.get_parameter(k).value for k in PARAMETERS}
        if not p["checkpoint"]:
            raise InputError("parameter 'checkpoint' is empty: give the student.pt written by `partlift train`")
        if int(p["max_points"]) < 1 or int(p["tta_rotations"]) < 0 or float(p["diagnostics_period"]) <= 0:
            raise InputError(f"bad parameters: max_points {p['max_points']} must be >= 1, tta_rotations "
                             f"{p['tta_rotations']} >= 0, diagnostics_period {p['diagnostics_period']} > 0")
        from ..render import palette_for
        from ..student.infer import load_student

        self.model, self.class_names = load_student(p["checkpoint"], p["device"])
        self.palette = palette_for(self.class_names)
        self.max_points = int(p["max_points"])
        self.tta_rotations = int(p["tta_rotations"])

        self._lock = threading.Lock()
        self._received = 0
        self._labelled = 0
        self._dropped = 0
        self._rejected: Counter[str] = Counter()
        self._rejected_at_last_report = 0
        self._last_seen: float | None = None
        self._proc_ms: deque[float] = deque(maxlen=500)
        self._throttle = Throttle(float(p["log_throttle"]))
        self._diagnostics_period = float(p["diagnostics_period"])

        self._pub_points = self.create_publisher(conv_type("PointCloud2"), "labelled_points", 5)
        self._pub_proc = self.create_publisher(conv_type("Float64"), "debug/processing_time_ms", 10)
        self._pub_latency = self.create_publisher(conv_type("Float64"), "debug/pipeline_latency_ms", 10)
        self._diag_pub = conv.diagnostics_publisher(self)
        self.create_subscription(conv_type("PointCloud2"), "points", self._on_points, qos_profile_sensor_data,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(self._diagnostics_period, self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._work, name="student-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"student ready: {len(self.class_names)} classes, voxel {self.model.voxel_size} m, "
                               f"device {p['device']}, max_points {self.max_points}")

    # ------------------------------------------------------------------ read-outs (tests, tools)
    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"received": self._received, "labelled": self._labelled, "dropped": self._dropped,
                    "rejected": sum(self._rejected.values()), "processing_ms": list(self._proc_ms)}

    def _reject(self, reason: str, message: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
        if self._throttle.ready(reason):
            self.get_logger().warning(f"[{reason}] {message}")

    # ------------------------------------------------------------------ input (executor thread)
    def _on_points(self, msg: Any) -> None:
        with self._lock:
            self._received += 1
            self._last_seen = time.monotonic()
        frame_id = str(msg.header.frame_id)
        declared = int(msg.width) * int(msg.height)
        if declared > self.max_points:
            self._reject("cloud_too_large", f"PointCloud2 with {declared} points exceeds max_points {self.max_points}")
            return
        try:
            points = cloud_to_points(msg)
        except CloudFormatError as exc:
            self._reject(exc.reason, f"PointCloud2 in {frame_id!r}: {exc}")
            return
        except InputError as exc:
            self._reject("cloud_malformed", f"PointCloud2 in {frame_id!r}: {exc}")
            return
        if points.shape[0] == 0:
            self._reject("cloud_empty", f"PointCloud2 in {frame_id!r} has no points")
            return
        if not np.isfinite(points[:, :3]).all(axis=1).any():
            self._reject("cloud_all_nonfinite", f"PointCloud2 in {frame_id!r}: every point has NaN/inf coordinates")
            return
        if self._slot.put(_Job(points, msg.header)):
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
                self._reject("inference_error", f"{type(exc).__name__}: {exc}")

    def _label(self, job: _Job) -> None:
        from ..student.infer import predict

        t0 = time.perf_counter()
        points = job.points
        # NaN/inf points cannot be voxelised: they keep their place in the output, labelled IGNORE.
        finite = np.isfinite(points[:, :3]).all(axis=1)
        clean = points[finite].copy()
        clean[~np.isfinite(clean[:, 3]), 3] = 0.0
        label = np.full(points.shape[0], IGNORE, np.int32)
        confidence = np.zeros(points.shape[0], np.float32)
        label[finite], confidence[finite] = predict(self.model, clean, tta_rotations=self.tta_rotations)
        proc_ms = (time.perf_counter() - t0) * 1e3
        labelled = LabelledCloud(
            frame=Frame(points=points, cameras=[], frame_id=str(job.header.frame_id)),
            class_names=self.class_names, label=label, confidence=confidence,
            instance=np.full(points.shape[0], IGNORE, np.int32), visible=np.zeros(points.shape[0], bool),
            instance_scores=np.zeros((0, len(self.class_names)), np.float32),
            instance_refined=np.zeros((0, len(self.class_names)), np.float32),
            instance_features=np.zeros((0, 0), np.float32), instance_valid=np.zeros(0, bool),
        )
        self._pub_points.publish(conv.pointcloud2_msg(labelled_cloud_array(labelled, self.palette), job.header))
        self._pub_proc.publish(conv.float64_msg(proc_ms))
        latency = self.get_clock().now().nanoseconds * 1e-9 - conv.stamp_to_sec(job.header.stamp)
        self._pub_latency.publish(conv.float64_msg(latency * 1e3))
        with self._lock:
            self._labelled += 1
            self._proc_ms.append(proc_ms)

    # ------------------------------------------------------------------ diagnostics
    def diagnostic_statuses(self) -> list:
        ok, warn = 0, 1
        me = self.get_fully_qualified_name()
        with self._lock:
            age = None if self._last_seen is None else time.monotonic() - self._last_seen
            rejected = dict(self._rejected)
            new = sum(rejected.values()) - self._rejected_at_last_report
            self._rejected_at_last_report = sum(rejected.values())
            received, labelled, dropped = self._received, self._labelled, self._dropped
            proc = np.array(self._proc_ms) if self._proc_ms else None
        stale = age is None or age > max(2.0, 3 * self._diagnostics_period)
        processing = {"clouds received": received, "clouds labelled": labelled, "dropped (busy)": dropped}
        if proc is not None:
            processing.update({f"processing ms p{q}": f"{np.percentile(proc, q):.1f}" for q in (50, 95)})
        return [
            conv.diagnostic_status(f"{me}: points", warn if stale else ok,
                                   "no recent cloud" if stale else "clouds arriving",
                                   {"age s": "never" if age is None else f"{age:.2f}"}),
            conv.diagnostic_status(f"{me}: rejected inputs", warn if new else ok,
                                   f"{sum(rejected.values())} rejected ({new} since last report)",
                                   {f"rejected {k}": v for k, v in sorted(rejected.items())}),
            conv.diagnostic_status(f"{me}: processing", ok, f"{labelled} clouds labelled, {dropped} dropped while busy",
                                   processing),
        ]

    def _publish_diagnostics(self) -> None:
        conv.publish_diagnostics(self, self._diag_pub, self.diagnostic_statuses())

    def destroy_node(self) -> None:
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=30.0)
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Console entry ``student`` (``ros2 run partlift_ros student --ros-args -p checkpoint:=student.pt``)."""
    from .spin import run_node

    return run_node(StudentNode, "student", (InputError,), threads=2, args=args)
