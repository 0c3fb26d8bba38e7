"""Launch the distilled LiDAR-only student (no camera needed), with a rosbag2 replay when given.

    ros2 launch partlift_ros student.launch.py checkpoint:=/runs/student/student.pt
    ros2 launch partlift_ros student.launch.py checkpoint:=... device:=cuda bag:=drive.mcap

The node subscribes to the relative name ``points`` (default remap: /velodyne_points, as `partlift kitti2bag`
writes) and publishes ``labelled_points`` (the labeller's layout). When the student stops (a missing
checkpoint: exit 2), the launch stops with it. With bag:=... ``reliable`` and ``use_sim_time`` default to
true (their ``auto``). See partlift_ros/ros/launching.py.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from partlift_ros.ros.launching import DEFAULT_TOPICS, bag_player, resolve_auto_arguments

PACKAGE = "partlift_ros"


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("checkpoint", description="student.pt written by `partlift train`"),
        DeclareLaunchArgument("points_topic", default_value=DEFAULT_TOPICS["points_topic"],
                              description="sensor_msgs/PointCloud2 input"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        DeclareLaunchArgument("max_points", default_value="300000", description="larger clouds are refused"),
        DeclareLaunchArgument("tta_rotations", default_value="0", description="extra rotated passes averaged"),
        DeclareLaunchArgument("reliable", default_value="auto",
                              description="reliable input: true | false | auto (true with bag:=, else best-effort)"),
        DeclareLaunchArgument("bag", default_value="",
                              description="rosbag2 to play with 'ros2 bag play --clock' (empty: live topics)"),
        DeclareLaunchArgument("use_sim_time", default_value="auto",
                              description="use /clock: true | false | auto (true with bag:=)"),
    ]
    student = Node(
        package=PACKAGE,
        executable="student",
        name="student",
        output="screen",
        parameters=[{
            "checkpoint": LaunchConfiguration("checkpoint"),
            "device": LaunchConfiguration("device"),
            "max_points": ParameterValue(LaunchConfiguration("max_points"), value_type=int),
            "tta_rotations": ParameterValue(LaunchConfiguration("tta_rotations"), value_type=int),
            "reliable": ParameterValue(LaunchConfiguration("reliable"), value_type=bool),
            "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
        }],
        remappings=[("points", LaunchConfiguration("points_topic"))],
        on_exit=Shutdown(reason="the student stopped"),
    )
    # The bag starts once the student logs "student ready" (its checkpoint is loaded).
    bag = OpaqueFunction(function=bag_player, kwargs={"node": student, "ready": "student ready"})
    auto = OpaqueFunction(function=resolve_auto_arguments)  # before the actions that read reliable / use_sim_time
    return LaunchDescription([*arguments, auto, student, bag])
