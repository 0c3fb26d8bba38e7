"""CLIP image preprocessing in torch: ``CLIPImageProcessor``'s resize, centre crop and normalise for a batch of crops."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .clip_loading import ModelLoadError
from .types import InputError

if TYPE_CHECKING:
    import torch

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
