"""rosbag2 output without ROS (rosbags): atomic bag files and the labelled-results bag.

``BagOutput`` writes into a temporary folder beside the target and moves the result into place
only when closed without an error, so a crash never leaves a half-written bag under the real name.
Targets: ``x.mcap`` or ``x.db3`` (one self-contained storage file, as Foxglove and rosbags read it)
or a path without a suffix (a rosbag2 folder with metadata.yaml and an MCAP file, as ``ros2 bag play``
reads it); ``x.bag`` (ROS 1) or any other suffix is refused rather than written as a folder. Messages are built from the rosbags typestore of a ROS 2 distro,
so the type names, definitions and hashes are the real ROS 2 ones.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import invert_se3, matrix_to_quaternion, project_points
from ..types import InputError, LabelledCloud

DISTROS = ("humble", "jazzy")
BAG_VERSION = 8  # rosbag2 metadata version 8 (Iron); rosbags writes 8 or 9


def get_ros_typestore(distro: str = "humble") -> Any:
    from rosbags.typesys import Stores, get_typestore

    stores = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
    if distro not in stores:
        raise InputError(f"unknown ROS 2 distro {distro!r}; expected one of {DISTROS}")
    return get_typestore(stores[distro])


def split_stamp(seconds: float) -> tuple[int, int]:
    """Float seconds -> (sec, nanosec) with nanosec in [0, 1e9)."""
    if not math.isfinite(seconds):
        raise InputError(f"stamp {seconds} is not finite")
    sec = math.floor(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return int(sec), nanosec


def header(ts: Any, seconds: float, frame_id: str) -> Any:
    sec, nanosec = split_stamp(seconds)
    Time = ts.types["builtin_interfaces/msg/Time"]
    return ts.types["std_msgs/msg/Header"](stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def pointcloud2_msg(ts: Any, fields: dict[str, Any], seconds: float, frame_id: str) -> Any:
    """A sensor_msgs/PointCloud2 from ``encode_pointcloud2``'s dict."""
    PointField = ts.types["sensor_msgs/msg/PointField"]
    return ts.types["sensor_msgs/msg/PointCloud2"](
        header=header(ts, seconds, frame_id),
        height=fields["height"],
        width=fields["width"],
        fields=[PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields["fields"]],
        is_bigendian=bool(fields["is_bigendian"]),
        point_step=fields["point_step"],
        row_step=fields["row_step"],
        data=np.frombuffer(fields["data"], dtype=np.uint8),
        is_dense=bool(fields["is_dense"]),
    )


def image_msg(ts: Any, rgb: np.ndarray, seconds: float, frame_id: str) -> Any:
    from .images import image_msg_fields

    return ts.types["sensor_msgs/msg/Image"](header=header(ts, seconds, frame_id), **image_msg_fields(rgb))


def camera_info_msg(
    ts: Any, K: np.ndarray, size: tuple[int, int], seconds: float, frame_id: str, D: np.ndarray | None = None
) -> Any:
    """A plumb_bob CameraInfo for a rectified camera: P = [K | 0], R = I."""
    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    P = np.hstack([K, np.zeros((3, 1))])
    d = np.zeros(5) if D is None else np.asarray(D, dtype=np.float64).reshape(-1)
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    return ts.types["sensor_msgs/msg/CameraInfo"](
        header=header(ts, seconds, frame_id),
        height=int(size[1]),
        width=int(size[0]),
        distortion_model="plumb_bob",
        d=d,
        k=K.reshape(-1),
        r=np.eye(3).reshape(-1),
        p=P.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
    )


def transform_stamped(ts: Any, T_parent_child: np.ndarray, parent: str, child: str, seconds: float) -> Any:
    """geometry_msgs/TransformStamped: the pose of ``child`` in ``parent`` (maps child coords to parent)."""
    T = np.asarray(T_parent_child, dtype=np.float64)
    x, y, z, w = matrix_to_quaternion(T[:3, :3])
    g = "geometry_msgs/msg/"
    return ts.types[g + "TransformStamped"](
        header=header(ts, seconds, parent),
        child_frame_id=child,
        transform=ts.types[g + "Transform"](
            translation=ts.types[g + "Vector3"](x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            rotation=ts.types[g + "Quaternion"](x=x, y=y, z=z, w=w),
        ),
    )


def tf_static_msg(ts: Any, edges: list[tuple[str, str, np.ndarray]], seconds: float) -> Any:
    """tf2_msgs/TFMessage from (parent, child, T_parent_child) edges."""
    return ts.types["tf2_msgs/msg/TFMessage"](
        transforms=[transform_stamped(ts, T, parent, child, seconds) for parent, child, T in edges]
    )


def _latched_qos() -> list[Any]:
    """The transient-local QoS /tf_static is published with, so players re-latch it."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(sec=0, nsec=0)
    return [Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                zero, zero, QosLiveliness.AUTOMATIC, zero, False)]


BAG_SUFFIXES = (".mcap", ".db3")


def check_bag_output(path: str | Path, overwrite: bool = False) -> Path:
    """A bag output named as the user wrote it: ``x.mcap`` / ``x.db3`` is one file, a name without a suffix a
    rosbag2 folder; any other suffix (``x.bag`` is ROS 1) is an error, and so is an existing path unless
    ``overwrite``."""
    path = Path(path)
    if path.suffix and path.suffix not in BAG_SUFFIXES:
        raise InputError(f"{path}: partlift writes rosbag2 bags: name it {path.stem}.mcap (one file), "
                         f"{path.stem}.db3, or {path.stem} without a suffix (a bag folder)")
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists already (pass --overwrite to replace it)")
    return path


class BagOutput:
    """Write a rosbag2 (``.mcap``, ``.db3`` or folder, see ``check_bag_output``) atomically; use as a context manager."""

    def __init__(self, path: str | Path, distro: str = "humble", overwrite: bool = False) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.path = check_bag_output(path, overwrite)
        self.ts = get_ros_typestore(distro)
        self.single_file = self.path.suffix in (".mcap", ".db3")
        plugin = StoragePlugin.SQLITE3 if self.path.suffix == ".db3" else StoragePlugin.MCAP
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_root = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"))
        self._bag_dir = self._tmp_root / self.path.stem  # rosbags names the storage file after its folder
        try:
            self._writer = Writer(self._bag_dir, version=BAG_VERSION, storage_plugin=plugin)
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
            raise
        self._connections: dict[str, Any] = {}
        self._closed = False

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None:
        if topic in self._connections:
            raise InputError(f"topic {topic} was added twice")
        qos = _latched_qos() if latched else ()
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.ts, offered_qos_profiles=qos
        )

    def write(self, topic: str, msg: Any, seconds: float) -> None:
        self.write_cdr(topic, self.ts.serialize_cdr(msg, self._connections[topic].msgtype), seconds)

    def write_cdr(self, topic: str, data: bytes, seconds: float) -> None:
        """A message already serialised (CDR bytes), e.g. copied from another bag as it is."""
        sec, nanosec = split_stamp(seconds)
        self._writer.write(self._connections[topic], sec * 1_000_000_000 + nanosec, bytes(data))

    def close(self) -> Path:
        """Finish the bag and move it to its real name."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._writer.close()
            if self.single_file:
                if self.path.is_dir():  # --overwrite of a bag folder by a one-file bag
                    shutil.rmtree(self.path)
                os.replace(self._bag_dir / f"{self._bag_dir.name}{self.path.suffix}", self.path)
            else:
                if self.path.is_dir():
                    shutil.rmtree(self.path)
                elif self.path.exists():
                    self.path.unlink()
                os.replace(self._bag_dir, self.path)
        finally:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written; the target path is left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            shutil.rmtree(self._tmp_root, ignore_errors=True)

    def __enter__(self) -> BagOutput:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def instance_summary(labelled: LabelledCloud) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per labelled instance: (ids, centroids (M, 3), class ids (majority of its points), mean confidence).

    Only instances with at least one labelled point are returned.
    """
    inst = np.asarray(labelled.instance, dtype=np.int64)
    label = np.asarray(labelled.label, dtype=np.int64)
    conf = np.asarray(labelled.confidence, dtype=np.float64)
    xyz = np.asarray(labelled.frame.points, dtype=np.float64)[:, :3]
    ok = (inst >= 0) & (label >= 0)
    if not ok.any():
        return np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0)
    inst, label, conf, xyz = inst[ok], label[ok], conf[ok], xyz[ok]
    m, c = int(inst.max()) + 1, int(label.max()) + 1
    counts = np.bincount(inst * c + label, minlength=m * c).reshape(m, c)
    members = counts.sum(axis=1)
    ids = np.flatnonzero(members > 0)
    centroids = np.stack([np.bincount(inst, weights=xyz[:, k], minlength=m) for k in range(3)], axis=1)
    centroids = centroids[ids] / members[ids, None]
    cls = counts[ids].argmax(axis=1)
    winner = cls[np.searchsorted(ids, inst)] == label  # points that carry their instance's class
    conf_sum = np.bincount(inst[winner], weights=conf[winner], minlength=m)[ids]
    mean_conf = conf_sum / counts[ids, cls]
    return ids, centroids, cls, mean_conf


class LabelledBagWriter:
    """Labelled clouds -> a bag for Foxglove / RViz / ``ros2 bag play``.

    Per cloud: ``<ns>/labelled_points`` (PointCloud2 x y z intensity label confidence instance rgb, with the
    input's height x width when it was organised, non-finite points kept in place with label -1),
    ``<ns>/instance_markers`` (MarkerArray: DELETEALL, then a TEXT_VIEW_FACING "class 0.87" at each
    labelled instance's centroid), ``<ns>/overlay`` (rgb8 camera image with the class-coloured
    points) and ``<ns>/camera_info`` (its calibration, for RViz's Camera display and so that
    RosbagReader can read the bag back); ``/tf_static`` (lidar -> camera) once, with the first cloud.
    """

    def __init__(
        self,
        path: str | Path,
        palette: np.ndarray | None = None,
        distro: str = "humble",
        namespace: str = "",
        overwrite: bool = False,
        point_radius: int = 2,
        text_size: float = 0.6,
    ) -> None:
        self.bag = BagOutput(path, distro=distro, overwrite=overwrite)
        self.ts = self.bag.ts
        self.palette = None if palette is None else np.asarray(palette, dtype=np.uint8)
        ns = namespace.rstrip("/")
        self.topics = {
            "points": f"{ns}/labelled_points",
            "markers": f"{ns}/instance_markers",
            "overlay": f"{ns}/overlay",
            "camera_info": f"{ns}/camera_info",
            "tf": "/tf_static",
        }
        self.bag.add_topic(self.topics["points"], "sensor_msgs/msg/PointCloud2")
        self.bag.add_topic(self.topics["markers"], "visualization_msgs/msg/MarkerArray")
        self.bag.add_topic(self.topics["overlay"], "sensor_msgs/msg/Image")
        self.bag.add_topic(self.topics["camera_info"], "sensor_msgs/msg/CameraInfo")
        self.bag.add_topic(self.topics["tf"], "tf2_msgs/msg/TFMessage", latched=True)
        self.point_radius = int(point_radius)
        self.text_size = float(text_size)
        self._wrote_tf = False
        self.count = 0

    def _palette_for(self, labelled: LabelledCloud) -> np.ndarray:
        if self.palette is None:
            from ..render import palette_for

            self.palette = palette_for(list(labelled.class_names))
        return self.palette

    def write(self, labelled: LabelledCloud) -> None:
        from .pointcloud2 import encode_pointcloud2, labelled_cloud_array

        frame = labelled.frame
        palette = self._palette_for(labelled)
        if not self._wrote_tf and frame.cameras:
            edges = [(frame.frame_id, cam.frame_id, invert_se3(np.asarray(cam.T_cam_lidar))) for cam in frame.cameras]
            self.bag.write(self.topics["tf"], tf_static_msg(self.ts, edges, frame.stamp), frame.stamp)
            self._wrote_tf = True
        cloud = labelled_cloud_array(labelled, palette)
        if frame.layout is not None:  # an organised input stays organised: labels line up with its cells
            cloud = cloud.reshape(tuple(int(n) for n in frame.layout))
        cloud = encode_pointcloud2(cloud)
        self.bag.write(self.topics["points"], pointcloud2_msg(self.ts, cloud, frame.stamp, frame.frame_id), frame.stamp)
        self.bag.write(self.topics["markers"], self._markers(labelled, palette), frame.stamp)
        if frame.cameras:
            cam = frame.camera
            self.bag.write(self.topics["overlay"], self._overlay(labelled, palette), frame.stamp)
            info = camera_info_msg(self.ts, cam.K, cam.size, frame.stamp, cam.frame_id, D=cam.D)
            self.bag.write(self.topics["camera_info"], info, frame.stamp)
        self.count += 1

    def _overlay(self, labelled: LabelledCloud, palette: np.ndarray) -> Any:
        from ..render import class_colours, overlay_image

        frame, cam = labelled.frame, labelled.frame.camera
        proj = project_points(frame.points[:, :3], cam.K, cam.T_cam_lidar, cam.size, D=cam.D)
        colours = class_colours(labelled.label, palette)
        img = overlay_image(cam.image, proj.uv, proj.in_image, colours, radius=self.point_radius, depth=proj.depth)
        return image_msg(self.ts, img, frame.stamp, cam.frame_id)

    def _markers(self, labelled: LabelledCloud, palette: np.ndarray) -> Any:
        ts, frame = self.ts, labelled.frame
        Marker = ts.types["visualization_msgs/msg/Marker"]
        g = "geometry_msgs/msg/"
        hdr = header(ts, frame.stamp, frame.frame_id)
        ids, centroids, classes, confidence = instance_summary(labelled)

        def marker(**kw: Any) -> Any:
            base = dict(
                header=hdr, ns="partlift_instances", id=0, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                pose=ts.types[g + "Pose"](
                    position=ts.types[g + "Point"](x=0.0, y=0.0, z=0.0),
                    orientation=ts.types[g + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
                ),
                scale=ts.types[g + "Vector3"](x=0.0, y=0.0, z=self.text_size),
                color=ts.types["std_msgs/msg/ColorRGBA"](r=1.0, g=1.0, b=1.0, a=1.0),
                lifetime=ts.types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0),
                frame_locked=False, points=[], colors=[], text="", mesh_resource="",
                mesh_use_embedded_materials=False,
            )
            if "texture_resource" in Marker.__dataclass_fields__:  # Humble+ texture/mesh_file fields
                base.update(
                    texture_resource="",
                    texture=ts.types["sensor_msgs/msg/CompressedImage"](
                        header=hdr, format="", data=np.zeros(0, np.uint8)
                    ),
                    uv_coordinates=[],
                    mesh_file=ts.types["visualization_msgs/msg/MeshFile"](filename="", data=np.zeros(0, np.uint8)),
                )
            base.update(kw)
            return Marker(**base)

        markers = [marker(action=Marker.DELETEALL)]
        names = labelled.class_names
        for iid, xyz, cls, conf in zip(ids.tolist(), centroids, classes.tolist(), confidence.tolist()):
            r, gr, b = (palette[cls] / 255.0).tolist() if cls < len(palette) else (1.0, 1.0, 1.0)
            markers.append(marker(
                id=int(iid),
                pose=ts.types[g + "Pose"](
                    position=ts.types[g + "Point"](x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2])),
                    orientation=ts.types[g + "Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
                ),
                color=ts.types["std_msgs/msg/ColorRGBA"](r=r, g=gr, b=b, a=1.0),
                text=f"{names[cls]} {conf:.2f}",
            ))
        return ts.types["visualization_msgs/msg/MarkerArray"](markers=markers)

    def close(self) -> Path:
        return self.bag.close()

    def abort(self) -> None:
        self.bag.abort()

    def __enter__(self) -> LabelledBagWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
