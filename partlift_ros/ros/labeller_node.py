"""ROS 2 node `labeller`: labels each LiDAR scan with open-vocabulary classes from the paired camera images.

    points (PointCloud2) ─┐
    image (Image)  ───────┼─► pair by stamp ─► Frame ─► [worker] LabelPipeline.process ─► labelled_points
    camera_info ──────────┘        (executor thread)          (newest frame wins)          instance_markers, overlay,
    (one image + camera_info pair per camera)                                              debug/*, /diagnostics

Camera rigs (parameter ``cameras``, see params.py): every cloud is paired with the nearest image of
*each* camera within ``slop``, and the Frame holds the cameras that paired, in the order of
``cameras``. A point is labelled when any camera sees it; it takes the label of its superpoint, whose
CLIP crop comes from the camera that sees most of the superpoint's visible points (a tie goes to the
camera listed first), and the online affinity window holds the instances of all cameras. A camera
with no image within slop, or whose CameraInfo or extrinsic is unusable, is left out of that frame:
the frame is labelled with the cameras present and /diagnostics counts "frames without <camera>"; a
cloud that no camera can serve is refused (``no_image_within_slop`` or the calibration reason). A
cloud waits for every camera to have an image at or after its stamp, at most ``pair_timeout``.
Each camera's overlay goes to ``overlay`` (default camera) or ``<name>/overlay``.

Inputs are checked on the executor thread, so every bad message is counted under its own reason
(``rejected_counts()``, /diagnostics) and logged once per kind and throttle period; the node never
stops on bad data. The pipeline runs on one worker thread with a queue of one frame: a frame that
arrives while it is busy replaces the waiting one (counted as dropped), which bounds latency.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rcl_interfaces.msg import SetParametersResult

from ..calibration import transform_to_matrix
from ..config import ConfigError, PipelineConfig, flatten
from ..io.images import RAW_ENCODINGS
from ..io.pointcloud2 import CloudFormatError, cloud_to_points, labelled_cloud_array
from ..pairing import StampBuffer
from ..types import CameraView, Frame, InputError
from . import conversions as conv
from .params import (
    CAMERA_RESTART_KEYS, MODEL_KEYS, NODE_KEYS, CameraSpec, NodeSettings, build_cameras, build_config,
    build_settings, current_values, declare_all,
)


class LatestSlot:
    """A queue of one: ``put`` replaces what is waiting (newest wins); ``get`` blocks until something is there."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced an item nobody had taken yet."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def get(self, timeout: float | None = None) -> Any:
        """The waiting item (and empty the slot), or None after ``timeout`` or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class Throttle:
    """At most one ``ready(key)`` per ``period`` seconds for each key (one log line per kind of problem)."""

    def __init__(self, period: float) -> None:
        self.period = float(period)
        self._last: dict[str, float] = {}

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period:
            return False
        self._last[key] = now
        return True


@dataclass
class _Cloud:
    points: np.ndarray
    stamp: float
    frame_id: str
    header: Any
    arrived: float  # time.monotonic() when received


@dataclass
class _Image:
    rgb: np.ndarray
    frame_id: str
    header: Any


@dataclass
class _Job:
    frame: Frame
    cloud_header: Any
    image_headers: list  # one per frame.cameras entry
    camera_ids: list[int]  # index into the node's cameras of each frame.cameras entry


class LabellerNode(Node):
    """The labeller; ``labeler`` injects a CLIP labeller (tests), else the pipeline loads ``clip.model``."""

    def __init__(self, labeler: Any = None, node_name: str = "labeller", **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        declare_all(self)
        values = current_values(self)
        self.settings: NodeSettings = build_settings(values)
        self._cameras: list[CameraSpec] = build_cameras(values)
        cfg = build_config(values)
        from ..pipeline import LabelPipeline
        from ..render import palette_for

        self._LabelPipeline, self._palette_for = LabelPipeline, palette_for
        self._pipeline = LabelPipeline(cfg, labeler=labeler)
        if labeler is not None:
            # An injected labeller keeps its own template list; make it follow this node's parameters.
            self._pipeline.set_templates(cfg.clip.templates)
        self._palette = palette_for(cfg.classes)

        self._lock = threading.RLock()  # guards everything below that callbacks and the worker share
        n_cams = len(self._cameras)
        self._images: list[StampBuffer[_Image]] = [StampBuffer(self.settings.image_buffer) for _ in range(n_cams)]
        self._pending: deque[_Cloud] = deque()
        self._camera_info: list[conv.CameraIntrinsics | None] = [None] * n_cams
        self._inputs = ("points", *(c.input_key(w) for c in self._cameras for w in ("image", "camera_info")))
        self._frames_without: Counter[str] = Counter()  # camera label -> frames labelled without it
        self._partial_at_last_report = 0
        self._last_stamp: dict[str, float] = {}
        self._received: Counter[str] = Counter()
        self._last_seen: dict[str, float] = {}
        self._rejected: Counter[str] = Counter()
        self._repaired: Counter[str] = Counter()
        self._rejected_at_last_report = 0
        self._labelled = 0
        self._paired = 0
        self._dropped = 0
        self._frame_index = 0
        self._proc_ms: deque[float] = deque(maxlen=500)
        self._pending_cfg: PipelineConfig | None = None
        self._pending_reset = False
        self._warned_once: set[str] = set()
        self._throttle = Throttle(self.settings.log_throttle)

        self._tf_buffer = self._make_tf()
        self._diag_pub = conv.diagnostics_publisher(self)
        self._pub_points = self.create_publisher(conv_type("PointCloud2"), "labelled_points", 5)
        self._pub_markers = self.create_publisher(conv_type("MarkerArray"), "instance_markers", 5)
        self._pub_overlay = [
            self.create_publisher(conv_type("Image"), f"{c.name}/overlay" if c.name else "overlay", 2)
            for c in self._cameras
        ]
        self._pub_proc = self.create_publisher(conv_type("Float64"), "debug/processing_time_ms", 10)
        self._pub_latency = self.create_publisher(conv_type("Float64"), "debug/pipeline_latency_ms", 10)

        inputs = MutuallyExclusiveCallbackGroup()
        image_type = conv_type("CompressedImage" if self.settings.use_compressed else "Image")
        self.create_subscription(conv_type("PointCloud2"), "points", self._on_points, qos_profile_sensor_data,
                                 callback_group=inputs)
        if self._cameras[0].name:  # a named rig: each camera on its own topics
            for i, cam in enumerate(self._cameras):
                self.create_subscription(image_type, cam.image_topic, partial(self._on_image, i),
                                         qos_profile_sensor_data, callback_group=inputs)
                self.create_subscription(conv_type("CameraInfo"), cam.camera_info_topic,
                                         partial(self._on_camera_info, i), qos_profile_sensor_data,
                                         callback_group=inputs)
        else:  # the default camera, on the relative names that launch/labeller.launch.py remaps
            self.create_subscription(image_type, "image", partial(self._on_image, 0), qos_profile_sensor_data,
                                     callback_group=inputs)
            self.create_subscription(conv_type("CameraInfo"), "camera_info", partial(self._on_camera_info, 0),
                                     qos_profile_sensor_data, callback_group=inputs)
        timers = MutuallyExclusiveCallbackGroup()
        self._diag_timer = self.create_timer(self.settings.diagnostics_period, self._publish_diagnostics,
                                             callback_group=timers)
        self._pair_timer = self.create_timer(max(self.settings.pair_timeout / 2, 0.05), self._pair_pending_locked,
                                             callback_group=inputs)

        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._work, name="labeller-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"labeller ready: {len(cfg.classes)} classes, cameras {[c.label for c in self._cameras]}, "
            f"affinity online (window {cfg.affinity.window_frames}), "
            f"slop {self.settings.slop} s, max_points {self.settings.max_points}"
        )

    # ------------------------------------------------------------------ public read-outs (tests, tools)
    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def repaired_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._repaired)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": dict(self._received), "paired": self._paired, "labelled": self._labelled,
                "dropped": self._dropped, "rejected": sum(self._rejected.values()),
                "processing_ms": list(self._proc_ms), "frames_without": dict(self._frames_without),
            }

    @property
    def cameras(self) -> list[CameraSpec]:
        return list(self._cameras)

    @property
    def pipeline(self):
        return self._pipeline

    # ------------------------------------------------------------------ reporting
    def _reject(self, reason: str, message: str) -> None:
        with self._lock:
            self._rejected[reason] += 1
        if self._throttle.ready(reason):
            self.get_logger().warning(f"[{reason}] {message}")

    def _repair(self, reason: str, message: str) -> None:
        with self._lock:
            self._repaired[reason] += 1
        if self._throttle.ready(reason):
            self.get_logger().info(f"[{reason}] {message}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned_once:
            self._warned_once.add(key)
            self.get_logger().warning(message)

    def _seen(self, what: str) -> None:
        with self._lock:
            self._received[what] += 1
            self._last_seen[what] = time.monotonic()

    def _stamp_went_back(self, what: str, stamp: float) -> bool:
        """Record the stamp; True when it is older than the last one of the same input (bag loop, clock reset)."""
        last = self._last_stamp.get(what)
        self._last_stamp[what] = stamp
        return last is not None and stamp < last

    # ------------------------------------------------------------------ input callbacks (executor thread)
    def _on_points(self, msg: Any) -> None:
        self._seen("points")
        stamp = conv.stamp_to_sec(msg.header.stamp)
        frame_id = str(msg.header.frame_id)
        if not frame_id:
            self._reject("cloud_no_frame_id", "PointCloud2 with an empty header.frame_id: cannot find its extrinsics")
            return
        declared = int(msg.width) * int(msg.height)
        if declared > self.settings.max_points:
            self._reject("cloud_too_large", f"PointCloud2 with {declared} points exceeds max_points {self.settings.max_points}")
            return
        try:
            points = cloud_to_points(msg)
        except CloudFormatError as exc:
            self._reject(exc.reason, f"PointCloud2 in {frame_id!r}: {exc}")
            return
        points = self._finite_points(points, frame_id)
        if points is None:
            return
        with self._lock:
            if self._stamp_went_back("points", stamp):
                self._reject("cloud_stamp_backwards", f"PointCloud2 stamp {stamp:.3f} is older than the previous one: "
                             "time jumped back (bag loop?), pairing buffers and affinity window reset")
                self._reset_time()
            self._pending.append(_Cloud(points, stamp, frame_id, msg.header, time.monotonic()))
            self._pair_pending()

    def _finite_points(self, points: np.ndarray, frame_id: str) -> np.ndarray | None:
        if points.shape[0] == 0:
            self._reject("cloud_empty", f"PointCloud2 in {frame_id!r} has no points")
            return None
        finite = np.isfinite(points[:, :3]).all(axis=1)
        if not finite.all():
            if not finite.any():
                self._reject("cloud_all_nonfinite", f"PointCloud2 in {frame_id!r}: every point has NaN/inf coordinates")
                return None
            self._repair("cloud_nonfinite_points_dropped",
                         f"PointCloud2 in {frame_id!r}: dropped {int((~finite).sum())} points with NaN/inf coordinates")
            points = points[finite]
        bad_i = ~np.isfinite(points[:, 3])
        if bad_i.any():
            points[bad_i, 3] = 0.0
        return points

    def _on_image(self, cam: int, msg: Any) -> None:
        spec = self._cameras[cam]
        key = spec.input_key("image")
        where = f"camera {spec.label}: " if spec.name else ""
        self._seen(key)
        stamp = conv.stamp_to_sec(msg.header.stamp)
        if hasattr(msg, "encoding"):
            if int(msg.width) == 0 or int(msg.height) == 0:
                self._reject("image_empty", f"{where}Image is {msg.width}x{msg.height}")
                return
            if str(msg.encoding).strip().lower() not in RAW_ENCODINGS:
                self._reject("image_unsupported_encoding", f"{where}Image encoding {msg.encoding!r} is not "
                             f"supported (use one of {sorted(RAW_ENCODINGS)})")
                return
        try:
            rgb = conv.image_from_msg(msg)
        except InputError as exc:
            self._reject("image_malformed" if hasattr(msg, "encoding") else "image_undecodable", f"{where}{exc}")
            return
        with self._lock:
            if self._stamp_went_back(key, stamp):
                self._reject("image_stamp_backwards", f"{where}Image stamp {stamp:.3f} is older than the previous "
                             "one: image buffer cleared")
                self._images[cam].clear()
            self._images[cam].push(stamp, _Image(rgb, str(msg.header.frame_id), msg.header))
            self._pair_pending()

    def _on_camera_info(self, cam: int, msg: Any) -> None:
        spec = self._cameras[cam]
        self._seen(spec.input_key("camera_info"))
        try:
            info = conv.camera_info_to_intrinsics(msg)
        except conv.CameraInfoError as exc:
            where = f"camera {spec.label}: " if spec.name else ""
            self._reject(exc.reason, f"{where}{exc} (keeping the previous CameraInfo)")
            return
        with self._lock:
            self._camera_info[cam] = info

    # ------------------------------------------------------------------ pairing
    def _pair_pending_locked(self) -> None:
        with self._lock:
            self._pair_pending()

    def _pair_pending(self) -> None:
        """Pair waiting clouds with the nearest image of each camera within slop (caller holds the lock).

        A cloud waits while a later image could still be nearer (some camera has no image at or
        after its stamp yet), at most ``pair_timeout`` seconds of wall time.
        """
        s = self.settings
        newest = [float(b.stamps.max()) if len(b) else None for b in self._images]
        while self._pending:
            cloud = self._pending[0]
            final = all(n is not None and n >= cloud.stamp for n in newest)
            timed_out = time.monotonic() - cloud.arrived > s.pair_timeout
            if not final and not timed_out and len(self._pending) <= 2:
                return
            self._pending.popleft()
            hits = [b.take_nearest(cloud.stamp, s.slop, consume=False) for b in self._images]
            if all(h is None for h in hits):
                buffered = ", ".join(f"{c.label} {len(b)}" for c, b in zip(self._cameras, self._images))
                self._reject("no_image_within_slop", f"no image within {s.slop} s of the cloud at {cloud.stamp:.3f} "
                             f"(buffered: {buffered})")
                continue
            self._paired += 1
            self._submit(cloud, [(i, h[1]) for i, h in enumerate(hits) if h is not None],
                         [i for i, h in enumerate(hits) if h is None])

    def _submit(self, cloud: _Cloud, images: list[tuple[int, _Image]], missing: list[int]) -> None:
        """Check each camera's calibration and extrinsic, build the Frame from the usable ones and hand it
        to the worker (lock held). Cameras left out are counted; with none left the cloud is not labelled."""
        views, headers, ids = [], [], []
        left_out = list(missing)
        for cam, image in images:  # in the order of `cameras`, which decides ties between cameras
            view = self._camera_view(cam, cloud, image)
            if view is None:
                left_out.append(cam)
                continue
            views.append(view)
            headers.append(image.header)
            ids.append(cam)
        if not views:
            return
        for cam in left_out:
            self._frames_without[self._cameras[cam].label] += 1
        frame = Frame(points=cloud.points, cameras=views, stamp=cloud.stamp,
                      index=self._frame_index, frame_id=cloud.frame_id)
        self._frame_index += 1
        try:
            frame.validate()
        except InputError as exc:
            self._reject("frame_invalid", str(exc))
            return
        if self._slot.put(_Job(frame, cloud.header, headers, ids)):
            self._dropped += 1

    def _camera_view(self, cam: int, cloud: _Cloud, image: _Image) -> CameraView | None:
        """The CameraView of one camera for this cloud, or None (reason counted) when it cannot be used."""
        spec = self._cameras[cam]
        where = f"camera {spec.label}: " if spec.name else ""
        info = self._camera_info[cam]
        image_stamp = conv.stamp_to_sec(image.header.stamp)
        h, w = image.rgb.shape[:2]
        if info is None:
            self._reject("camera_info_missing", f"{where}no valid CameraInfo received yet: cannot project the cloud")
            return None
        timeout = self.settings.camera_info_timeout
        if timeout > 0 and abs(image_stamp - info.stamp) > timeout:
            self._reject("camera_info_stale", f"{where}CameraInfo stamp {info.stamp:.3f} is "
                         f"{abs(image_stamp - info.stamp):.2f} s from the image's (camera_info_timeout {timeout} s)")
            return None
        if info.size != (0, 0) and info.size != (w, h):
            self._reject("camera_info_size_mismatch",
                         f"{where}CameraInfo says {info.size[0]}x{info.size[1]} but the image is {w}x{h}")
            return None
        camera_frame = image.frame_id or info.frame_id
        T = self._extrinsics(cloud.frame_id, camera_frame, spec)
        if T is None:
            self._rejected["no_extrinsics"] += 1
            return None
        return CameraView(image.rgb, info.K, T, info.D, camera_frame)

    def _extrinsics(self, lidar_frame: str, camera_frame: str, spec: CameraSpec) -> np.ndarray | None:
        """T_cam_lidar from TF, else from the camera's parameter; None (warned once) when neither has it.

        The default camera uses ``T_cam_lidar`` (limited by ``lidar_frame``/``camera_frame``); a named
        camera uses ``<name>.T_cam_lidar`` (limited by ``lidar_frame``).
        """
        if self._tf_buffer is not None and camera_frame:
            T = self._lookup_tf(camera_frame, lidar_frame)
            if T is not None:
                return T
        s = self.settings
        if s.lidar_frame in ("", lidar_frame):
            if spec.name and spec.T_cam_lidar:
                return conv.matrix_param(list(spec.T_cam_lidar))
            if not spec.name and s.T_cam_lidar and s.camera_frame in ("", camera_frame):
                return conv.matrix_param(s.T_cam_lidar)
        param = f"{spec.name}.T_cam_lidar" if spec.name else "T_cam_lidar"
        self._warn_once(
            f"tf:{lidar_frame}->{camera_frame}",
            f"no transform from {lidar_frame!r} to camera {camera_frame!r} (TF or the {param} parameter): "
            "skipping this camera",
        )
        return None

    def _make_tf(self):
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            self.get_logger().info("tf2_ros is not importable: extrinsics come from the T_cam_lidar parameter")
            return None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self)
        return buffer

    def _lookup_tf(self, target: str, source: str) -> np.ndarray | None:
        from rclpy.duration import Duration
        from rclpy.time import Time
        from tf2_ros import TransformException

        try:
            # Latest transform: LiDAR-camera extrinsics are static.
            t = self._tf_buffer.lookup_transform(target, source, Time(),
                                                 timeout=Duration(seconds=self.settings.tf_timeout))
        except TransformException:
            return None
        return transform_to_matrix(t.transform)

    def _reset_time(self) -> None:
        """After a jump back in time: forget buffered inputs and the affinity context."""
        for buffer, cam in zip(self._images, self._cameras):
            buffer.clear()
            self._last_stamp.pop(cam.input_key("image"), None)
        self._pending.clear()
        self._pending_reset = True
        self._slot.wake()

    # ------------------------------------------------------------------ worker thread
    def _work(self) -> None:
        while not self._slot.closed:
            job = self._slot.get(timeout=0.2)
            try:
                self._apply_pending_config()
            except Exception as exc:  # e.g. a new clip.model that cannot be loaded: keep running, say why
                self._reject("reconfigure_error", f"could not apply the new parameters: {type(exc).__name__}: {exc}")
            if job is None:
                continue
            try:
                self._label(job)
            except Exception as exc:  # the node never dies on one frame; the reason is counted and logged
                self._reject("pipeline_error", f"frame {job.frame.index}: {type(exc).__name__}: {exc}")

    def _label(self, job: _Job) -> None:
        t0 = time.perf_counter()
        try:
            results = self._pipeline.process(job.frame)
        except InputError as exc:
            self._reject("pipeline_input_error", str(exc))
            return
        proc_ms = (time.perf_counter() - t0) * 1e3
        labelled = results[-1]
        palette = self._palette
        self._pub_points.publish(conv.pointcloud2_msg(labelled_cloud_array(labelled, palette), job.cloud_header))
        self._pub_markers.publish(conv.instance_markers(labelled, palette, job.cloud_header))
        if self.settings.publish_overlay:
            for j, (cam, header) in enumerate(zip(job.camera_ids, job.image_headers)):
                pub = self._pub_overlay[cam]
                if pub.get_subscription_count() > 0:
                    pub.publish(conv.image_msg(self._overlay(labelled, j), header))
        self._pub_proc.publish(conv.float64_msg(proc_ms))
        latency = self.get_clock().now().nanoseconds * 1e-9 - conv.stamp_to_sec(job.cloud_header.stamp)
        self._pub_latency.publish(conv.float64_msg(latency * 1e3))
        with self._lock:
            self._labelled += 1
            self._proc_ms.append(proc_ms)

    def _overlay(self, labelled, camera: int) -> np.ndarray:
        from ..calibration import project_points
        from ..render import class_colours, overlay_image

        cam = labelled.frame.cameras[camera]
        proj = project_points(labelled.frame.points, cam.K, cam.T_cam_lidar, cam.size, cam.D)
        colours = class_colours(labelled.label, self._palette)
        return overlay_image(cam.image, proj.uv, proj.in_image, colours, self.settings.overlay_radius, proj.depth)

    def _apply_pending_config(self) -> None:
        """Swap in a new config between frames (worker thread, so it never races process())."""
        with self._lock:
            cfg, self._pending_cfg = self._pending_cfg, None
            reset, self._pending_reset = self._pending_reset, False
        if reset:
            self._pipeline.reset()
        if cfg is None:
            return
        old = flatten(self._pipeline.cfg)
        changed = {k for k, v in flatten(cfg).items() if old.get(k) != v}
        if not changed:
            return
        # Keep the loaded CLIP model unless the model itself changed (then it loads on first use).
        labeler = None if changed & set(MODEL_KEYS) else self._pipeline.labeler
        pipeline = self._LabelPipeline(cfg, labeler=labeler)
        pipeline.set_templates(cfg.clip.templates)  # also hands the templates to the kept labeller
        self._pipeline = pipeline
        self._palette = self._palette_for(cfg.classes)
        if changed & {"classes", "unseen_classes", "clip.templates"} and labeler is not None:
            # Recompute the text embeddings now so the next frame does not pay for it.
            emb = self._pipeline.text_embeddings()
            self.get_logger().info(f"vocabulary updated: {len(cfg.classes)} classes, "
                                   f"{len(cfg.clip.templates)} templates, text embeddings {tuple(emb.shape)}")
        else:
            self.get_logger().info(f"config updated: {sorted(changed)}")

    # ------------------------------------------------------------------ parameters
    def _proposed_values(self, params: list) -> dict[str, Any]:
        values = current_values(self)
        values.update({p.name: p.value for p in params})
        return values

    def _check_parameters(self, params: list) -> SetParametersResult:
        names = {p.name for p in params}
        if "use_compressed" in names:
            return SetParametersResult(successful=False, reason="use_compressed changes the subscription type: restart")
        if "image_buffer" in names:
            return SetParametersResult(successful=False, reason="image_buffer is fixed at start: restart")
        if "cameras" in names or any(n.rsplit(".", 1)[-1] in CAMERA_RESTART_KEYS for n in names):
            return SetParametersResult(successful=False, reason="the camera list and topics are fixed at start: restart")
        try:
            values = self._proposed_values(params)
            build_config(values)
            build_settings(values)
            build_cameras(values)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list) -> None:
        values = current_values(self)
        settings = build_settings(values)
        cameras = build_cameras(values)
        camera_names = {c.name for c in cameras if c.name}
        with self._lock:
            self.settings = settings
            self._cameras = cameras
            self._throttle.period = settings.log_throttle
            if any(p.name not in NODE_KEYS and p.name.split(".", 1)[0] not in camera_names for p in params):
                self._pending_cfg = build_config(values)
        self._slot.wake()

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        self._pair_pending_locked()
        conv.publish_diagnostics(self, self._diag_pub, self.diagnostic_statuses())

    def diagnostic_statuses(self) -> list:
        ok, warn = 0, 1
        me = self.get_fully_qualified_name()
        now = time.monotonic()
        stale_after = max(2.0, 3 * self.settings.diagnostics_period)
        with self._lock:
            ages = {k: (now - self._last_seen[k]) if k in self._last_seen else None for k in self._inputs}
            without = dict(self._frames_without)
            new_partial = sum(without.values()) - self._partial_at_last_report
            self._partial_at_last_report = sum(without.values())
            received = dict(self._received)
            rejected = dict(self._rejected)
            repaired = dict(self._repaired)
            new_rejections = sum(rejected.values()) - self._rejected_at_last_report
            self._rejected_at_last_report = sum(rejected.values())
            paired, labelled, dropped = self._paired, self._labelled, self._dropped
            proc = np.array(self._proc_ms) if self._proc_ms else None
        missing = [k for k, a in ages.items() if a is None or a > stale_after]
        freshness = {f"{k} age s": ("never" if a is None else f"{a:.2f}") for k, a in ages.items()}
        freshness.update({f"{k} received": received.get(k, 0) for k in self._inputs})
        clouds = received.get("points", 0)
        unpaired = rejected.get("no_image_within_slop", 0)
        success = paired / (paired + unpaired) if paired + unpaired else 0.0
        processing = {"frames labelled": labelled, "frames dropped (busy)": dropped}
        if proc is not None:
            processing.update({f"processing ms p{q}": f"{np.percentile(proc, q):.1f}" for q in (50, 95)})
        return [
            conv.diagnostic_status(f"{me}: inputs", warn if missing else ok,
                                   f"no recent {', '.join(missing)}" if missing else "all inputs fresh", freshness),
            conv.diagnostic_status(f"{me}: pairing",
                                   ok if (success >= 0.5 or clouds == 0) and not new_partial else warn,
                                   f"{paired} of {paired + unpaired} clouds paired with an image"
                                   + (f", {new_partial} camera(s) missing from frames since last report"
                                      if new_partial else ""),
                                   {"clouds paired": paired, "clouds without image": unpaired,
                                    "pairing success": f"{success:.3f}",
                                    **{f"frames without {c.label}": without.get(c.label, 0)
                                       for c in self._cameras if len(self._cameras) > 1}}),
            conv.diagnostic_status(f"{me}: rejected inputs", warn if new_rejections else ok,
                                   f"{sum(rejected.values())} rejected ({new_rejections} since last report)",
                                   {**{f"rejected {k}": v for k, v in sorted(rejected.items())},
                                    **{f"repaired {k}": v for k, v in sorted(repaired.items())}}),
            conv.diagnostic_status(f"{me}: processing", warn if paired and not labelled else ok,
                                   f"{labelled} frames labelled, {dropped} dropped while busy", processing),
        ]

    # ------------------------------------------------------------------ shutdown
    def destroy_node(self) -> None:
        self._slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=30.0)
        super().destroy_node()


def conv_type(name: str):
    """Message classes by name, imported when the node is built."""
    if name in ("PointCloud2", "Image", "CompressedImage", "CameraInfo"):
        import sensor_msgs.msg as mod
    elif name == "MarkerArray":
        import visualization_msgs.msg as mod
    else:
        import std_msgs.msg as mod
    return getattr(mod, name)


def main(args: list[str] | None = None) -> int:
    """Console entry ``labeller`` (``ros2 run partlift_ros labeller``)."""
    from .spin import run_node

    return run_node(LabellerNode, "labeller", (ConfigError, InputError), threads=3, args=args)
