"""What launch/labeller.launch.py and launch/student.launch.py share: the processes that are started only
when asked for and possible, decided in Python at launch time (``OpaqueFunction``), never by evaluating
strings, so a bag path with quotes or spaces is passed through as it is.

- RViz: started when ``use_rviz`` is true and rviz2 is installed; otherwise a warning and the launch goes on.
- ``reliable`` and ``use_sim_time`` default to ``auto``: true when a bag is played (a replay should lose no
  message and runs on the bag's clock), false live; an explicit true/false is kept.
- Bag: ``ros2 bag play BAG --clock`` when ``bag`` is set, started once the node says it is ready (its model is
  loaded), so no frame is lost to start-up; a bag that does not exist, a missing ``ros2 bag`` or a player
  that fails shuts the whole launch down (with the reason), so no node is left waiting alone.
- The node itself is started with ``on_exit=Shutdown()`` by the launch files: a node that refuses to start
  (exit 2) or dies takes the launch, RViz and the player down with it, leaving no orphan.

launch and launch_ros are imported inside the functions: this module is imported by launch files only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..io.kitti2bag import CAMERA_INFO_TOPIC, IMAGE_TOPIC, POINTS_TOPIC

# Topic defaults of the launch files: the topics `partlift kitti2bag` writes (and the kitti2bag tools use).
DEFAULT_TOPICS = {"points_topic": POINTS_TOPIC, "image_topic": IMAGE_TOPIC, "camera_info_topic": CAMERA_INFO_TOPIC}
DEFAULT_FIXED_FRAME = "velodyne"  # the LiDAR frame of KITTI bags; set fixed_frame:= to your cloud's frame_id


def is_true(text: str) -> bool:
    """A launch argument as a bool, the way launch's IfCondition reads it."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def auto_or_bool(text: str, playing_bag: bool) -> bool:
    """A launch argument that may be ``auto``: true exactly when a bag is played; otherwise read by ``is_true``."""
    if str(text).strip().lower() == "auto":
        return playing_bag
    return is_true(text)


AUTO_WITH_BAG = ("reliable", "use_sim_time")  # launch arguments whose default ``auto`` follows ``bag``


def resolve_auto_arguments(context) -> list:
    """Replace ``auto`` in the launch arguments of ``AUTO_WITH_BAG`` by true/false (``auto_or_bool``).

    Must come before the actions that read them: the launch visits the actions returned here first.
    """
    from launch.actions import SetLaunchConfiguration
    from launch.substitutions import LaunchConfiguration

    playing_bag = bool(LaunchConfiguration("bag").perform(context))
    actions = []
    for name in AUTO_WITH_BAG:
        value = LaunchConfiguration(name).perform(context)
        try:
            actions.append(SetLaunchConfiguration(name, "true" if auto_or_bool(value, playing_bag) else "false"))
        except ValueError:
            raise ValueError(f"launch argument {name}:={value!r}: expected true, false or auto") from None
    return actions


def rviz_installed() -> bool:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return shutil.which("rviz2") is not None
    try:
        get_package_prefix("rviz2")
    except PackageNotFoundError:
        return False
    return True


def rviz(context, config: str) -> list:
    """RViz with ``config`` and the ``fixed_frame`` argument, or a warning when it is not installed."""
    from launch.actions import LogInfo
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    if not is_true(LaunchConfiguration("use_rviz").perform(context)):
        return []
    if not rviz_installed():
        return [LogInfo(msg="WARNING: use_rviz is true but rviz2 is not installed (apt install ros-$ROS_DISTRO-rviz2); "
                            "going on without RViz. Pass use_rviz:=false to silence this.")]
    fixed_frame = LaunchConfiguration("fixed_frame").perform(context)
    use_sim_time = is_true(LaunchConfiguration("use_sim_time").perform(context))
    return [Node(package="rviz2", executable="rviz2", name="rviz2", output="log",
                 arguments=["-d", config, "-f", fixed_frame],
                 parameters=[{"use_sim_time": use_sim_time}])]


def bag_player(context, node=None, ready: str = "") -> list:
    """``ros2 bag play BAG --clock`` when ``bag`` is set; the launch shuts down if the bag cannot be played.

    With ``node`` (the launched node action) and ``ready`` (the line it logs once it can take frames), the bag
    starts only when that line appears, so no frame of the bag is lost while the node loads its model.
    """
    from launch.actions import ExecuteProcess, LogInfo, RegisterEventHandler, Shutdown
    from launch.event_handlers import OnProcessExit, OnProcessIO
    from launch.substitutions import LaunchConfiguration

    bag = LaunchConfiguration("bag").perform(context)
    if not bag:
        return []
    path = Path(bag).expanduser()
    why = None
    if not path.exists():
        why = f"bag {str(path)!r} does not exist"
    elif shutil.which("ros2") is None:
        why = "bag:= needs `ros2 bag play` (rosbag2), and the ros2 command is not on PATH"
    if why is not None:
        return [LogInfo(msg=f"ERROR: {why}; shutting down"), Shutdown(reason=why)]
    # The path is one element of the command: no shell, no quoting, whatever characters it holds.
    player = ExecuteProcess(cmd=["ros2", "bag", "play", str(path), "--clock"], name="bag_play", output="screen")

    def on_exit(event, _context):
        if event.returncode not in (0, None):
            return [Shutdown(reason=f"ros2 bag play {str(path)!r} failed (exit code {event.returncode})")]
        return [LogInfo(msg=f"bag {str(path)!r} played to the end; the node keeps running (Ctrl-C to stop)")]

    play = [player, RegisterEventHandler(OnProcessExit(target_action=player, on_exit=on_exit))]
    if node is None or not ready:
        return play
    started = []

    def on_output(event):
        if started or ready.encode() not in event.text:
            return None
        started.append(True)
        return [LogInfo(msg=f"the node is ready: playing {str(path)!r}"), *play]

    return [RegisterEventHandler(OnProcessIO(target_action=node, on_stdout=on_output, on_stderr=on_output))]
