"""ROS parameters of the labeller: every core config key as a dotted parameter, plus node-only ones.

The core defaults come from ``config.PipelineConfig`` through ``config.flatten``, so the node, the
CLI and config/labeller.yaml cannot drift apart. Values read back go through
``config.apply_overrides``, which coerces types and validates, so a bad value is refused with the
same message the CLI would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..config import ConfigError, PipelineConfig, apply_overrides, flatten


@dataclass
class NodeSettings:
    """Parameters that only the node has (the pipeline never sees them)."""

    slop: float = 0.05  # s, max |cloud stamp - image stamp| for a pair
    max_points: int = 300_000  # clouds with more points are refused (bounded latency and memory)
    use_compressed: bool = False  # subscribe to sensor_msgs/CompressedImage on `image` instead of Image
    T_cam_lidar: list = field(default_factory=list)  # 16 floats, row-major, used when TF has none; [] = unset
    lidar_frame: str = ""  # T_cam_lidar applies to clouds in this frame ("" = any frame)
    camera_frame: str = ""  # ... and to images in this frame ("" = any frame)
    camera_info_timeout: float = 5.0  # s, CameraInfo older than this (vs the image stamp) is stale; <= 0 disables
    pair_timeout: float = 0.5  # s of wall time a cloud waits for a later image before it is given up
    image_buffer: int = 30  # images kept for pairing
    tf_timeout: float = 0.05  # s to wait for a TF lookup
    publish_overlay: bool = True
    overlay_radius: int = 1
    diagnostics_period: float = 1.0  # s
    log_throttle: float = 5.0  # s between two log lines of the same kind

    def validate(self) -> None:
        if not self.slop >= 0:
            raise ConfigError(f"slop must be >= 0 s, got {self.slop}")
        if self.max_points < 1:
            raise ConfigError(f"max_points must be >= 1, got {self.max_points}")
        if self.image_buffer < 1:
            raise ConfigError(f"image_buffer must be >= 1, got {self.image_buffer}")
        if self.T_cam_lidar and len(self.T_cam_lidar) != 16:
            raise ConfigError(f"T_cam_lidar must have 16 values (row-major 4x4), got {len(self.T_cam_lidar)}")
        if self.diagnostics_period <= 0:
            raise ConfigError(f"diagnostics_period must be > 0 s, got {self.diagnostics_period}")
        if self.overlay_radius < 0:
            raise ConfigError(f"overlay_radius must be >= 0, got {self.overlay_radius}")


NODE_KEYS = tuple(f.name for f in fields(NodeSettings))

# Changing these needs the CLIP model to be loaded again.
MODEL_KEYS = ("clip.model", "clip.processor", "clip.device")


def core_defaults() -> dict[str, Any]:
    """Dotted core keys -> defaults; the node always runs the affinity stage online."""
    flat = flatten(PipelineConfig())
    flat["affinity.mode"] = "online"
    return flat


def node_defaults() -> dict[str, Any]:
    s = NodeSettings()
    return {k: getattr(s, k) for k in NODE_KEYS}


def declare_all(node) -> None:
    """Declare every core and node parameter with its default (launch/YAML values override them)."""
    from rcl_interfaces.msg import ParameterDescriptor

    for key, default in {**core_defaults(), **node_defaults()}.items():
        # Floats and empty lists: rclpy cannot tell 1 from 1.0 in YAML nor type an empty list, so the
        # value is checked by apply_overrides / NodeSettings.validate instead of by the type.
        dynamic = isinstance(default, float) or (isinstance(default, list) and not default)
        node.declare_parameter(key, default, ParameterDescriptor(dynamic_typing=dynamic, description=_describe(key)))


def _describe(key: str) -> str:
    if key in NODE_KEYS:
        return f"labeller node setting {key}"
    return f"core config {key} (see partlift_ros/config.py)"


def build_config(values: dict[str, Any]) -> PipelineConfig:
    """PipelineConfig from dotted parameter values (core keys only); raises ConfigError."""
    core = {k: v for k, v in values.items() if k not in NODE_KEYS}
    if core.get("affinity.mode", "online") != "online":
        raise ConfigError("affinity.mode: the labeller node runs causally, only 'online' is allowed")
    cfg = apply_overrides(PipelineConfig(), core)
    cfg.affinity.mode = "online"
    return cfg


def build_settings(values: dict[str, Any]) -> NodeSettings:
    """NodeSettings from parameter values; raises ConfigError naming the key."""
    base = node_defaults()
    kwargs = {}
    for key in NODE_KEYS:
        value = values.get(key, base[key])
        default = base[key]
        try:
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int):
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, list):
                value = [float(v) for v in value]
            else:
                value = str(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: cannot use {value!r} as {type(default).__name__}") from exc
        kwargs[key] = value
    settings = NodeSettings(**kwargs)
    settings.validate()
    return settings


def current_values(node) -> dict[str, Any]:
    """Every declared core/node parameter of ``node`` -> its value."""
    keys = list(core_defaults()) + list(NODE_KEYS)
    return {p.name: p.value for p in node.get_parameters(keys)}
