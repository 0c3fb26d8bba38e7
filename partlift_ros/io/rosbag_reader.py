"""rosbag2 (.mcap, .db3 or a bag folder) -> Frame, without ROS (rosbags' AnyReader).

A first pass reads only what pairing needs: the header stamp and frame id of every cloud and image
(parsed from the first bytes of the CDR message, no full decode), all CameraInfo and /tf_static
messages. Iteration then decodes one cloud and its nearest images at a time, holding only the images
that a not-yet-emitted cloud still needs (a window of about ``slop`` seconds).

Several cameras: give ``image_topic`` (and optionally ``camera_info_topic`` and ``T_cam_lidar``) as
lists, one entry per camera. Each cloud is paired with the nearest image of every camera within
``slop``; a cloud is kept when at least one camera has an image, and its Frame holds the cameras
that do, in the order given (the pipeline breaks ties between cameras in favour of the first). This
is the rule the labeller node follows for a camera that is missing from a frame.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import chain_transform, transform_to_matrix
from ..pairing import nearest_indices, nearest_within
from ..types import CameraView, Frame, InputError

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"


@dataclass
class CameraModel:
    stamp: float
    K: np.ndarray  # (3, 3)
    D: np.ndarray | None  # plumb_bob k1 k2 p1 p2 k3, None when all zero
    size: tuple[int, int]  # (width, height)


def _frame_name(frame_id: str) -> str:
    return str(frame_id).lstrip("/")


def header_from_cdr(raw: bytes | memoryview) -> tuple[float, str]:
    """(stamp seconds, frame_id) of a CDR message whose first field is a std_msgs/Header."""
    buf = memoryview(raw)
    if len(buf) < 16:
        raise InputError(f"CDR message of {len(buf)} bytes is too short to hold a header")
    order = "<" if buf[1] == 1 else ">"  # encapsulation id: 0x0001 CDR_LE, 0x0000 CDR_BE
    sec, nanosec, length = struct.unpack_from(order + "iII", buf, 4)
    if length == 0 or 16 + length > len(buf):
        raise InputError("CDR header has a malformed frame_id string")
    frame_id = bytes(buf[16 : 16 + length - 1]).decode("utf-8", errors="replace")
    return sec + nanosec * 1e-9, frame_id


def stamp_of(msg: Any) -> float:
    return int(msg.header.stamp.sec) + int(msg.header.stamp.nanosec) * 1e-9


def camera_model(msg: Any, where: str) -> CameraModel:
    """K, D and size of a CameraInfo, checked (an all-zero K means an uncalibrated camera)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.any(K):
        raise InputError(f"{where}: CameraInfo K is all zeros (uncalibrated camera)")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(f"{where}: CameraInfo K has invalid focal lengths: {K.tolist()}")
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: CameraInfo size is {width}x{height}")
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    model = str(msg.distortion_model)
    D = None
    if d.size and np.any(d):
        # project_points models plumb_bob (k1 k2 p1 p2 k3); rational_polynomial reduces to it when k4..k6 = 0.
        if model not in ("plumb_bob", "rational_polynomial") or np.any(d[5:]):
            raise InputError(
                f"{where}: distortion model {model!r} with D={d.tolist()} is not supported "
                "(use plumb_bob, or a rectified image with zero D)"
            )
        D = d[:5]
    return CameraModel(stamp=stamp_of(msg), K=K, D=D, size=(width, height))


def _open_bag(path: Path) -> Any:
    from rosbags.highlevel import AnyReader

    from .bag_writer import get_ros_typestore

    try:
        reader = AnyReader([path], default_typestore=get_ros_typestore("humble"))
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for unreadable bags
        raise InputError(f"{path}: cannot open as a rosbag2 ({type(exc).__name__}: {exc})") from exc
    return reader


def _as_list(value: str | Sequence[str] | None) -> list[str | None]:
    if value is None:
        return [None]
    return [value] if isinstance(value, str) else list(value)


class RosbagReader:
    """Frames from a rosbag2: each PointCloud2 paired with the nearest image of each camera within ``slop``.

    Topics not given are picked by message type (an error when that is ambiguous); ``compressed``
    forces CompressedImage (True) or Image (False), None prefers Image and falls back to
    CompressedImage. ``image_topic`` may be a list (one camera each, see the module doc), with
    ``camera_info_topic`` then None (each image topic's namespace) or a list of the same length.
    The camera model comes from the CameraInfo nearest in time to the image; the extrinsic from
    ``T_cam_lidar`` (one 4x4, or a list with one 4x4 or None per camera) or else from /tf_static
    (cloud frame -> image frame). Clouds are decoded by ``pointcloud2.cloud_to_scan`` (the rules of
    ``points.py``: intensity to 0..1 by ``intensity_scale``, non-finite points kept in place, rings from a
    ring field or an organised cloud's rows). ``Frame.index`` is the cloud's position on its topic.
    """

    def __init__(
        self,
        path: str | Path,
        points_topic: str | None = None,
        image_topic: str | Sequence[str] | None = None,
        camera_info_topic: str | Sequence[str] | None = None,
        slop: float = 0.05,
        T_cam_lidar: np.ndarray | Sequence[np.ndarray | None] | None = None,
        compressed: bool | None = None,
        intensity_scale: str | float = "auto",
    ) -> None:
        self.path = Path(path)
        self.intensity_scale = intensity_scale
        if not self.path.exists():
            raise InputError(f"bag not found: {self.path}")
        if self.path.is_file() and self.path.suffix not in (".mcap", ".db3"):
            raise InputError(f"{self.path}: expected a .mcap or .db3 file or a rosbag2 folder")
        self.slop = float(slop)
        image_topics, info_topics = _as_list(image_topic), _as_list(camera_info_topic)
        if not image_topics:
            raise InputError("image_topic: an empty list of image topics")
        if camera_info_topic is None:
            info_topics = [None] * len(image_topics)
        if len(info_topics) != len(image_topics):
            raise InputError(f"{len(info_topics)} camera_info topics given for {len(image_topics)} image topics")
        self._T_override = self._extrinsic_overrides(T_cam_lidar, len(image_topics))
        reader = _open_bag(self.path)
        try:
            self.topics = {c.topic: c.msgtype for c in reader.connections}
            self.points_topic = self._pick(points_topic, (POINTCLOUD2,), "points_topic")
            image_types = {True: (COMPRESSED,), False: (IMAGE,), None: (IMAGE, COMPRESSED)}[compressed]
            self.image_topics = [self._pick(t, image_types, "image_topic") for t in image_topics]
            if len(set(self.image_topics)) != len(self.image_topics):
                raise InputError(f"image_topic: a topic is listed twice: {self.image_topics}")
            self.camera_info_topics = [self._pick_camera_info(t, img) for t, img in zip(info_topics, self.image_topics)]
            self._scan(reader)
        finally:
            reader.close()

    @property
    def image_topic(self) -> str:
        """The first camera's image topic (the only one for a single camera)."""
        return self.image_topics[0]

    @property
    def camera_info_topic(self) -> str:
        return self.camera_info_topics[0]

    @staticmethod
    def _extrinsic_overrides(T_cam_lidar, n_cameras: int) -> list[np.ndarray | None]:
        if T_cam_lidar is None:
            return [None] * n_cameras
        if isinstance(T_cam_lidar, np.ndarray) and T_cam_lidar.ndim == 2:
            given = [T_cam_lidar] * n_cameras if n_cameras == 1 else None
            if given is None:
                raise InputError(f"T_cam_lidar: one 4x4 matrix given for {n_cameras} cameras; give one per camera")
        else:
            given = list(T_cam_lidar)
            if len(given) != n_cameras:
                raise InputError(f"T_cam_lidar: {len(given)} matrices given for {n_cameras} cameras")
        out: list[np.ndarray | None] = []
        for i, T in enumerate(given):
            if T is None:
                out.append(None)
                continue
            T = np.asarray(T, dtype=np.float64)
            if T.shape != (4, 4) or not np.isfinite(T).all():
                raise InputError(f"T_cam_lidar of camera {i} must be a finite 4x4 matrix, got shape {T.shape}")
            out.append(T)
        return out

    # --- topic selection -------------------------------------------------------------------------
    def _topic_list(self) -> str:
        return ", ".join(f"{t} ({m})" for t, m in sorted(self.topics.items())) or "none"

    def _pick(self, topic: str | None, types: tuple[str, ...], arg: str) -> str:
        if topic is not None:
            if topic not in self.topics:
                raise InputError(f"{self.path}: no topic {topic!r}; the bag has: {self._topic_list()}")
            if self.topics[topic] not in types:
                raise InputError(f"{self.path}: topic {topic} is {self.topics[topic]}, expected {' or '.join(types)}")
            return topic
        for msgtype in types:  # in order of preference
            found = sorted(t for t, m in self.topics.items() if m == msgtype)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise InputError(f"{self.path}: several {msgtype} topics {found}; choose one with {arg}=")
        raise InputError(f"{self.path}: no {' or '.join(types)} topic; the bag has: {self._topic_list()}")

    def _pick_camera_info(self, topic: str | None, image_topic: str) -> str:
        if topic is not None:
            return self._pick(topic, (CAMERA_INFO,), "camera_info_topic")
        found = sorted(t for t, m in self.topics.items() if m == CAMERA_INFO)
        if len(found) > 1:
            # Prefer the camera_info in the image topic's namespace (/cam/image_raw -> /cam/camera_info).
            found = [t for t in found if image_topic.startswith(t.rsplit("/", 1)[0] + "/")]
            depth = max((t.count("/") for t in found), default=0)
            found = [t for t in found if t.count("/") == depth]
        if len(found) == 1:
            return found[0]
        if found:
            raise InputError(f"{self.path}: several CameraInfo topics {found}; choose one with camera_info_topic=")
        raise InputError(
            f"{self.path}: no {CAMERA_INFO} topic for {image_topic}; the bag has: {self._topic_list()}"
        )

    # --- first pass: stamps, camera models, transforms ---------------------------------------------
    def _scan(self, reader: Any) -> None:
        camera_of = {t: i for i, t in enumerate(self.image_topics)}
        stream = [c for c in reader.connections if c.topic == self.points_topic or c.topic in camera_of]
        cloud_stamps, cloud_frames = [], []
        image_stamps: list[list[float]] = [[] for _ in self.image_topics]
        image_frames: list[list[str]] = [[] for _ in self.image_topics]
        for conn, _, raw in reader.messages(connections=stream):
            stamp, frame_id = header_from_cdr(raw)
            if conn.topic == self.points_topic:
                cloud_stamps.append(stamp)
                cloud_frames.append(_frame_name(frame_id))
            else:
                image_stamps[camera_of[conn.topic]].append(stamp)
                image_frames[camera_of[conn.topic]].append(_frame_name(frame_id))
        for topic, stamps in ((self.points_topic, cloud_stamps), *zip(self.image_topics, image_stamps)):
            if not stamps:
                raise InputError(f"{self.path}: topic {topic} has no messages")
        self.cloud_stamps = np.asarray(cloud_stamps)
        self.image_stamps = [np.asarray(st) for st in image_stamps]
        # (cloud, camera) -> image index on that camera's topic, -1 = no image within slop
        nearest = np.stack([nearest_indices(self.cloud_stamps, st, self.slop) for st in self.image_stamps], axis=1)
        kept = np.flatnonzero((nearest >= 0).any(axis=1))
        self.pairs: list[tuple[int, tuple[int, ...]]] = [(int(c), tuple(int(i) for i in nearest[c])) for c in kept]
        if not self.pairs:
            spans = ", ".join(f"{t} {st.min():.3f}..{st.max():.3f} s" for t, st in zip(self.image_topics, self.image_stamps))
            raise InputError(
                f"{self.path}: no {self.points_topic} message has a {' or '.join(self.image_topics)} message within "
                f"{self.slop} s (clouds {self.cloud_stamps.min():.3f}..{self.cloud_stamps.max():.3f} s, images {spans})"
            )

        self.camera_models: list[list[CameraModel]] = [[] for _ in self.image_topics]
        info_of = {t: i for i, t in enumerate(self.camera_info_topics)}
        tf_edges: list[tuple[str, str, np.ndarray]] = []
        extra = [
            c for c in reader.connections
            if c.topic in info_of or (c.msgtype == TF_MESSAGE and c.topic.endswith("tf_static"))
        ]
        for conn, _, raw in reader.messages(connections=extra):
            msg = self._deserialize(reader, raw, conn)
            if conn.topic in info_of:
                self.camera_models[info_of[conn.topic]].append(camera_model(msg, f"{self.path}:{conn.topic}"))
            else:
                tf_edges.extend(
                    (_frame_name(t.header.frame_id), _frame_name(t.child_frame_id), transform_to_matrix(t.transform))
                    for t in msg.transforms
                )
        for topic, models in zip(self.camera_info_topics, self.camera_models):
            if not models:
                raise InputError(f"{self.path}: topic {topic} has no messages")
        self._model_stamps = [np.array([m.stamp for m in models]) for models in self.camera_models]
        self.tf_edges = tf_edges
        self._extrinsics: dict[tuple[str, str], np.ndarray] = {}
        for c, images in self.pairs:  # resolve every frame pair now, so a missing transform fails early
            for cam, i in enumerate(images):
                if i >= 0:
                    self._extrinsic(cam, cloud_frames[c], image_frames[cam][i])

    def _extrinsic(self, camera: int, cloud_frame: str, camera_frame: str) -> np.ndarray:
        if self._T_override[camera] is not None:
            return self._T_override[camera]
        key = (cloud_frame, camera_frame)
        if key not in self._extrinsics:
            T = chain_transform(self.tf_edges, cloud_frame, camera_frame)
            if T is None:
                known = sorted({f for p, c, _ in self.tf_edges for f in (p, c)})
                raise InputError(
                    f"{self.path}: no /tf_static chain from {cloud_frame!r} to {camera_frame!r} "
                    f"(frames in /tf_static: {known or 'none'}); pass T_cam_lidar"
                )
            self._extrinsics[key] = T
        return self._extrinsics[key]

    def _deserialize(self, reader: Any, raw: bytes | memoryview, conn: Any) -> Any:
        try:
            return reader.deserialize(raw, conn.msgtype)
        except Exception as exc:  # rosbags' deserialisation errors have no common base
            raise InputError(f"{self.path}: cannot decode a {conn.msgtype} on {conn.topic}: {exc}") from exc

    # --- iteration ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Frame]:
        images_of = {c: [(cam, i) for cam, i in enumerate(images) if i >= 0] for c, images in self.pairs}
        needed = Counter(key for keys in images_of.values() for key in keys)
        pending: deque[tuple[int, Any, bytes]] = deque()  # clouds waiting for their images
        cache: dict[tuple[int, int], tuple[Any, bytes]] = {}  # (camera, image) some pending or future cloud needs
        camera_of = {t: i for i, t in enumerate(self.image_topics)}
        reader = _open_bag(self.path)
        try:
            stream = [c for c in reader.connections if c.topic == self.points_topic or c.topic in camera_of]
            n_cloud = 0
            n_image = [0] * len(self.image_topics)
            for conn, _, raw in reader.messages(connections=stream):
                if conn.topic == self.points_topic:
                    if n_cloud in images_of:
                        pending.append((n_cloud, conn, bytes(raw)))
                    n_cloud += 1
                else:
                    cam = camera_of[conn.topic]
                    if (cam, n_image[cam]) in needed:
                        cache[(cam, n_image[cam])] = (conn, bytes(raw))
                    n_image[cam] += 1
                while pending and all(key in cache for key in images_of[pending[0][0]]):
                    c, cconn, craw = pending.popleft()
                    keys = images_of[c]
                    yield self._frame(reader, c, cconn, craw, [(key[0], *cache[key]) for key in keys])
                    for key in keys:
                        needed[key] -= 1
                        if needed[key] == 0:
                            del cache[key], needed[key]
        finally:
            reader.close()

    def _frame(self, reader: Any, index: int, cconn: Any, craw: bytes, images: list[tuple[int, Any, bytes]]) -> Frame:
        from .pointcloud2 import cloud_to_scan

        cloud = self._deserialize(reader, craw, cconn)
        scan = cloud_to_scan(cloud, self.intensity_scale)
        cloud_frame = _frame_name(cloud.header.frame_id)
        cameras = [self._camera(reader, cam, iconn, iraw, cloud_frame) for cam, iconn, iraw in images]
        return Frame(points=scan.points, cameras=cameras, stamp=stamp_of(cloud), index=index, frame_id=cloud_frame,
                     ring=scan.ring, layout=scan.layout)

    def _camera(self, reader: Any, cam: int, iconn: Any, iraw: bytes, cloud_frame: str) -> CameraView:
        from .images import decode_any_image

        image_msg = self._deserialize(reader, iraw, iconn)
        where = f"{self.path}:{iconn.topic}"
        rgb = decode_any_image(image_msg, where)
        model = self.camera_models[cam][nearest_within(stamp_of(image_msg), self._model_stamps[cam], np.inf)]
        height, width = rgb.shape[:2]
        if model.size != (width, height):
            raise InputError(
                f"{where}: image is {width}x{height} but {self.camera_info_topics[cam]} says "
                f"{model.size[0]}x{model.size[1]}"
            )
        camera_frame = _frame_name(image_msg.header.frame_id)
        return CameraView(
            image=rgb, K=model.K.copy(), T_cam_lidar=self._extrinsic(cam, cloud_frame, camera_frame).copy(),
            D=None if model.D is None else model.D.copy(), frame_id=camera_frame,
        )


