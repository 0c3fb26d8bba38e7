"""A KITTI / SemanticKITTI sequence -> rosbag2 (MCAP or SQLite), to replay through the ROS node.

Topics: ``/velodyne_points`` (PointCloud2 x y z intensity, frame ``velodyne``), ``/camera/image_raw``
(rgb8, frame ``camera_color_left``), ``/camera/camera_info`` (K, P = [K | 0], D = 0, size) and
``/tf_static`` (velodyne -> camera_color_left). Stamps are times.txt plus ``stamp_offset`` because
times.txt starts at 0 and ROS tools treat a zero stamp as "unset".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..calibration import invert_se3
from .bag_writer import BagOutput, camera_info_msg, image_msg, pointcloud2_msg, tf_static_msg
from .kitti import KittiSequenceReader

# 2011-09-30T00:00:00Z, the recording day of KITTI odometry sequences 04-10.
KITTI_STAMP_OFFSET = 1317340800.0

POINTS_TOPIC = "/velodyne_points"
IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"

XYZI_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])


def kitti_to_bag(
    sequence_dir: str | Path,
    out_path: str | Path,
    frames: slice | None = None,
    stamp_offset: float = KITTI_STAMP_OFFSET,
    distro: str = "humble",
    overwrite: bool = False,
) -> int:
    """Write the (selected) frames of a sequence into ``out_path``; returns the number of frames.

    ``out_path`` ending in .mcap or .db3 gives one storage file, a path without a suffix a rosbag2 folder
    (other suffixes are refused, see ``bag_writer.check_bag_output``). The bag appears under its name only
    once complete.
    """
    from .pointcloud2 import encode_pointcloud2

    reader = KittiSequenceReader(sequence_dir, frames=frames)
    with BagOutput(out_path, distro=distro, overwrite=overwrite) as bag:
        ts = bag.ts
        bag.add_topic(POINTS_TOPIC, "sensor_msgs/msg/PointCloud2")
        bag.add_topic(IMAGE_TOPIC, "sensor_msgs/msg/Image")
        bag.add_topic(CAMERA_INFO_TOPIC, "sensor_msgs/msg/CameraInfo")
        bag.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        for i, frame in enumerate(reader):
            stamp = frame.stamp + stamp_offset
            cam = frame.camera
            if i == 0:
                edge = (frame.frame_id, cam.frame_id, invert_se3(cam.T_cam_lidar))
                bag.write("/tf_static", tf_static_msg(ts, [edge], stamp), stamp)
            cloud = np.ascontiguousarray(frame.points, dtype="<f4").view(XYZI_DTYPE).reshape(-1)
            bag.write(POINTS_TOPIC, pointcloud2_msg(ts, encode_pointcloud2(cloud), stamp, frame.frame_id), stamp)
            bag.write(IMAGE_TOPIC, image_msg(ts, cam.image, stamp, cam.frame_id), stamp)
            bag.write(CAMERA_INFO_TOPIC, camera_info_msg(ts, cam.K, cam.size, stamp, cam.frame_id), stamp)
    return len(reader)
