"""CLIP crop labelling: instance boxes in the image, batched crop encoding, prompt-ensembled text.

Each instance (superpoint) is cut out of the camera image along the 2D box of its visible projected
points; CLIP embeds the crop, and the softmax over cosine similarities with the class prompts gives
its score row. Only ``transformers.CLIPModel`` is used; the image preprocessing of
``CLIPImageProcessor`` is re-done in torch so that a whole batch of crops is prepared at once.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .config import ClipConfig
from .types import InputError

if TYPE_CHECKING:
    import torch

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TEXT_CACHE_SIZE = 8  # (classes, templates) combinations kept
HOW_TO_GET_WEIGHTS = (
    "set clip.model to a local folder holding a CLIP model saved with save_pretrained "
    "(config.json + model.safetensors, tokenizer and preprocessor_config.json), "
    "or to a hub id such as 'openai/clip-vit-base-patch32' on a machine with internet access"
)


class ModelLoadError(RuntimeError):
    """The CLIP model, its tokenizer or its preprocessor config could not be loaded.

    The message says which path or id failed, why, and how to get working weights.
    """


# ----------------------------------------------------------------------------- boxes and crops
def instance_boxes(
    uv: np.ndarray,
    instance: np.ndarray,
    visible: np.ndarray,
    num_instances: int,
    image_size: tuple[int, int],
    min_crop: int = 30,
    padding: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """2D crop box of every instance from its visible projected points.

    Returns ``boxes`` (M, 4) int32 ``[u0, v0, u1, v1)`` with exclusive ends and ``has_box`` (M,) bool.
    The box spans the pixels of the points (a point at u lies in pixel floor(u)), is padded by
    ``padding`` times its size on each side, grown to at least ``min_crop`` x ``min_crop`` around its
    centre and clipped to the image. Instances without a visible point have ``has_box`` False and a
    zero box.
    """
    uv = np.asarray(uv, dtype=np.float64)
    instance = np.asarray(instance)
    visible = np.asarray(visible, dtype=bool)
    n = instance.shape[0]
    m = int(num_instances)
    if instance.ndim != 1 or uv.shape != (n, 2) or visible.shape != (n,):
        raise InputError(
            f"instance_boxes: expected uv (N, 2), instance (N,), visible (N,), got "
            f"{uv.shape}, {instance.shape}, {visible.shape}"
        )
    w, h = int(image_size[0]), int(image_size[1])
    if w <= 0 or h <= 0 or m < 0:
        raise InputError(f"instance_boxes: bad image size {image_size} or instance count {num_instances}")
    boxes = np.zeros((m, 4), dtype=np.int32)
    has_box = np.zeros(m, dtype=bool)
    if m == 0:
        return boxes, has_box

    use = visible & (instance >= 0) & np.isfinite(uv).all(axis=1)
    ids = instance[use].astype(np.int64)
    if ids.size and ids.max() >= m:
        raise InputError(f"instance_boxes: instance id {int(ids.max())} >= num_instances {m}")
    lo = np.full((m, 2), np.inf)
    hi = np.full((m, 2), -np.inf)
    np.minimum.at(lo, ids, uv[use])
    np.maximum.at(hi, ids, uv[use])
    has_box = np.isfinite(lo[:, 0])

    lo = np.floor(np.where(has_box[:, None], lo, 0.0))
    hi = np.floor(np.where(has_box[:, None], hi, 0.0)) + 1.0
    pad = padding * (hi - lo)
    lo, hi = lo - pad, hi + pad
    grow = np.maximum(min_crop - (hi - lo), 0.0) / 2.0
    lo, hi = lo - grow, hi + grow
    limit = np.array([w, h], dtype=np.float64)
    lo = np.clip(np.floor(lo), 0, limit)
    hi = np.clip(np.ceil(hi), 0, limit)
    # Points projected outside the image (a caller's mistake) can leave an empty box after clipping.
    has_box &= (hi > lo).all(axis=1)
    boxes[has_box] = np.concatenate([lo, hi], axis=1)[has_box].astype(np.int32)
    return boxes, has_box


def crop_images(image: np.ndarray, boxes: np.ndarray, has_box: np.ndarray) -> list[np.ndarray]:
    """The crops ``image[v0:v1, u0:u1]`` of the instances with ``has_box``, in instance order.

    Crops are views into ``image`` (no copy); CLIP preprocessing copies them.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"crop_images: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    boxes = np.asarray(boxes)
    has_box = np.asarray(has_box, dtype=bool)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or has_box.shape != (boxes.shape[0],):
        raise InputError(f"crop_images: boxes must be (M, 4) with has_box (M,), got {boxes.shape}, {has_box.shape}")
    return [image[v0:v1, u0:u1] for u0, v0, u1, v1 in boxes[has_box].tolist()]


# ----------------------------------------------------------------------------- preprocessing
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}  # PIL resampling id -> torch interpolate mode


@dataclass(frozen=True)
class CropPreprocessor:
    """``CLIPImageProcessor``'s steps for a batch of crops, in torch.

    Resize (shortest edge or fixed size, antialiased on uint8 as PIL does), centre crop (zero padded when
    the image is smaller), rescale and normalise. Resizing runs per crop on the CPU; the rest runs on the
    stacked batch on the model's device.
    """

    shortest_edge: int | None
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int] | None
    mode: str
    rescale_factor: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_image_processor(cls, ip: Any) -> "CropPreprocessor":
        resample = int(getattr(ip, "resample", 3))
        if resample not in _RESAMPLE_MODES:
            raise ModelLoadError(f"preprocessor config: resample={resample} is not supported (use 2 or 3)")
        size, crop = ip.size, ip.crop_size
        shortest, resize_hw = None, None
        if ip.do_resize:
            if getattr(size, "shortest_edge", None):
                shortest = int(size.shortest_edge)
            elif getattr(size, "height", None) and getattr(size, "width", None):
                resize_hw = (int(size.height), int(size.width))
            else:
                raise ModelLoadError(f"preprocessor config: unsupported resize size {size}")
        crop_hw = (int(crop.height), int(crop.width)) if ip.do_center_crop else None
        return cls(
            shortest_edge=shortest,
            resize_hw=resize_hw,
            crop_hw=crop_hw,
            mode=_RESAMPLE_MODES[resample],
            rescale_factor=float(ip.rescale_factor) if ip.do_rescale else None,
            mean=tuple(float(x) for x in ip.image_mean) if ip.do_normalize else None,
            std=tuple(float(x) for x in ip.image_std) if ip.do_normalize else None,
        )

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        if self.crop_hw is not None:
            return self.crop_hw
        return self._resized_hw(h, w)

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        if self.resize_hw is not None:
            return self.resize_hw
        if self.shortest_edge is None:
            return h, w
        s = self.shortest_edge
        # Same rounding as transformers' get_resize_output_image_size (int() truncates the long side).
        if w <= h:
            return int(s * h / w), s
        return s, int(s * w / h)

    def resize_and_crop(self, crop: np.ndarray) -> "torch.Tensor":
        """(3, H, W) uint8 tensor of one crop after resize and centre crop."""
        import torch
        import torch.nn.functional as F

        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8 or 0 in crop.shape:
            raise InputError(f"encode_crops: each crop must be a non-empty (H, W, 3) uint8 RGB array, got "
                             f"{crop.shape} {crop.dtype}")
        if not (crop.flags.c_contiguous and crop.flags.writeable):
            crop = np.array(crop, order="C")  # torch wants writable memory; views of the image are strided
        x = torch.from_numpy(crop).permute(2, 0, 1)[None]
        h, w = crop.shape[:2]
        out_hw = self._resized_hw(h, w)
        if out_hw != (h, w):
            # uint8 channels-last input takes torch's PIL-style antialiased path: like PIL it clamps and
            # rounds between the two separable passes, so it matches CLIPImageProcessor to +-1..2 levels.
            x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=out_hw, mode=self.mode,
                              antialias=True, align_corners=False)
        if self.crop_hw is not None:
            x = _center_crop(x, self.crop_hw)
        return x[0].contiguous()  # NCHW-contiguous: the batched float ops below run several times faster

    def __call__(self, crops: Sequence[np.ndarray], device: "torch.device", dtype: "torch.dtype") -> "torch.Tensor":
        """(B, 3, H, W) pixel values ready for the vision tower."""
        import torch

        with _single_threaded():
            batch = torch.stack([self.resize_and_crop(c) for c in crops]).to(device, non_blocking=True)
            # (x * r - mean) / std folded into one multiply and one subtract, in place.
            scale = torch.full((1, 3, 1, 1), self.rescale_factor or 1.0, device=device)
            shift = torch.zeros((1, 3, 1, 1), device=device)
            if self.mean is not None:
                std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
                scale = scale / std
                shift = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) / std
            return batch.float().mul_(scale).sub_(shift).to(dtype)


@contextmanager
def _single_threaded():
    """Run CPU torch ops on the calling thread only, then restore the thread count.

    Preprocessing is many sub-millisecond ops (one resize per crop, then two passes over the batch):
    intra-op threads only add fork/join cost, and when the CPU is shared with other processes each join
    can wait a whole scheduler slice (measured: 2 threads on 2 busy cores ran several times slower than 1).
    """
    with torch_threads(1):
        yield


@contextmanager
def torch_threads(n: int):
    """Run CPU torch ops with ``n`` intra-op threads, then restore the thread count. (The float results of
    the vision tower on a CPU depend on it: a labelling job fixes it, config ``job.threads``.)"""
    import torch

    before = torch.get_num_threads()
    # Set even when it reads n already: the count it reads is OpenMP's, which another library may have set
    # (threadpoolctl) without torch's other pools following.
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _center_crop(x: "torch.Tensor", crop_hw: tuple[int, int]) -> "torch.Tensor":
    """Centre crop of (1, C, H, W), zero-padding first when the image is smaller (as transformers does)."""
    import torch.nn.functional as F

    ch, cw = crop_hw
    h, w = x.shape[-2:]
    if h < ch or w < cw:
        top = -(-(max(ch - h, 0)) // 2)  # ceil division, as transformers' center_crop pads
        left = -(-(max(cw - w, 0)) // 2)
        x = F.pad(x, (left, max(cw - w, 0) - left, top, max(ch - h, 0) - top))
        h, w = x.shape[-2:]
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


# ----------------------------------------------------------------------------- the labeller
def prompt_name(class_name: str) -> str:
    """'traffic-sign' -> 'traffic sign': dataset class ids read better as words in a prompt."""
    return " ".join(class_name.replace("-", " ").replace("_", " ").split())


class ClipLabeler:
    """Scores image crops against class prompts with a ``transformers.CLIPModel``.

    ``model`` is a ``CLIPModel``; ``processor`` is anything with ``.tokenizer`` and ``.image_processor``
    (e.g. ``ClipProcessor``). Without them the model is loaded from ``cfg`` (see ``load``).
    """

    def __init__(self, cfg: ClipConfig, model: Any = None, processor: Any = None) -> None:
        if model is None:
            model = _load_model(cfg.model, cfg.local_files_only)
        if processor is None:
            processor = ClipProcessor.load(cfg.processor or cfg.model, cfg.local_files_only)
        import torch

        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        # Half precision halves memory and time on GPUs; CPUs keep float32 (fp16 matmuls are slow there).
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.preprocess = CropPreprocessor.from_image_processor(self.image_processor)
        self._check_compatible()
        self._text_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    # -------------------------------------------------------------- construction
    @classmethod
    def load(cls, cfg: ClipConfig) -> "ClipLabeler":
        """Load ``CLIPModel`` + tokenizer + preprocessor config from ``cfg.model`` (hub id or folder).

        ``cfg.processor`` names the tokenizer/preprocessor source when it differs from the model.
        Raises ``ModelLoadError`` saying what is missing and how to get it.
        """
        return cls(cfg)

    @classmethod
    def from_config(cls, clip_config: Any, processor_dir: str | Path, cfg: ClipConfig | None = None,
                    seed: int = 0) -> "ClipLabeler":
        """A randomly initialised (seeded, deterministic) model of ``clip_config`` with a real tokenizer.

        For tests and benchmarks: a random model costs the same time as real weights.
        """
        import torch
        from transformers import CLIPModel

        cfg = cfg or ClipConfig()
        processor = ClipProcessor.load(str(processor_dir), cfg.local_files_only)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(clip_config)
        return cls(cfg, model, processor)

    def _check_compatible(self) -> None:
        vision = self.model.config.vision_config
        image_size = int(vision.image_size)
        out = self.preprocess.output_hw(image_size, image_size)
        if out != (image_size, image_size):
            raise ModelLoadError(
                f"the preprocessor makes {out[0]}x{out[1]} images but the CLIP vision tower expects "
                f"{image_size}x{image_size}; use the preprocessor_config.json that belongs to the model"
            )
        vocab = int(self.model.config.text_config.vocab_size)
        if len(self.tokenizer) > vocab:
            raise ModelLoadError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the CLIP text tower only {vocab}; "
                "clip.processor must point at the tokenizer of the same model"
            )

    # -------------------------------------------------------------- text
    @property
    def embedding_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def templates(self) -> list[str]:
        return list(self.cfg.templates)

    @templates.setter
    def templates(self, templates: Sequence[str]) -> None:
        templates = list(templates)
        if not templates or any("{}" not in t for t in templates):
            raise InputError(f"clip templates: each template must contain '{{}}', got {templates}")
        self.cfg.templates = templates

    def text_embeddings(self, class_names: Sequence[str]) -> "torch.Tensor":
        """(C, D) float32 CPU tensor: per class the re-normalised mean of its normalised prompt embeddings.

        Cached per (classes, templates); changing ``templates`` (or ``cfg.templates``) recomputes.
        """
        import torch

        classes = tuple(class_names)
        templates = tuple(self.cfg.templates)
        if not classes:
            raise InputError("text_embeddings: the class list is empty")
        if not templates or any("{}" not in t for t in templates):
            raise InputError(f"clip templates: each template must contain '{{}}', got {list(templates)}")
        key = (classes, templates)
        if key not in self._text_cache:
            prompts = [t.replace("{}", prompt_name(c)) for c in classes for t in templates]
            emb = self._encode_texts(prompts).view(len(classes), len(templates), -1)
            mean = torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)
            if len(self._text_cache) >= TEXT_CACHE_SIZE:  # bounded: vocabularies may change at runtime
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[key] = mean
        return self._text_cache[key].clone()

    def _encode_texts(self, prompts: list[str]) -> "torch.Tensor":
        """(P, D) float32 CPU tensor of normalised prompt embeddings."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(prompts), 256):
                tok = self.tokenizer(prompts[i:i + 256], padding=True, truncation=True, return_tensors="pt")
                text = self.model.text_model(
                    input_ids=tok["input_ids"].to(self.device),
                    attention_mask=tok["attention_mask"].to(self.device),
                )
                emb = self.model.text_projection(text.pooler_output).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out)

    # -------------------------------------------------------------- images
    def encode_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(M, D) float32 normalised image embeddings of uint8 RGB crops, in ``cfg.batch_size`` batches."""
        import torch

        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        batch_size = max(int(self.cfg.batch_size), 1)
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), batch_size):
                pixels = self.preprocess(crops[i:i + batch_size], self.device, self.dtype)
                vision = self.model.vision_model(pixel_values=pixels)
                emb = self.model.visual_projection(vision.pooler_output).float()
                out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        return torch.cat(out).numpy()

    def scores(self, features: Any, text: Any) -> np.ndarray:
        """(M, C) float32 softmax over classes of ``logit_scale.exp() * F Tᵀ``."""
        import torch

        f = torch.as_tensor(features).float().cpu()
        t = torch.as_tensor(text).float().cpu()
        if f.ndim != 2 or t.ndim != 2 or f.shape[1] != t.shape[1]:
            raise InputError(
                f"scores: expected features (M, D) and text (C, D), got {tuple(f.shape)}, {tuple(t.shape)}"
            )
        with torch.inference_mode():
            scale = self.model.logit_scale.detach().float().exp().cpu()
            return torch.softmax(scale * f @ t.T, dim=-1).numpy()


@dataclass
class ClipProcessor:
    """The tokenizer and image-preprocessor config of a CLIP model (no torchvision needed)."""

    tokenizer: Any
    image_processor: Any

    @classmethod
    def load(cls, source: str, local_files_only: bool = False) -> "ClipProcessor":
        from transformers import AutoTokenizer, CLIPImageProcessorPil

        path = _local_path(source)
        if path is not None:
            missing = [f for f in ("preprocessor_config.json",) if not (path / f).is_file()]
            if not (path / "tokenizer_config.json").is_file() and not (path / "vocab.json").is_file():
                missing.insert(0, "tokenizer files (tokenizer_config.json / vocab.json)")
            if missing:
                raise ModelLoadError(
                    f"CLIP processor folder {path} lacks {', '.join(missing)}; set clip.processor to the folder "
                    f"holding the model's tokenizer and preprocessor_config.json"
                )
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
            image_processor = CLIPImageProcessorPil.from_pretrained(source, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load the CLIP tokenizer/preprocessor from {source!r}: {exc}\nTo fix: {HOW_TO_GET_WEIGHTS}"
            ) from exc
        return cls(tokenizer, image_processor)


def _local_path(source: str) -> Path | None:
    """The folder ``source`` names, None for a hub id; raises when it looks like a path that is not there."""
    p = Path(source).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"CLIP model path {p} is a file; expected a model folder or a hub id")
        return p
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if looks_like_path:
        raise ModelLoadError(f"CLIP model folder {p} does not exist; {HOW_TO_GET_WEIGHTS}")
    return None


def _load_model(source: str, local_files_only: bool) -> Any:
    from transformers import CLIPModel

    path = _local_path(source)
    if path is not None:
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(
                f"{path} has no config.json, so it is not a Hugging Face model folder; {HOW_TO_GET_WEIGHTS}"
            )
        try:
            model_type = json.loads(config_file.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ModelLoadError(f"{config_file} is not a valid JSON model config: {exc}") from exc
        if model_type != "clip":
            raise ModelLoadError(
                f"{config_file} describes a {model_type!r} model, not 'clip'; clip.model must be a CLIP model "
                f"(e.g. openai/clip-vit-base-patch32)"
            )
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ModelLoadError(
                f"{path} has a CLIP config but no weights ({' / '.join(WEIGHT_FILES)}); {HOW_TO_GET_WEIGHTS}"
            )
    try:
        return CLIPModel.from_pretrained(source, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        where = f"folder {path}" if path is not None else f"hub id {source!r} (offline or not cached?)"
        raise ModelLoadError(f"cannot load CLIP weights from {where}: {exc}\nTo fix: {HOW_TO_GET_WEIGHTS}") from exc


def _resolve_device(device: str) -> "torch.device":
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"clip.device: {device!r} is not a torch device (use 'cpu', 'cuda' or 'cuda:N')") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"clip.device={device!r} but CUDA is not available here; use 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"clip.device: {device!r} is not supported (use 'cpu', 'cuda' or 'cuda:N')")
    return dev
