"""One config schema for the CLI, the ROS nodes and the tests.

Nested dataclasses hold the paper's defaults; a YAML file only overrides keys it names.
``flatten`` / ``apply_overrides`` turn the tree into dotted keys (``clustering.eps``) and back, which
is how the ROS node exposes every key as a parameter.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

# SemanticKITTI's 19 evaluation classes, in the standard training order.
SEMANTIC_KITTI_CLASSES = [
    "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
    "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence",
    "vegetation", "trunk", "terrain", "pole", "traffic-sign",
]
DEFAULT_UNSEEN = ["motorcycle", "truck", "bicyclist", "traffic-sign"]

DEFAULT_TEMPLATES = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of a {} in a street scene.",
    "a low resolution photo of a {}.",
]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


# Keys that were removed from the schema: a config that still sets one loads, with a warning that names it.
DEPRECATED_KEYS = {
    "clustering.normal_weight": "no superpoint method ever used it",
}


@dataclass
class PointsConfig:
    """How raw clouds are read (see ``points.py``: one rule for every reader and node)."""

    # "auto": full scale from the field datatype and the values seen (1, 255 or 65535), or a number: the raw
    # intensity that maps to 1.0. Every stage sees intensity in 0..1.
    intensity_scale: str = "auto"


@dataclass
class ClusteringConfig:
    method: str = "supervoxel"  # "supervoxel" (annotation-free over-segmentation) | "dbscan"
    front_view_only: bool = True  # cluster only points that project into a camera
    remove_ground: bool = True  # dbscan: drop the ground before clustering
    ground_distance: float = 0.2  # m, RANSAC plane inlier distance
    ground_iterations: int = 100
    eps: float = 0.5  # m, DBSCAN radius
    min_samples: int = 5
    voxel_size: float = 0.3  # m, supervoxel: non-ground points in touching voxels are connected
    intensity_weight: float = 10.0  # supervoxel merge: intensity x weight is compared with xyz / position_scale
    image_weight: float = 1.0  # supervoxel: > 0 = initial pieces never cross image superpixel borders
    # Superpoint budget per frame: superpoint_density per steradian of the view the eligible points cover (see
    # superpoints/budget.py; KITTI's front camera covers ~0.39 sr -> ~300), or max_superpoints when > 0.
    superpoint_density: float = 780.0
    max_superpoints: int = 0
    min_points: int = 2  # superpoints with fewer points are invalid
    position_scale: float = 1.0  # m, supervoxel merge: unit of centroid distance in the merge cost
    ground_weight: float = 5.0  # supervoxel merge: cost of joining ground and non-ground pieces
    merge_size_exponent: float = 0.5  # merge cost x (n_a n_b / (n_a + n_b))^a: 1 = Ward, 0 = centroid linkage
    merge_neighbours: int = 6  # supervoxel merge: candidate pairs = k nearest piece centroids
    plane_weight: float = 30.0  # supervoxel merge: weight of the growth of squared distances to the best plane
    line_weight: float = 10.0  # supervoxel merge: same for the best line (poles, trunks)
    roughness_weight: float = 20.0  # supervoxel merge: scan-order roughness (foliage vs walls, fences)
    kerb_height: float = 0.07  # m, supervoxel: ground this far above the road plane is cut apart (0 = off)
    boundary_weight: float = 10.0  # supervoxel merge: weight of the depth jump where two pieces meet in the scan (0 = off)
    jump_cut: float = 0.8  # supervoxel: initial pieces never span scan neighbours with a depth-jump weight >= this (0 = off)
    rough_cut: float = 0.08  # supervoxel: non-ground pieces are cut between foliage-rough and smooth points (0 = off)
    rough_cut_window: int = 7  # scan-order points the roughness is averaged over before rough_cut compares it
    merge_round_ratio: float = 3.0  # supervoxel merge: a round joins pairs costing <= this x its cheapest (inf = all)
    max_range: float = 0.0  # m, points further away get no superpoint (0 = off; SemanticKITTI labels ~50 m)
    road_cell: float = 2.0  # m, supervoxel: xy cell of the local road surface heights refer to (0 = one plane)
    road_smooth: float = 1.0  # cells, supervoxel: Gaussian smoothing of the local road surface
    kerb_step: float = 0.05  # m, supervoxel: height step between ground scan neighbours that is a full kerb
    kerb_step_weight: float = 20.0  # supervoxel merge: weight of the kerb step where ground pieces meet (0 = off)
    ground_region_k: float = 50.0  # supervoxel: graph image regions of this scale cut the ground (0 = superpixels do)
    ground_region_scale: float = 0.25  # supervoxel: the image is scaled by this before the graph segmentation
    ground_region_sigma: float = 0.3  # px of the scaled image, Gaussian smoothing before the graph segmentation
    ground_region_min_size: int = 10  # px of the scaled image, smallest graph region


@dataclass
class VisibilityConfig:
    superpixel_method: str = "seeds"  # "seeds" | "slico" (opencv-contrib ximgproc) | "slic" (scikit-image)
    num_superpixels: int = 800
    depth_threshold: float = 0.5  # m, T_D: visible iff d - D_sp < T_D


@dataclass
class ClipConfig:
    model: str = "openai/clip-vit-base-patch32"  # hub id or local folder
    processor: str = ""  # tokenizer/preprocessor folder or id; "" = same as model
    local_files_only: bool = False  # never reach the hub; use local folders or the HF cache only
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    batch_size: int = 32
    min_crop: int = 30  # px, crops are grown to at least min_crop x min_crop
    crop_padding: float = 0.1  # fraction of the box size added on each side
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    # Crop encoder. backend: auto | torch | onnxruntime | openvino; precision: auto | fp32 | bf16 | fp16 | int8.
    # auto = the fastest measured choice that keeps the features (clip_backends.py); CUDA runs torch fp16.
    backend: str = "auto"
    precision: str = "auto"
    export_dir: str = ""  # cache of exported vision towers; "" = beside the weights / in the HF cache
    BACKEND_PRECISIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "torch": ("fp32", "bf16", "fp16"),
        "onnxruntime": ("fp32", "int8"),
        "openvino": ("fp32", "bf16"),
    }


@dataclass
class AffinityConfig:
    enabled: bool = True
    mode: str = "offline"  # "offline" (block queue, looks ahead) | "online" (causal window)
    scale: float = 20.0  # s in W = softmax(s F F^T)
    beta: float = 2.0  # T = D^-1 W^beta (element-wise power)
    queue_size: int = 200  # offline: pop the block once this many instances are queued
    window_frames: int = 5  # online: refine the newest frame against the last K frames
    max_instances: int = 2000  # hard cap on queued instances (bounded memory)


@dataclass
class SamConfig:
    """Optional box-prompted Segment Anything masks that sharpen instances (off by default: slow on CPU)."""

    enabled: bool = False
    backend: str = "segment_anything"  # "segment_anything" (.pth checkpoint) | "transformers" (SamModel)
    model_type: str = "vit_b"  # segment_anything registry key: vit_b | vit_l | vit_h
    checkpoint: str = ""  # segment_anything: the .pth file; transformers: hub id or folder ("" = facebook/sam-vit-base)
    device: str = ""  # "" = clip.device
    box_batch_size: int = 16  # boxes decoded together (memory ~ 4 MB x this at 1024 px)
    mask_crops: bool = True  # grey the crop outside the mask before CLIP encodes it
    drop_outside: bool = True  # an instance's points that project outside its mask get no label
    min_point_fraction: float = 0.25  # a mask holding less of its instance's visible points is judged failed


@dataclass
class JobConfig:
    """Offline labelling jobs (``partlift label``)."""

    # A source is labelled in chunks of this many frame numbers ([0, n), [n, 2n), ...): the affinity context
    # (offline block queue, online window) starts afresh at every chunk, so a chunk's labels do not depend on
    # any other chunk, a resumed run equals an uninterrupted one and chunks can be labelled apart (0 = one chunk).
    chunk_frames: int = 100
    # Threads of torch, BLAS and OpenMP in every process of a job (this one, Ray's workers and CLIP actors): CPU
    # float results (CLIP's vision tower, the affinity products) depend on the thread count, so a job with N
    # workers gives the bytes of one process only when all use the same number.
    threads: int = 1


@dataclass
class PipelineConfig:
    classes: list[str] = field(default_factory=lambda: list(SEMANTIC_KITTI_CLASSES))
    # Generalized zero-shot: CLIP chooses among these only (empty = all classes).
    unseen_classes: list[str] = field(default_factory=list)
    points: PointsConfig = field(default_factory=PointsConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    visibility: VisibilityConfig = field(default_factory=VisibilityConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    sam: SamConfig = field(default_factory=SamConfig)
    job: JobConfig = field(default_factory=JobConfig)
    seed: int = 0
    # Threads of the CLIP-free stages: > 1 segments the images on helper threads while the scan cues are
    # computed (same superpoints with any count; 1 = one stage after the other).
    geometry_threads: int = 2

    def validate(self) -> None:
        if not self.classes:
            raise ConfigError("classes: the class list is empty")
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"classes: duplicate names in {self.classes}")
        unknown = [c for c in self.unseen_classes if c not in self.classes]
        if unknown:
            raise ConfigError(f"unseen_classes: {unknown} are not in classes {self.classes}")
        from .points import parse_intensity_scale

        try:
            parse_intensity_scale(self.points.intensity_scale)
        except ValueError as exc:
            raise ConfigError(f"points.intensity_scale: {exc}") from None
        if self.clustering.method not in ("supervoxel", "dbscan"):
            raise ConfigError(f"clustering.method: expected 'supervoxel' or 'dbscan', got {self.clustering.method!r}")
        if self.visibility.superpixel_method not in ("seeds", "slico", "slic"):
            raise ConfigError(
                f"visibility.superpixel_method: expected seeds|slico|slic, got {self.visibility.superpixel_method!r}"
            )
        if self.affinity.mode not in ("offline", "online"):
            raise ConfigError(f"affinity.mode: expected 'offline' or 'online', got {self.affinity.mode!r}")
        if not self.clip.templates or any("{}" not in t for t in self.clip.templates):
            raise ConfigError("clip.templates: each template must contain '{}'")
        backends = ClipConfig.BACKEND_PRECISIONS
        if self.clip.backend not in ("auto", *backends):
            raise ConfigError(f"clip.backend: expected auto|{'|'.join(backends)}, got {self.clip.backend!r}")
        precisions = backends.get(self.clip.backend, ("fp32", "bf16", "fp16", "int8"))
        if self.clip.precision not in ("auto", *precisions):
            raise ConfigError(f"clip.precision: clip.backend={self.clip.backend} runs auto|{'|'.join(precisions)}, "
                              f"got {self.clip.precision!r}")
        if self.clustering.min_points < 2:
            raise ConfigError("clustering.min_points: superpoints need at least 2 points")
        c = self.clustering
        regions_ok = 0 < c.ground_region_scale <= 1 and c.ground_region_sigma >= 0 and c.ground_region_min_size >= 1
        if c.ground_region_k > 0 and not regions_ok:
            raise ConfigError(
                "clustering.ground_region_*: need 0 < ground_region_scale <= 1, ground_region_sigma >= 0 and "
                f"ground_region_min_size >= 1, got {c.ground_region_scale}, {c.ground_region_sigma}, "
                f"{c.ground_region_min_size}"
            )
        if c.max_superpoints < 0 or (c.max_superpoints == 0 and not c.superpoint_density > 0):
            raise ConfigError(
                "clustering: need max_superpoints > 0 (a fixed budget) or max_superpoints = 0 and superpoint_density "
                f"> 0 (per steradian of view), got {c.max_superpoints} and {c.superpoint_density}"
            )
        if c.rough_cut > 0 and c.rough_cut_window < 1:
            raise ConfigError(f"clustering.rough_cut_window: need >= 1 point, got {c.rough_cut_window}")
        if self.sam.backend not in ("segment_anything", "transformers"):
            raise ConfigError(f"sam.backend: expected 'segment_anything' or 'transformers', got {self.sam.backend!r}")
        if self.geometry_threads < 1:
            raise ConfigError(f"geometry_threads: expected >= 1 threads, got {self.geometry_threads}")
        if self.job.threads < 1:
            raise ConfigError(f"job.threads: expected >= 1 threads, got {self.job.threads}")
        if self.job.chunk_frames < 0:
            raise ConfigError(f"job.chunk_frames: expected >= 0 frames (0 = one chunk), got {self.job.chunk_frames}")
        if self.sam.box_batch_size < 1 or not 0.0 <= self.sam.min_point_fraction <= 1.0:
            raise ConfigError("sam: box_batch_size must be >= 1 and min_point_fraction in [0, 1]")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values, e.g. {'clustering.eps': 0.5, 'classes': [...]}."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert ``value`` to the type of the default, with an error that names the key."""
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, list):
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return [str(v) for v in value]
        if isinstance(current, str):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot use {value!r} as {type(current).__name__}") from exc
    return value


def apply_overrides(cfg: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """Return a copy of ``cfg`` with dotted or nested overrides applied; unknown keys raise."""
    cfg = copy.deepcopy(cfg)
    flat = flatten(cfg)
    for key, value in _flatten_plain(overrides).items():
        if key in DEPRECATED_KEYS:
            warnings.warn(f"config key {key!r} is deprecated and ignored ({DEPRECATED_KEYS[key]}); remove it",
                          FutureWarning, stacklevel=2)
            continue
        if key not in flat:
            close = [k for k in flat if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        obj = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            obj = getattr(obj, p)
        setattr(obj, parts[-1], _coerce(key, flat[key], value))
    cfg.validate()
    return cfg


def _flatten_plain(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_plain(v, key + "."))
        else:
            out[key] = v
    return out


def read_yaml_mapping(path: Path, error: type[Exception] = ConfigError) -> dict:
    """The mapping a YAML file holds (empty file: {}); ``error`` naming the file when it is not one."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Defaults, then the YAML file (if any), then explicit overrides."""
    cfg = PipelineConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        cfg = apply_overrides(cfg, read_yaml_mapping(p))
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    cfg.validate()
    return cfg


def dump_config(cfg: PipelineConfig, path: str | os.PathLike) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain new file gets under the umask (0o666 & ~umask), as ``open()`` would give it."""
    return 0o666 & ~umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file.

    The file gets the user's umask (mkstemp alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
