"""CLIP crop labelling: instance boxes in the image, batched crop encoding, prompt-ensembled text.

Each instance (superpoint) is cut out of the camera image along the 2D box of its visible projected
points; CLIP embeds the crop, and the softmax over cosine similarities with the class prompts gives
its score row. The model is loaded with ``transformers`` (``CLIPModel``); its vision tower runs on the
crop-encoder backend ``clip_backends.py`` picks (torch, ONNX Runtime or OpenVINO). The image preprocessing of
``CLIPImageProcessor`` is re-done in torch so that a whole batch of crops is prepared at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .clip_loading import HOW_TO_GET_WEIGHTS, ClipProcessor, ModelLoadError, clip_source, load_clip_model, resolve_device
from .clip_preprocess import CropPreprocessor
from .config import ClipConfig
from .types import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "HOW_TO_GET_WEIGHTS", "ClipLabeler", "ClipProcessor", "CropPreprocessor", "ModelLoadError", "crop_images",
    "instance_boxes", "prompt_name",
]
TEXT_CACHE_SIZE = 8  # (classes, templates) combinations kept


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


# ----------------------------------------------------------------------------- the labeller
def prompt_name(class_name: str) -> str:
    """'traffic-sign' -> 'traffic sign': dataset class ids read better as words in a prompt."""
    return " ".join(class_name.replace("-", " ").replace("_", " ").split())


class ClipLabeler:
    """Scores image crops against class prompts with a ``transformers.CLIPModel`` (vision tower on ``clip_backends``).

    ``model`` is a ``CLIPModel``; ``processor`` is anything with ``.tokenizer`` and ``.image_processor``
    (e.g. ``ClipProcessor``). Without them the model is loaded from ``cfg`` (see ``load``).
    """

    def __init__(self, cfg: ClipConfig, model: Any = None, processor: Any = None) -> None:
        from .clip_backends import build_encoder, model_dtype
        from .clip_export import cache_root

        source = None
        if model is None:
            source = clip_source(cfg.model)
            model = load_clip_model(cfg.model, cfg.local_files_only)
        if processor is None:
            processor = ClipProcessor.load(cfg.processor or cfg.model, cfg.local_files_only)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        # Half precision halves memory and time on GPUs; on CPUs the torch model stays float32 and the crop
        # encoder picks its own precision (clip.backend / clip.precision).
        self.dtype = model_dtype(cfg.precision, self.device)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.preprocess = CropPreprocessor.from_image_processor(self.image_processor)
        self._check_compatible()
        self._text_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], "torch.Tensor"] = {}
        self.encoder = build_encoder(cfg, self.model, self.device, self.preprocess,
                                     cache_root(cfg.export_dir, source))

    @property
    def backend(self) -> str:
        """The crop encoder in use, e.g. 'onnxruntime int8' or 'torch fp32' (clip.backend / clip.precision)."""
        return self.encoder.name

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
        """(M, D) float32 normalised image embeddings of uint8 RGB crops, in ``cfg.batch_size`` batches.

        Encoded by ``self.encoder`` (see ``backend``); fp32 torch is the reference every backend is held to.
        """
        import torch

        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        batch_size = max(int(self.cfg.batch_size), 1)
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), batch_size):
                pixels = self.preprocess(crops[i:i + batch_size], self.device, self.dtype)
                out.append(self.encoder.run(pixels))
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
