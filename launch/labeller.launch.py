"""Launch the partlift labeller, optionally with RViz and a rosbag2 replay.

    ros2 launch partlift_ros labeller.launch.py points_topic:=/velodyne_points \
        image_topic:=/camera/image_rect camera_info_topic:=/camera/camera_info
    ros2 launch partlift_ros labeller.launch.py bag:=/data/drive_0008 use_sim_time:=true

The node subscribes to the relative names points, image and camera_info; this file remaps them.
Camera rigs: set ``cameras: [front, left, ...]`` in the params file, with ``<name>.image_topic``,
``<name>.camera_info_topic`` and optionally ``<name>.T_cam_lidar`` (see partlift_ros/ros/params.py);
image_topic/camera_info_topic then do not apply.
Replaying a bag publishes /clock (``--clock``): pass use_sim_time:=true with bag:=... so stamps,
latency and TF use the bag's time.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "partlift_ros"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    arguments = [
        DeclareLaunchArgument(
            "params_file", default_value=PathJoinSubstitution([share, "config", "labeller.yaml"]),
            description="YAML with the labeller's ros__parameters (core config keys + node settings)",
        ),
        DeclareLaunchArgument("points_topic", default_value="/points_raw",
                              description="sensor_msgs/PointCloud2 input"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_rect_color",
                              description="sensor_msgs/Image input (CompressedImage when use_compressed is set)"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="sensor_msgs/CameraInfo of the image"),
        DeclareLaunchArgument("use_rviz", default_value="true", description="start RViz with rviz/partlift.rviz"),
        DeclareLaunchArgument("bag", default_value="",
                              description="rosbag2 to play with 'ros2 bag play --clock' (empty: live topics)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (set true when playing a bag)"),
    ]
    labeller = Node(
        package=PACKAGE,
        executable="labeller",
        name="labeller",
        output="screen",
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": use_sim_time}],
        remappings=[
            ("points", LaunchConfiguration("points_topic")),
            ("image", LaunchConfiguration("image_topic")),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        output="log",
        arguments=["-d", PathJoinSubstitution([share, "rviz", "partlift.rviz"])],
        parameters=[{"use_sim_time": use_sim_time}],
        condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    # IfCondition + PythonExpression works on Humble through Kilted (LaunchConfigurationNotEquals is
    # deprecated on newer distributions, EqualsSubstitution is missing on Humble).
    bag = ExecuteProcess(
        cmd=["ros2", "bag", "play", LaunchConfiguration("bag"), "--clock"],
        output="screen",
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("bag"), "' != ''"])),
    )
    return LaunchDescription([*arguments, labeller, rviz, bag])
