"""Launch the partlift labeller, with RViz when asked for and installed, and a rosbag2 replay when given.

    ros2 launch partlift_ros labeller.launch.py                          # live: kitti2bag's topic names
    ros2 launch partlift_ros labeller.launch.py points_topic:=/points image_topic:=/cam/image_rect \
        camera_info_topic:=/cam/camera_info fixed_frame:=lidar_top reliable:=true
    ros2 launch partlift_ros labeller.launch.py bag:=drive.mcap   # a replay: reliable, on the bag's clock

The node subscribes to the relative names points, image and camera_info; this file remaps them (defaults:
the topics `partlift kitti2bag` writes). Camera rigs: set ``cameras: [front, left, ...]`` in the params
file, with ``<name>.image_topic``, ``<name>.camera_info_topic`` and optionally ``<name>.T_cam_lidar`` (see
partlift_ros/ros/params.py); image_topic/camera_info_topic then do not apply.
Replaying a bag publishes /clock (``--clock``): with bag:=... ``use_sim_time`` and ``reliable`` default to true
(their ``auto``), so stamps, latency and TF use the bag's time and no message of the replay is lost. When the
labeller stops (refused parameters: exit 2), the launch stops with it; RViz and the bag player are never left
behind. See partlift_ros/ros/launching.py.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from partlift_ros.ros.launching import (
    DEFAULT_FIXED_FRAME, DEFAULT_TOPICS, bag_player, resolve_auto_arguments, rviz,
)

PACKAGE = "partlift_ros"


def _rviz(context):
    share = FindPackageShare(PACKAGE).perform(context)
    return rviz(context, f"{share}/rviz/partlift.rviz")


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([share, "config", "labeller.yaml"]),
            description="YAML with the labeller's ros__parameters (core config keys + node settings)",
        ),
        DeclareLaunchArgument("points_topic", default_value=DEFAULT_TOPICS["points_topic"],
                              description="sensor_msgs/PointCloud2 input"),
        DeclareLaunchArgument("image_topic", default_value=DEFAULT_TOPICS["image_topic"],
                              description="sensor_msgs/Image input (CompressedImage when use_compressed is set)"),
        DeclareLaunchArgument("camera_info_topic", default_value=DEFAULT_TOPICS["camera_info_topic"],
                              description="sensor_msgs/CameraInfo of the image"),
        DeclareLaunchArgument("reliable", default_value="auto",
                              description="reliable inputs: true | false | auto (true with bag:=, else best-effort)"),
        DeclareLaunchArgument("use_rviz", default_value="true",
                              description="start RViz with rviz/partlift.rviz (without rviz2: a warning, no RViz)"),
        DeclareLaunchArgument("fixed_frame", default_value=DEFAULT_FIXED_FRAME,
                              description="RViz fixed frame: the frame_id of your clouds, or a frame TF links to it"),
        DeclareLaunchArgument("bag", default_value="",
                              description="rosbag2 to play with 'ros2 bag play --clock' (empty: live topics)"),
        DeclareLaunchArgument("use_sim_time", default_value="auto",
                              description="use /clock: true | false | auto (true with bag:=)"),
    ]
    labeller = Node(
        package=PACKAGE,
        executable="labeller",
        name="labeller",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), {
            "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            "reliable": ParameterValue(LaunchConfiguration("reliable"), value_type=bool),
        }],
        remappings=[
            ("points", LaunchConfiguration("points_topic")),
            ("image", LaunchConfiguration("image_topic")),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
        ],
        on_exit=Shutdown(reason="the labeller stopped"),
    )
    # The bag starts once the labeller logs "labeller ready" (its CLIP model is loaded).
    bag = OpaqueFunction(function=bag_player, kwargs={"node": labeller, "ready": "labeller ready"})
    auto = OpaqueFunction(function=resolve_auto_arguments)  # before the actions that read reliable / use_sim_time
    return LaunchDescription([*arguments, auto, labeller, OpaqueFunction(function=_rviz), bag])
