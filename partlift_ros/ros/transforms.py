"""Where a camera's extrinsic comes from: TF when it knows the chain, else the ``T_cam_lidar`` parameters.

TF is followed in one of two ways, chosen at start:
- ``tf2_ros`` importable: its Buffer and TransformListener (the latest transform of the chain);
- otherwise, ``tf2_msgs`` importable (every ROS 2 install has it, with or without tf2_ros): the node
  subscribes to /tf and /tf_static itself, keeps the latest transform of each child frame and chains
  them with ``calibration.chain_transform``, the code the bag reader uses for /tf_static;
- neither: the parameters only (said once at start).

A transform of the chain that changes over time (/tf) is used at its latest value: LiDAR-camera
chains are static on most robots, and the latest value is what the tf2_ros path looks up too.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..calibration import chain_transform, transform_to_matrix
from ..types import InputError
from . import conversions as conv
from .params import CameraSpec, NodeSettings


class TransformTree:
    """The latest parent -> child transform of every frame heard on /tf and /tf_static."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._edges: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, T_parent_child)

    def add(self, transforms: Any) -> list[str]:
        """Take a TFMessage's ``transforms`` (geometry_msgs/TransformStamped); returns why any was refused."""
        refused = []
        for t in transforms:
            parent, child = str(t.header.frame_id).lstrip("/"), str(t.child_frame_id).lstrip("/")
            try:
                T = transform_to_matrix(t.transform)
            except InputError as exc:
                refused.append(f"{parent} -> {child}: {exc}")
                continue
            if not parent or not child or parent == child or not np.isfinite(T).all():
                refused.append(f"{parent!r} -> {child!r}: empty or equal frame names, or NaN/inf values")
                continue
            with self._lock:
                self._edges[child] = (parent, T)
        return refused

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """T_target_source through the tree, or None when the frames are not connected."""
        with self._lock:
            edges = [(parent, child, T) for child, (parent, T) in self._edges.items()]
        if not edges:
            return None
        return chain_transform(edges, source.lstrip("/"), target.lstrip("/"))


class Extrinsics:
    """T_cam_lidar for each (cloud frame, camera frame) pair, for one node."""

    def __init__(self, node: Any, log: Any) -> None:
        self._node = node
        self._log = log
        self.tree = TransformTree()
        self._tf2_buffer = None
        self.mode = self._follow_tf(node)

    def _follow_tf(self, node: Any) -> str:
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            pass
        else:
            self._tf2_buffer = Buffer()
            self._tf2_listener = TransformListener(self._tf2_buffer, node)
            return "tf2_ros"
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            node.get_logger().info("neither tf2_ros nor tf2_msgs is importable: extrinsics come from the "
                                   "T_cam_lidar parameters only")
            return "parameters"
        from .qos import tf_qos

        for topic, static in (("/tf", False), ("/tf_static", True)):
            node.create_subscription(TFMessage, topic, lambda msg, s=static: self.on_tf_message(msg, s), tf_qos(static))
        return "topics"

    def on_tf_message(self, msg: Any, static: bool) -> None:
        """A /tf or /tf_static message (tf2_msgs/TFMessage, or anything with ``transforms``)."""
        self._log.seen("tf_static" if static else "tf")
        for why in self.tree.add(msg.transforms):
            self._log.reject("tf_invalid", f"{'/tf_static' if static else '/tf'}: transform {why} ignored")

    def __call__(self, lidar_frame: str, camera_frame: str, spec: CameraSpec, settings: NodeSettings) -> np.ndarray | None:
        """TF first, then the camera's parameter (``lidar_frame``/``camera_frame`` limit where it applies)."""
        if camera_frame:
            T = self._from_tf(camera_frame, lidar_frame, settings.tf_timeout)
            if T is not None:
                return T
        if settings.lidar_frame not in ("", lidar_frame):
            return None
        try:
            if spec.name and spec.T_cam_lidar:
                return conv.matrix_param(list(spec.T_cam_lidar))
            if not spec.name and settings.T_cam_lidar and settings.camera_frame in ("", camera_frame):
                return conv.matrix_param(settings.T_cam_lidar)
        except InputError as exc:
            self._log.warn_once(f"bad-param:{spec.label}", f"camera {spec.label}: {exc}")
        return None

    def _from_tf(self, target: str, source: str, timeout: float) -> np.ndarray | None:
        T = self.tree.lookup(target, source)
        if T is not None or self._tf2_buffer is None:
            return T
        from rclpy.duration import Duration
        from rclpy.time import Time
        from tf2_ros import TransformException

        try:
            # Latest transform: LiDAR-camera extrinsics are static.
            t = self._tf2_buffer.lookup_transform(target, source, Time(), timeout=Duration(seconds=timeout))
        except TransformException:
            return None
        return transform_to_matrix(t.transform)
