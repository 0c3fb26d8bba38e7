"""Launch the distilled LiDAR-only student (no camera needed).

    ros2 launch partlift_ros student.launch.py checkpoint:=/runs/student/student.pt points_topic:=/velodyne_points
    ros2 launch partlift_ros student.launch.py checkpoint:=... device:=cuda bag:=/data/drive_0008 use_sim_time:=true

The node subscribes to the relative name ``points`` and publishes ``labelled_points`` (the labeller's layout);
this file remaps the input.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = "partlift_ros"


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("checkpoint", description="student.pt written by `partlift train`"),
        DeclareLaunchArgument("points_topic", default_value="/points_raw", description="sensor_msgs/PointCloud2 input"),
        DeclareLaunchArgument("device", default_value="cpu", description="cpu | cuda | cuda:N"),
        DeclareLaunchArgument("max_points", default_value="300000", description="larger clouds are refused"),
        DeclareLaunchArgument("tta_rotations", default_value="0", description="extra rotated passes averaged"),
        DeclareLaunchArgument("bag", default_value="",
                              description="rosbag2 to play with 'ros2 bag play --clock' (empty: live topics)"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (true with bag:=...)"),
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
            "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
        }],
        remappings=[("points", LaunchConfiguration("points_topic"))],
    )
    bag = ExecuteProcess(
        cmd=["ros2", "bag", "play", "--clock", LaunchConfiguration("bag")],
        condition=IfCondition(PythonExpression(["'", LaunchConfiguration("bag"), "' != ''"])),
        output="screen",
    )
    return LaunchDescription([*arguments, student, bag])
