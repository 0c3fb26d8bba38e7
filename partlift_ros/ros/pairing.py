"""The labeller's pairing of each cloud with the nearest image of every camera, and the Frame built from it.

    cloud ─► pending ──┐
    image ─► buffer[cam] ├─► nearest image of each camera within ``slop`` ─► CameraViews ─► Frame
    camera_info[cam] ───┘        (the rules of partlift_ros.pairing)          (calibration + extrinsic)

A cloud waits while some camera has no image at or after its stamp yet (a later image could be
nearer), at most ``pair_timeout`` seconds of wall time. A camera with no image within ``slop``, or
whose CameraInfo or extrinsic cannot be used, is left out of that frame (counted as "frames without
<camera>"); a cloud that no camera can serve is refused. Not thread-safe: the node calls it under its lock.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io.pointcloud2 import Scan
from ..pairing import StampBuffer
from ..types import CameraView, Frame, InputError
from . import conversions as conv
from .diagnostics import DECODE, PAIRING
from .params import CameraSpec, NodeSettings

Reject = Callable[[str, str], None]
# (lidar frame, camera frame, camera, settings) -> T_cam_lidar or None (transforms.Extrinsics)
Extrinsics = Callable[[str, str, CameraSpec, NodeSettings], "np.ndarray | None"]


@dataclass
class Cloud:
    """A checked cloud waiting for its images."""

    scan: Scan
    stamp: float
    frame_id: str
    header: Any
    arrived: float  # time.monotonic() when received
    decode_ms: float


@dataclass
class CameraImage:
    rgb: np.ndarray
    frame_id: str
    header: Any
    decode_ms: float


@dataclass
class Job:
    """A Frame for the worker, with what it needs to publish the results."""

    frame: Frame
    cloud_header: Any
    image_headers: list  # one per frame.cameras entry
    camera_ids: list[int]  # index into the node's cameras of each frame.cameras entry
    stages_ms: dict[str, float] = field(default_factory=dict)  # decode and pairing, filled before the worker
    submitted: float = 0.0  # time.perf_counter() when handed to the worker


class Pairer:
    """Input buffers of one labeller: pending clouds, recent images and the CameraInfo of each camera."""

    def __init__(self, n_cameras: int, image_buffer: int) -> None:
        self.images: list[StampBuffer[CameraImage]] = [StampBuffer(image_buffer) for _ in range(n_cameras)]
        self.camera_info: list[conv.CameraIntrinsics | None] = [None] * n_cameras
        self.pending: deque[Cloud] = deque()
        self.paired = 0
        self.frames_without: Counter[str] = Counter()  # camera label -> frames labelled without it
        self._last_stamp: dict[str, float] = {}
        self._frame_index = 0

    def went_back(self, what: str, stamp: float) -> bool:
        """Record the stamp; True when it is older than the last one of the same input (bag loop, clock reset)."""
        last = self._last_stamp.get(what)
        self._last_stamp[what] = stamp
        return last is not None and stamp < last

    def clear(self, cameras: list[CameraSpec]) -> None:
        """After a jump back in time: forget buffered clouds and images."""
        for buffer, cam in zip(self.images, cameras):
            buffer.clear()
            self._last_stamp.pop(cam.input_key("image"), None)
        self.pending.clear()

    def ready_frames(self, settings: NodeSettings, cameras: list[CameraSpec], extrinsics: Extrinsics,
                     reject: Reject) -> list[Job]:
        """Pair the waiting clouds that can be paired now; a Job for each one some camera can serve."""
        jobs = []
        newest = [float(b.stamps.max()) if len(b) else None for b in self.images]
        while self.pending:
            cloud = self.pending[0]
            final = all(n is not None and n >= cloud.stamp for n in newest)
            timed_out = time.monotonic() - cloud.arrived > settings.pair_timeout
            if not final and not timed_out and len(self.pending) <= 2:
                break
            self.pending.popleft()
            t0 = time.perf_counter()
            hits = [b.take_nearest(cloud.stamp, settings.slop, consume=False) for b in self.images]
            if all(h is None for h in hits):
                buffered = ", ".join(f"{c.label} {len(b)}" for c, b in zip(cameras, self.images))
                reject("no_image_within_slop", f"no image within {settings.slop} s of the cloud at "
                       f"{cloud.stamp:.3f} (buffered: {buffered})")
                continue
            self.paired += 1
            images = [(i, h[1]) for i, h in enumerate(hits) if h is not None]
            job = self._job(cloud, images, [i for i, h in enumerate(hits) if h is None], settings, cameras,
                            extrinsics, reject)
            if job is not None:
                job.stages_ms[DECODE] = cloud.decode_ms + sum(image.decode_ms for _, image in images)
                job.stages_ms[PAIRING] = (time.perf_counter() - t0) * 1e3
                jobs.append(job)
        return jobs

    def _job(self, cloud: Cloud, images: list[tuple[int, CameraImage]], missing: list[int],
             settings: NodeSettings, cameras: list[CameraSpec], extrinsics: Extrinsics, reject: Reject) -> Job | None:
        views, headers, ids = [], [], []
        left_out = list(missing)
        for cam, image in images:  # in the order of `cameras`, which decides ties between cameras
            view = self._camera_view(cam, cloud, image, settings, cameras[cam], extrinsics, reject)
            if view is None:
                left_out.append(cam)
                continue
            views.append(view)
            headers.append(image.header)
            ids.append(cam)
        if not views:
            return None
        for cam in left_out:
            self.frames_without[cameras[cam].label] += 1
        scan = cloud.scan
        frame = Frame(points=scan.points, cameras=views, stamp=cloud.stamp, index=self._frame_index,
                      frame_id=cloud.frame_id, ring=scan.ring, layout=scan.layout)
        self._frame_index += 1
        try:
            frame.validate()
        except InputError as exc:
            reject("frame_invalid", str(exc))
            return None
        return Job(frame, cloud.header, headers, ids)

    def _camera_view(self, cam: int, cloud: Cloud, image: CameraImage, settings: NodeSettings, spec: CameraSpec,
                     extrinsics: Extrinsics, reject: Reject) -> CameraView | None:
        """The CameraView of one camera for this cloud, or None (reason counted) when it cannot be used."""
        where = f"camera {spec.label}: " if spec.name else ""
        info = self.camera_info[cam]
        image_stamp = conv.stamp_to_sec(image.header.stamp)
        h, w = image.rgb.shape[:2]
        if info is None:
            reject("camera_info_missing", f"{where}no valid CameraInfo received yet: cannot project the cloud")
            return None
        timeout = settings.camera_info_timeout
        if timeout > 0 and abs(image_stamp - info.stamp) > timeout:
            reject("camera_info_stale", f"{where}CameraInfo stamp {info.stamp:.3f} is "
                   f"{abs(image_stamp - info.stamp):.2f} s from the image's (camera_info_timeout {timeout} s)")
            return None
        if info.size != (0, 0) and info.size != (w, h):
            reject("camera_info_size_mismatch",
                   f"{where}CameraInfo says {info.size[0]}x{info.size[1]} but the image is {w}x{h}")
            return None
        camera_frame = image.frame_id or info.frame_id
        T = extrinsics(cloud.frame_id, camera_frame, spec, settings)
        if T is None:
            param = f"{spec.name}.T_cam_lidar" if spec.name else "T_cam_lidar"
            reject("no_extrinsics", f"{where}no transform from {cloud.frame_id!r} to camera {camera_frame!r} "
                   f"(TF, or the {param} parameter): skipping this camera")
            return None
        return CameraView(image.rgb, info.K, T, info.D, camera_frame)
