"""Box-prompted Segment Anything masks: sharper instances for the CLIP crops and for point membership.

For each instance the tight box of its visible projected points prompts SAM; the image embedding is
computed once per camera image and the boxes are decoded in batches against it. The mask then
(a) greys the crop background so CLIP scores the object rather than what lies behind it, and
(b) marks the instance's points that project outside the mask, which the pipeline leaves unlabelled.

Two backends give the same ``BoxMasker``: Meta's ``segment-anything`` package (``.pth`` checkpoints,
``pip install segment-anything``) and ``transformers.SamModel`` (hub id or local folder). SamPredictor's
steps (resize the longest side, normalise, pad, postprocess) are re-done here in torch, because the
``segment_anything`` package's own predictor needs torchvision.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .config import SamConfig
from .types import InputError

if TYPE_CHECKING:
    import torch

DEFAULT_TRANSFORMERS_SAM = "facebook/sam-vit-base"
# ImageNet mean/std in 0..255, as SAM was trained (segment_anything.build_sam and SamImageProcessor agree).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
# CLIP's pixel mean: a greyed background normalises to ~0 in CLIP's input, i.e. carries no signal.
CROP_FILL = (122, 116, 104)
HOW_TO_GET_SAM = (
    "set sam.checkpoint to a segment-anything .pth file matching sam.model_type (e.g. sam_vit_b_01ec64.pth "
    "for vit_b), or use sam.backend=transformers with sam.checkpoint set to a SamModel folder or hub id "
    f"such as {DEFAULT_TRANSFORMERS_SAM!r}"
)


class SamLoadError(RuntimeError):
    """The SAM model could not be built or its checkpoint could not be loaded (the message says why)."""


# ----------------------------------------------------------------------------- loading
def segment_anything_registry() -> Mapping[str, Callable[..., Any]]:
    """``segment_anything.build_sam.sam_model_registry`` without running the package's ``__init__``.

    The package ``__init__`` imports its predictor and mask generator, whose ``utils.transforms`` need
    torchvision; ``build_sam`` and ``modeling`` need only torch. Registering a bare package module whose
    ``__path__`` is the installed folder lets ``segment_anything.build_sam`` import normally while
    ``__init__.py`` is never executed.
    """
    name = "segment_anything"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SamLoadError("sam.backend=segment_anything needs the segment-anything package: "
                               "pip install 'segment-anything' (or partlift_ros[sam])")
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules[name] = package
    from segment_anything.build_sam import sam_model_registry

    return sam_model_registry


def build_segment_anything(model_type: str, checkpoint: str | Path | None = None,
                           registry: Mapping[str, Callable[..., Any]] | None = None) -> "torch.nn.Module":
    """A ``segment_anything`` Sam of ``model_type``; random weights when ``checkpoint`` is None.

    ``registry`` maps model types to builders (default: the package's ``sam_model_registry``).
    """
    import torch

    registry = segment_anything_registry() if registry is None else registry
    if model_type not in registry:
        raise SamLoadError(f"sam.model_type {model_type!r} is not one of {sorted(registry)}")
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise SamLoadError(f"SAM checkpoint not found: {path}; {HOW_TO_GET_SAM}")
    model = registry[model_type]()  # built without the checkpoint: the package's own load has no map_location
    if checkpoint is None:
        return model.eval()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and unpickling-safety errors all mean "not a usable checkpoint"
        raise SamLoadError(f"{path}: not a readable torch checkpoint ({exc}); {HOW_TO_GET_SAM}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise SamLoadError(f"{path}: expected a state dict, got {type(state).__name__}; {HOW_TO_GET_SAM}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise SamLoadError(f"{path}: not a SAM {model_type} checkpoint ({' '.join(first)}); {HOW_TO_GET_SAM}") from exc
    return model.eval()


def load_transformers_sam(name_or_path: str, local_files_only: bool = False) -> "torch.nn.Module":
    """``transformers.SamModel`` from a hub id or a local folder saved with ``save_pretrained``."""
    from transformers import SamModel

    from .model_source import load_from_hub, model_source

    source = name_or_path or DEFAULT_TRANSFORMERS_SAM
    folder = model_source(source, "SAM model", SamLoadError).folder
    if folder is None:  # a hub id: never waits on an unreachable hub (model_source.load_from_hub)
        return load_from_hub(lambda offline: SamModel.from_pretrained(source, local_files_only=offline), source,
                             local_files_only, "SAM model", HOW_TO_GET_SAM, SamLoadError).eval()
    if not (folder / "config.json").is_file():
        raise SamLoadError(f"SAM model folder {folder} has no config.json; {HOW_TO_GET_SAM}")
    try:
        model = SamModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise SamLoadError(f"cannot load a SamModel from {folder}: {exc}; {HOW_TO_GET_SAM}") from exc
    return model.eval()


# ----------------------------------------------------------------------------- backends
class _SegmentAnythingNet:
    """Encoder / box decoder of a ``segment_anything`` Sam."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.img_size = int(model.image_encoder.img_size)
        self.threshold = float(model.mask_threshold)

    def encode(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.model.image_encoder(x)

    def decode(self, embedding: "torch.Tensor", boxes: "torch.Tensor") -> "torch.Tensor":
        """(B, 1, h, w) low-resolution mask logits for B boxes in the model's input frame."""
        pe = self.model.prompt_encoder
        sparse, dense = pe(points=None, boxes=boxes, masks=None)
        low_res, _ = self.model.mask_decoder(
            image_embeddings=embedding, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False,
        )
        return low_res


class _TransformersNet:
    """Encoder / box decoder of a ``transformers.SamModel``."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        size = model.config.vision_config.image_size
        self.img_size = int(size if isinstance(size, int) else size[0])
        self.threshold = 0.0

    def encode(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.model.get_image_embeddings(x)

    def decode(self, embedding: "torch.Tensor", boxes: "torch.Tensor") -> "torch.Tensor":
        out = self.model(image_embeddings=embedding, input_boxes=boxes[None], multimask_output=False)
        return out.pred_masks[0]  # (1, B, 1, h, w) -> (B, 1, h, w)


@dataclass
class ImageEmbedding:
    """One camera image encoded by SAM, reused for every box prompt on it."""

    features: "torch.Tensor"  # (1, C, h, w)
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]  # size after resizing the longest side to the model's input size


class BoxMasker:
    """Box-prompted SAM masks: ``masks(image, boxes)`` -> (B, H, W) bool, one image encoding per image."""

    def __init__(self, net: _SegmentAnythingNet | _TransformersNet, device: str = "cpu",
                 box_batch_size: int = 16) -> None:
        import torch

        self.net = net
        self.device = torch.device(device or "cpu")
        self.net.model.to(self.device)
        self.box_batch_size = max(1, int(box_batch_size))
        self._mean = torch.tensor(SAM_PIXEL_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(SAM_PIXEL_STD, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_segment_anything(cls, model: Any, device: str = "cpu", box_batch_size: int = 16) -> "BoxMasker":
        masker = cls(_SegmentAnythingNet(model), device, box_batch_size)
        # The model carries its own normalisation; use it rather than the default constants.
        masker._mean = model.pixel_mean.detach().to(masker.device).view(1, 3, 1, 1)
        masker._std = model.pixel_std.detach().to(masker.device).view(1, 3, 1, 1)
        return masker

    @classmethod
    def from_transformers(cls, model: Any, device: str = "cpu", box_batch_size: int = 16) -> "BoxMasker":
        return cls(_TransformersNet(model), device, box_batch_size)

    @classmethod
    def load(cls, cfg: SamConfig, default_device: str = "cpu", local_files_only: bool = False) -> "BoxMasker":
        """The model named by ``cfg`` (``cfg.device`` or else ``default_device``)."""
        device = cfg.device or default_device
        if cfg.backend == "transformers":
            return cls.from_transformers(load_transformers_sam(cfg.checkpoint, local_files_only), device,
                                         cfg.box_batch_size)
        if cfg.backend != "segment_anything":
            raise SamLoadError(f"sam.backend {cfg.backend!r}: expected 'segment_anything' or 'transformers'")
        if not cfg.checkpoint:
            raise SamLoadError(f"sam.checkpoint is empty; {HOW_TO_GET_SAM}")
        model = build_segment_anything(cfg.model_type, cfg.checkpoint)
        return cls.from_segment_anything(model, device, cfg.box_batch_size)

    def input_hw(self, h: int, w: int) -> tuple[int, int]:
        """SAM's resize of the longest side to the input size (ResizeLongestSide.get_preprocess_shape)."""
        scale = self.net.img_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Encode one (H, W, 3) uint8 RGB image: resize, normalise, pad to a square, run the encoder."""
        import torch
        import torch.nn.functional as F

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise InputError(
                f"sam: image must be a non-empty (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}"
            )
        h, w = image.shape[:2]
        in_h, in_w = self.input_hw(h, w)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        # uint8 channels-last takes torch's PIL-like antialiased path, close to SamPredictor's PIL resize.
        x = F.interpolate(x.contiguous(memory_format=torch.channels_last), size=(in_h, in_w), mode="bilinear",
                          antialias=True, align_corners=False)
        x = (x.to(self.device, torch.float32) - self._mean) / self._std
        x = F.pad(x, (0, self.net.img_size - in_w, 0, self.net.img_size - in_h))
        with torch.inference_mode():
            features = self.net.encode(x.contiguous())
        return ImageEmbedding(features, (h, w), (in_h, in_w))

    def masks_for(self, embedding: ImageEmbedding, boxes: np.ndarray) -> np.ndarray:
        """(B, H, W) bool masks for (B, 4) boxes ``[u0, v0, u1, v1)`` (exclusive ends) on an embedded image."""
        import torch
        import torch.nn.functional as F

        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise InputError(f"sam: boxes must be (B, 4) [u0, v0, u1, v1), got {boxes.shape}")
        (h, w), (in_h, in_w) = embedding.original_hw, embedding.input_hw
        out = np.zeros((boxes.shape[0], h, w), dtype=bool)
        if boxes.shape[0] == 0:
            return out
        # SAM boxes are inclusive pixel corners in the resized frame.
        corners = boxes - np.array([0.0, 0.0, 1.0, 1.0])
        corners *= np.array([in_w / w, in_h / h, in_w / w, in_h / h])
        size = self.net.img_size
        with torch.inference_mode():
            for start in range(0, len(corners), self.box_batch_size):
                chunk = torch.as_tensor(corners[start:start + self.box_batch_size], dtype=torch.float32,
                                        device=self.device)
                low_res = self.net.decode(embedding.features, chunk)
                # Sam.postprocess_masks: up to the padded input, drop the padding, down to the image size.
                logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
                logits = F.interpolate(logits[..., :in_h, :in_w], (h, w), mode="bilinear", align_corners=False)
                out[start:start + len(chunk)] = (logits[:, 0] > self.net.threshold).cpu().numpy()
        return out

    def masks(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Encode ``image`` once and return one (H, W) bool mask per box."""
        return self.masks_for(self.embed(image), boxes)


# ----------------------------------------------------------------------------- using the masks
def grey_outside(crop: np.ndarray, mask: np.ndarray, fill: tuple[int, int, int] = CROP_FILL) -> np.ndarray:
    """A copy of ``crop`` (h, w, 3) whose pixels outside ``mask`` (h, w) are set to ``fill``."""
    if mask.shape != crop.shape[:2]:
        raise InputError(f"grey_outside: mask {mask.shape} does not match crop {crop.shape[:2]}")
    return np.where(mask[..., None], crop, np.asarray(fill, dtype=np.uint8))


def points_in_masks(uv: np.ndarray, rows: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """For each point, whether pixel floor(uv) lies in mask ``rows[i]`` of (K, H, W) ``masks`` (False if off-image)."""
    uv = np.asarray(uv, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    _, h, w = masks.shape
    with np.errstate(invalid="ignore"):
        u = np.floor(uv[:, 0])
        v = np.floor(uv[:, 1])
    on_image = np.isfinite(uv).all(axis=1) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    inside = np.zeros(rows.shape[0], dtype=bool)
    inside[on_image] = masks[rows[on_image], v[on_image].astype(np.int64), u[on_image].astype(np.int64)]
    return inside


@dataclass
class CameraRefinement:
    """What SAM changed for the instances cropped from one camera."""

    crops: list[np.ndarray]  # the crops, greyed outside reliable masks when asked
    outside: np.ndarray  # (N,) bool: visible points of a reliably masked instance that fall outside its mask
    reliable: np.ndarray  # (K,) bool per instance in ``ids``: the mask holds enough of its points to be trusted
    point_fraction: np.ndarray  # (K,) fraction of the instance's visible points inside its mask


def refine_camera(masker: BoxMasker, image: np.ndarray, uv: np.ndarray, instance: np.ndarray,
                  visible: np.ndarray, ids: np.ndarray, prompt_boxes: np.ndarray, crop_boxes: np.ndarray,
                  crops: list[np.ndarray], cfg: SamConfig) -> CameraRefinement:
    """Mask the instances ``ids`` seen in one camera and apply the masks to their crops and points.

    ``prompt_boxes`` (K, 4) prompt SAM (tight boxes of the visible points); ``crop_boxes`` (K, 4) are the
    boxes ``crops`` were cut along. A mask holding less than ``cfg.min_point_fraction`` of its instance's
    visible points disagrees with the LiDAR (SAM picked another object in the box): it is not used.
    """
    ids = np.asarray(ids, dtype=np.int64)
    k = ids.shape[0]
    if len(crops) != k or prompt_boxes.shape != (k, 4) or crop_boxes.shape != (k, 4):
        raise InputError(f"refine_camera: {k} ids, {len(crops)} crops, prompt boxes {prompt_boxes.shape}, "
                         f"crop boxes {crop_boxes.shape}")
    masks = masker.masks(image, prompt_boxes)
    row_of = np.full(max(int(instance.max(initial=-1)), int(ids.max(initial=-1))) + 1, -1, dtype=np.int64)
    row_of[ids] = np.arange(k)
    member = visible & (instance >= 0)
    member[member] = row_of[instance[member]] >= 0
    rows = row_of[instance[member]]
    inside = points_in_masks(uv[member], rows, masks)
    counts = np.bincount(rows, minlength=k)
    fraction = np.bincount(rows, weights=inside, minlength=k) / np.maximum(counts, 1)
    reliable = fraction >= cfg.min_point_fraction

    outside = np.zeros(instance.shape[0], dtype=bool)
    if cfg.drop_outside:
        outside[np.flatnonzero(member)[~inside & reliable[rows]]] = True
    if cfg.mask_crops:
        crops = [
            grey_outside(crop, masks[r, v0:v1, u0:u1]) if reliable[r] else crop
            for r, (crop, (u0, v0, u1, v1)) in enumerate(zip(crops, crop_boxes.tolist()))
        ]
    return CameraRefinement(list(crops), outside, reliable, fraction)
