"""rosbag2 (.mcap, .db3 or a bag folder) -> Frame, without ROS (rosbags' AnyReader).

A first pass reads only what pairing needs: the header stamp and frame id of every cloud and image
(parsed from the first bytes of the CDR message, no full decode), all CameraInfo and /tf_static
messages. Iteration then decodes one cloud and its nearest images at a time, holding only the images
that a not-yet-emitted cloud still needs (a window of about ``slop`` seconds).

Bad messages never sink the bag: ``frames(wanted)`` decodes only the frames asked for (from the stretch of
the bag that holds them) and yields a frame that cannot be read as its InputError (index, stamp, topic,
reason); a cloud with an unreadable header is such a frame; a broken image header, CameraInfo or TF
message is skipped and listed in ``skipped_images`` / ``skipped_calibration``; only a topic without any
valid message is an error.

Several cameras: give ``image_topic`` (and optionally ``camera_info_topic`` and ``T_cam_lidar``) as
lists, one entry per camera. Each cloud is paired with the nearest image of every camera within
``slop``; a cloud is kept when at least one camera has an image, and its Frame holds the cameras
that do, in the order given (the pipeline breaks ties between cameras in favour of the first). This
is the rule the labeller node follows for a camera that is missing from a frame.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import chain_transform, transform_to_matrix
from .bag_messages import CameraModel, camera_model, decoding, frame_name, header_from_cdr, stamp_of
from ..pairing import nearest_indices, nearest_within
from ..types import CameraView, Frame, InputError

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"


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
        """Stamps, log times and frame ids of every cloud and image; the valid CameraInfo and /tf_static.

        A message that cannot be read here is skipped, not fatal: a cloud whose header is unreadable becomes a
        failed frame (``bad_clouds``), an image, CameraInfo or TF message is listed in ``skipped_images`` or
        ``skipped_calibration``; only a topic left without any valid message is an error.
        """
        camera_of = {t: i for i, t in enumerate(self.image_topics)}
        stream = [c for c in reader.connections if c.topic == self.points_topic or c.topic in camera_of]
        self.bad_clouds: dict[int, str] = {}
        self.skipped_images: list[str] = []  # image messages whose header is unreadable (not paired)
        self.skipped_calibration: list[str] = []  # broken CameraInfo / TF messages (valid ones remain)
        self._cloud_log: list[int] = []  # log time (ns) of every cloud, by position on its topic
        self._image_log: list[list[int]] = [[] for _ in self.image_topics]
        clouds: list[tuple[int, float, str]] = []  # (position, stamp, frame id) of the readable clouds
        images: list[list[tuple[int, float, str]]] = [[] for _ in self.image_topics]
        for conn, log_time, raw in reader.messages(connections=stream):
            is_cloud = conn.topic == self.points_topic
            log = self._cloud_log if is_cloud else self._image_log[camera_of[conn.topic]]
            position = len(log)
            log.append(int(log_time))
            try:
                stamp, frame_id = header_from_cdr(raw)
            except InputError as exc:
                where = f"{conn.topic} message {position} (log time {log_time * 1e-9:.6f} s)"
                if is_cloud:
                    self.bad_clouds[position] = f"{where}: {exc}"
                else:
                    self.skipped_images.append(f"{where} skipped: {exc}")
                continue
            entry = (position, stamp, frame_name(frame_id))
            (clouds if is_cloud else images[camera_of[conn.topic]]).append(entry)
        for topic, entries in ((self.points_topic, clouds), *zip(self.image_topics, images)):
            if not entries:
                raise InputError(f"{self.path}: topic {topic} has no readable messages")
        self.cloud_stamps = np.asarray([st for _, st, _ in clouds])
        self.image_stamps = [np.asarray([st for _, st, _ in cam]) for cam in images]
        cloud_frames = {pos: fid for pos, _, fid in clouds}
        image_frames = [{pos: fid for pos, _, fid in cam} for cam in images]
        image_positions = [np.asarray([pos for pos, _, _ in cam]) for cam in images]
        # (cloud, camera) -> position of the nearest image on that camera's topic, -1 = none within slop
        nearest = np.stack([nearest_indices(self.cloud_stamps, st, self.slop) for st in self.image_stamps], axis=1)
        nearest = np.stack([np.where(nearest[:, k] >= 0, image_positions[k][nearest[:, k]], -1)
                            for k in range(len(images))], axis=1)
        kept = np.flatnonzero((nearest >= 0).any(axis=1))
        self.pairs: list[tuple[int, tuple[int, ...]]] = [
            (clouds[c][0], tuple(int(i) for i in nearest[c])) for c in kept
        ]
        self._stamp_of = {clouds[c][0]: float(self.cloud_stamps[c]) for c in kept}
        if not self.pairs:
            spans = ", ".join(f"{t} {st.min():.3f}..{st.max():.3f} s" for t, st in zip(self.image_topics, self.image_stamps))
            raise InputError(
                f"{self.path}: no {self.points_topic} message has a {' or '.join(self.image_topics)} message within "
                f"{self.slop} s (clouds {self.cloud_stamps.min():.3f}..{self.cloud_stamps.max():.3f} s, images {spans})"
            )
        self.frame_indices: list[int] = sorted([c for c, _ in self.pairs] + list(self.bad_clouds))
        self._read_calibration(reader)
        self._extrinsics: dict[tuple[str, str], np.ndarray] = {}
        for c, pair in self.pairs:  # resolve every frame pair now, so a missing transform fails early
            for cam, i in enumerate(pair):
                if i >= 0:
                    self._extrinsic(cam, cloud_frames[c], image_frames[cam][i])

    def _read_calibration(self, reader: Any) -> None:
        """The valid CameraInfo of every camera and the /tf_static edges; broken messages are skipped."""
        self.camera_models: list[list[CameraModel]] = [[] for _ in self.image_topics]
        info_of = {t: i for i, t in enumerate(self.camera_info_topics)}
        tf_edges: list[tuple[str, str, np.ndarray]] = []
        extra = [
            c for c in reader.connections
            if c.topic in info_of or (c.msgtype == TF_MESSAGE and c.topic.endswith("tf_static"))
        ]
        skipped: dict[str, list[str]] = {}
        for conn, log_time, raw in reader.messages(connections=extra):
            try:
                msg = self._deserialize(reader, raw, conn)
                if conn.topic in info_of:
                    self.camera_models[info_of[conn.topic]].append(camera_model(msg, f"{self.path}:{conn.topic}"))
                else:
                    edges = [(frame_name(t.header.frame_id), frame_name(t.child_frame_id),
                              transform_to_matrix(t.transform)) for t in msg.transforms]
                    if not all(np.isfinite(T).all() for _, _, T in edges):
                        raise InputError(f"{self.path}:{conn.topic}: a transform is not finite")
                    tf_edges.extend(edges)
            except (InputError, ValueError) as exc:
                reason = f"{conn.topic} message at log time {log_time * 1e-9:.6f} s skipped: {exc}"
                skipped.setdefault(conn.topic, []).append(reason)
                self.skipped_calibration.append(reason)
        for topic, models in zip(self.camera_info_topics, self.camera_models):
            if not models:
                why = f" ({len(skipped[topic])} broken, first: {skipped[topic][0]})" if topic in skipped else ""
                raise InputError(f"{self.path}: topic {topic} has no valid CameraInfo message{why}")
        self._model_stamps = [np.array([m.stamp for m in models]) for models in self.camera_models]
        self.tf_edges = tf_edges

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
        return len(self.frame_indices)

    def __iter__(self) -> Iterator[Frame]:
        """Every frame in order; a frame that cannot be read raises its InputError (see ``frames``)."""
        for _, frame in self.frames():
            if isinstance(frame, InputError):
                raise frame
            yield frame

    def frames(self, wanted: Iterable[int] | None = None) -> Iterator[tuple[int, Frame | InputError]]:
        """(index, Frame) for each frame in ``wanted`` (default: all), in order; others are never decoded.

        A frame that cannot be read (undecodable cloud or image, size mismatch, unreadable header) comes as
        (index, InputError naming the frame, its stamp, the topic and the reason), so the caller can go on.
        Only the stretch of the bag (by log time) holding the wanted messages is read.
        """
        known = set(self.frame_indices)
        chosen = known if wanted is None else known & {int(i) for i in wanted}
        images_of = {c: [(cam, i) for cam, i in enumerate(pair) if i >= 0] for c, pair in self.pairs if c in chosen}
        images_of.update({c: [] for c in self.bad_clouds if c in chosen})
        if not images_of:
            return
        needed = Counter(key for keys in images_of.values() for key in keys)
        times = [self._cloud_log[c] for c in images_of] + [self._image_log[cam][i] for cam, i in needed]
        start, stop = min(times), max(times) + 1
        # Positions on each topic count from the bag's start: messages before the window are skipped unread.
        n_cloud = sum(t < start for t in self._cloud_log)
        n_image = [sum(t < start for t in log) for log in self._image_log]
        pending: deque[tuple[int, Any, bytes]] = deque()  # clouds waiting for their images
        cache: dict[tuple[int, int], tuple[Any, bytes]] = {}  # (camera, image) some pending or future cloud needs
        camera_of = {t: i for i, t in enumerate(self.image_topics)}
        reader = _open_bag(self.path)
        try:
            stream = [c for c in reader.connections if c.topic == self.points_topic or c.topic in camera_of]
            for conn, _, raw in reader.messages(connections=stream, start=start, stop=stop):
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
                    yield c, self._frame_or_error(reader, c, cconn, craw, [(key[0], *cache[key]) for key in keys])
                    for key in keys:
                        needed[key] -= 1
                        if needed[key] == 0:
                            del cache[key], needed[key]
        finally:
            reader.close()

    def _frame_or_error(self, reader: Any, index: int, cconn: Any, craw: bytes, images: list) -> Frame | InputError:
        if index in self.bad_clouds:
            return InputError(f"frame {index}: {self.bad_clouds[index]}")
        try:
            return self._frame(reader, index, cconn, craw, images)
        except InputError as exc:
            return InputError(f"frame {index} (stamp {self._stamp_of[index]:.6f} s): {exc}")

    def _frame(self, reader: Any, index: int, cconn: Any, craw: bytes, images: list[tuple[int, Any, bytes]]) -> Frame:
        from .pointcloud2 import cloud_to_scan

        cloud = self._deserialize(reader, craw, cconn)
        with decoding(f"{self.path}:{cconn.topic}"):
            scan = cloud_to_scan(cloud, self.intensity_scale)
        cloud_frame = frame_name(cloud.header.frame_id)
        cameras = [self._camera(reader, cam, iconn, iraw, cloud_frame) for cam, iconn, iraw in images]
        return Frame(points=scan.points, cameras=cameras, stamp=stamp_of(cloud), index=index, frame_id=cloud_frame,
                     ring=scan.ring, layout=scan.layout)

    def _camera(self, reader: Any, cam: int, iconn: Any, iraw: bytes, cloud_frame: str) -> CameraView:
        from .images import decode_any_image

        image_msg = self._deserialize(reader, iraw, iconn)
        where = f"{self.path}:{iconn.topic}"
        with decoding(where):
            rgb = decode_any_image(image_msg, where)
        model = self.camera_models[cam][nearest_within(stamp_of(image_msg), self._model_stamps[cam], np.inf)]
        height, width = rgb.shape[:2]
        if model.size != (width, height):
            raise InputError(
                f"{where}: image is {width}x{height} but {self.camera_info_topics[cam]} says "
                f"{model.size[0]}x{model.size[1]}"
            )
        camera_frame = frame_name(image_msg.header.frame_id)
        return CameraView(
            image=rgb, K=model.K.copy(), T_cam_lidar=self._extrinsic(cam, cloud_frame, camera_frame).copy(),
            D=None if model.D is None else model.D.copy(), frame_id=camera_frame,
        )


