"""Quality of service of the nodes' topics, set by the user as on any ROS 2 node.

- ``reliable`` (node parameter, default false): inputs use the sensor-data profile (best effort, the
  latest 5) by default; ``reliable: true`` subscribes reliably instead. Large clouds over stock DDS
  often lose fragments under best effort; reliable delivery fixes that where the publisher is reliable.
- ``qos_overrides.<topic>.<publisher|subscription>.<policy>``: rclpy's standard overrides
  (reliability, durability, history, depth) on every subscription and publisher, e.g.
  ``-p qos_overrides./velodyne_points.subscription.reliability:=reliable``. They are read at start.
"""

from __future__ import annotations


def input_qos(reliable: bool):
    """A new QoS for one sensor input (cloud, image, CameraInfo): the sensor-data profile, or reliable.

    One per subscription: rclpy applies ``qos_overrides`` to the profile object it is given, so a shared
    one (``qos_profile_sensor_data``) would carry one topic's overrides to every other.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    return QoSProfile(depth=qos_profile_sensor_data.depth, history=qos_profile_sensor_data.history,
                      durability=qos_profile_sensor_data.durability,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


def output_qos(depth: int):
    """Outputs are reliable, keep-last ``depth``: a best-effort subscriber still matches."""
    from rclpy.qos import QoSProfile

    return QoSProfile(depth=depth)


def overridable():
    """The ``qos_overriding_options`` argument that declares the standard ``qos_overrides`` parameters."""
    from rclpy.qos_overriding_options import QoSOverridingOptions

    return QoSOverridingOptions.with_default_policies()


def tf_qos(static: bool):
    """The QoS tf2 uses: /tf_static is latched (transient local), /tf is volatile; both reliable."""
    from rclpy.qos import DurabilityPolicy, QoSProfile

    return QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)
