"""ROS parameters of the labeller: every core config key as a dotted parameter, plus node-only ones.

The core defaults come from ``config.PipelineConfig`` through ``config.flatten``, so the node, the
CLI and config/labeller.yaml cannot drift apart. Values read back go through
``config.apply_overrides``, which coerces types and validates, so a bad value is refused with the
same message the CLI would give.

Cameras. With ``cameras`` empty (the default) the node has one camera on the relative topics
``image`` and ``camera_info`` (remapped by launch/labeller.launch.py), with the extrinsic from TF or
the ``T_cam_lidar`` parameter. ``cameras: [front, left]`` gives a rig of named cameras instead, each
with its own parameters, declared once ``cameras`` is known:

    <name>.image_topic        default "<name>/image"
    <name>.camera_info_topic  default "<name>/camera_info"
    <name>.T_cam_lidar        16 floats, row-major; [] = from TF only (``lidar_frame`` still applies)

The list order matters: the pipeline crops an instance from the camera that sees most of its
visible points, and a tie goes to the camera listed first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import ConfigError, PipelineConfig, apply_overrides, flatten


@dataclass
class NodeSettings:
    """Parameters that only the node has (the pipeline never sees them)."""

    slop: float = 0.05  # s, max |cloud stamp - image stamp| for a pair
    max_points: int = 300_000  # clouds with more points are refused (bounded latency and memory)
    use_compressed: bool = False  # subscribe to sensor_msgs/CompressedImage on `image` instead of Image
    reliable: bool = False  # inputs: reliable QoS instead of best-effort sensor data (see ros/qos.py)
    # CPU threads of torch, BLAS and OpenCV in this process: 0 = every core but one (at least one), which is left
    # to the executor threads that decode the next inputs; N = N threads; -1 = the libraries' defaults (one per
    # core each, and the pools wait on each other: 3x slower stages on a busy 2-core machine, see soak_labeller.py).
    compute_threads: int = 0
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
    cameras: list = field(default_factory=list)  # names of a camera rig (see the module doc); [] = one camera

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
        if self.compute_threads < -1:
            raise ConfigError(f"compute_threads must be >= -1 (0 = all cores but one, -1 = the libraries' defaults), "
                              f"got {self.compute_threads}")
        if self.overlay_radius < 0:
            raise ConfigError(f"overlay_radius must be >= 0, got {self.overlay_radius}")
        for name in self.cameras:
            check_camera_name(name)
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras: names must be unique, got {self.cameras}")


NODE_KEYS = tuple(f.name for f in fields(NodeSettings))

# Keys that take a word or a number ("auto" or 255): declared dynamically typed so both are accepted.
NUMBER_OR_WORD_KEYS = ("points.intensity_scale",)
# Changing these needs the CLIP model to be loaded again.
MODEL_KEYS = ("clip.model", "clip.processor", "clip.device")
# Fixed at start (they decide subscriptions and buffers): a change is refused with "restart".
RESTART_KEYS = {
    "use_compressed": "use_compressed changes the subscription type",
    "reliable": "reliable changes the subscriptions' QoS",
    "image_buffer": "image_buffer is fixed at start",
    "compute_threads": "compute_threads is set once per process",
    "cameras": "the camera list and topics are fixed at start",
}


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
        dynamic = (isinstance(default, float) or (isinstance(default, list) and not default)
                   or key in NUMBER_OR_WORD_KEYS)
        node.declare_parameter(key, default, ParameterDescriptor(dynamic_typing=dynamic, description=_describe(key)))
    declare_cameras(node, [str(v) for v in node.get_parameter("cameras").value or ()])


def _describe(key: str) -> str:
    if key in NODE_KEYS:
        return f"labeller node setting {key}"
    return f"core config {key} (see partlift_ros/config.py)"


def build_config(values: dict[str, Any]) -> PipelineConfig:
    """PipelineConfig from dotted parameter values (core keys only); raises ConfigError."""
    names = set(values.get("cameras") or ())
    core = {k: v for k, v in values.items() if k not in NODE_KEYS and k.split(".", 1)[0] not in names}
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
            elif key == "cameras":
                value = [str(v) for v in value]
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


def refuse_change(names: set[str], values: dict[str, Any]) -> str | None:
    """Why a running node must refuse new values of the parameters ``names`` (``values``: all of them, with
    the new ones), or None when they can be applied."""
    for key, why in RESTART_KEYS.items():
        if key in names:
            return f"{why}: restart the node"
    if any(n.rsplit(".", 1)[-1] in CAMERA_RESTART_KEYS for n in names):
        return f"{RESTART_KEYS['cameras']}: restart the node"
    try:
        build_config(values)
        build_settings(values)
        build_cameras(values)
    except ConfigError as exc:
        return str(exc)
    return None


def current_values(node) -> dict[str, Any]:
    """Every declared core, node and camera parameter of ``node`` -> its value."""
    names = [str(v) for v in node.get_parameter("cameras").value or ()]
    keys = list(core_defaults()) + list(NODE_KEYS) + list(camera_defaults(names))
    return {p.name: p.value for p in node.get_parameters(keys)}


# ---------------------------------------------------------------------------------------------- cameras
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
CAMERA_KEYS = ("image_topic", "camera_info_topic", "T_cam_lidar")
# Only the extrinsic may change while running; the topics are subscribed at start.
CAMERA_RESTART_KEYS = ("image_topic", "camera_info_topic")


@dataclass(frozen=True)
class CameraSpec:
    """One camera of the node: its input topics and, optionally, its extrinsic.

    ``name`` "" is the default single camera (topics ``image``/``camera_info``, global T_cam_lidar).
    """

    name: str
    image_topic: str
    camera_info_topic: str
    T_cam_lidar: tuple = ()  # 16 floats row-major; () = TF only

    @property
    def label(self) -> str:
        """How logs and /diagnostics name the camera."""
        return self.name or "camera"

    def input_key(self, what: str) -> str:
        """Name of this camera's ``image``/``camera_info`` input in the receive counters and /diagnostics."""
        return f"{self.name}/{what}" if self.name else what


def check_camera_name(name: Any) -> None:
    """A camera name is a ROS name token that does not shadow a core section or a node key."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"cameras: {name!r} is not a valid name (letters, digits, '_', starting with a letter)")
    reserved = {k.split(".", 1)[0] for k in core_defaults()} | set(NODE_KEYS)
    if name in reserved:
        raise ConfigError(f"cameras: {name!r} is taken by a parameter of the same name; choose another camera name")


def camera_defaults(names: list[str]) -> dict[str, Any]:
    """Dotted per-camera keys -> defaults for the named cameras."""
    out: dict[str, Any] = {}
    for name in names:
        out[f"{name}.image_topic"] = f"{name}/image"
        out[f"{name}.camera_info_topic"] = f"{name}/camera_info"
        out[f"{name}.T_cam_lidar"] = []
    return out


def build_cameras(values: dict[str, Any]) -> list[CameraSpec]:
    """The node's cameras from parameter values, in the order of ``cameras``; raises ConfigError."""
    names = [str(v) for v in values.get("cameras") or ()]
    if not names:
        return [CameraSpec("", "image", "camera_info")]
    defaults = camera_defaults(names)
    specs = []
    for name in names:
        check_camera_name(name)
        topics = []
        for what in ("image_topic", "camera_info_topic"):
            topic = values.get(f"{name}.{what}", defaults[f"{name}.{what}"])
            if not isinstance(topic, str) or not topic.strip():
                raise ConfigError(f"{name}.{what}: expected a topic name, got {topic!r}")
            topics.append(topic.strip())
        T = values.get(f"{name}.T_cam_lidar") or []
        try:
            T = tuple(float(v) for v in T)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}.T_cam_lidar: cannot use {T!r} as 16 floats") from exc
        if T and len(T) != 16:
            raise ConfigError(f"{name}.T_cam_lidar must have 16 values (row-major 4x4), got {len(T)}")
        specs.append(CameraSpec(name, topics[0], topics[1], T))
    used = [t for s in specs for t in (s.image_topic, s.camera_info_topic)]
    if len(set(used)) != len(used):
        raise ConfigError(f"cameras: two inputs share a topic: {used}")
    return specs


def declare_cameras(node, names: list[str]) -> None:
    """Declare the per-camera parameters of the named cameras (after ``cameras`` itself)."""
    from rcl_interfaces.msg import ParameterDescriptor

    for name in names:
        check_camera_name(name)
    for key, default in camera_defaults(names).items():
        node.declare_parameter(key, default, ParameterDescriptor(
            dynamic_typing=isinstance(default, list), description=f"camera {key.split('.')[0]}: {key.split('.')[1]}"))
