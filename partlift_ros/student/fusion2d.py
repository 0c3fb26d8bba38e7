"""The training-only 2D branch (2DPASS-style): image features help the 3D student learn, then go away.

    image ──► small CNN (stride 8) ──► bilinear sample at each visible point's pixel ──► 2D-learner MLP
                                                                                              │
    3D point_features ───────────────────────────► gated fusion  f = f3d + g ⊙ f2d ◄──────────┘
                                                          │
                                      the student's text-embedding classifier ──► fused logits

Only points that the camera sees (``visible``) are fused; elsewhere the fused logits equal the 3D ones,
so both the fused pseudo-label loss and the KL term touch visible points only. The branch adds no cost at
inference: ``predict`` never builds it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import batch_index


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ImageEncoder(nn.Module):
    """A small CNN: three stride-2 stages then one stride-1 stage, output at 1/8 of the image size."""

    STRIDE = 8

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            _conv_bn_relu(3, c // 4, 2),
            _conv_bn_relu(c // 4, c // 2, 2),
            _conv_bn_relu(c // 2, c, 2),
            _conv_bn_relu(c, c, 1),
        )
        # ImageNet statistics: a sensible input scale even without pre-trained weights.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, ceil(H/8), ceil(W/8))."""
        return self.net((image - self.mean) / self.std)


def sample_pixel_features(feature_map: torch.Tensor, pixel: torch.Tensor, sample_of_point: torch.Tensor,
                          image_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear features at integer pixels (column, row) of the (padded) image, one row per point.

    ``feature_map`` (B, C, h, w) covers the whole padded image of size ``image_hw`` = (H, W); pixel
    centres are mapped to normalised coordinates with ``align_corners=False`` semantics.
    """
    height, width = image_hw
    # float32 throughout: half precision cannot address single pixels of a 1000+ px wide image.
    feature_map = feature_map.float()
    grid = torch.empty(pixel.shape[0], 2, dtype=torch.float32, device=feature_map.device)
    grid[:, 0] = (pixel[:, 0].float() + 0.5) / width * 2.0 - 1.0
    grid[:, 1] = (pixel[:, 1].float() + 0.5) / height * 2.0 - 1.0
    out = feature_map.new_zeros(pixel.shape[0], feature_map.shape[1])
    for b in range(feature_map.shape[0]):
        rows = torch.nonzero(sample_of_point == b, as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        sampled = F.grid_sample(feature_map[b : b + 1], grid[rows].view(1, 1, -1, 2), mode="bilinear",
                                padding_mode="border", align_corners=False)
        out[rows] = sampled[0, :, 0, :].t()
    return out


class Fusion2D(nn.Module):
    """Image encoder + 2D-learner MLP + gated fusion with the 3D point features."""

    def __init__(self, point_channels: int, image_channels: int = 64) -> None:
        super().__init__()
        self.encoder = ImageEncoder(image_channels)
        self.learner = nn.Sequential(
            nn.Linear(image_channels, point_channels),
            nn.ReLU(inplace=True),
            nn.Linear(point_channels, point_channels),
        )
        self.gate = nn.Linear(2 * point_channels, point_channels)

    def forward(self, batch: dict, point_features: torch.Tensor,
                classify: Callable[[torch.Tensor], torch.Tensor], logits_3d: torch.Tensor) -> torch.Tensor:
        """Fused logits (N, C): the 3D logits where a point is not visible, fused ones where it is."""
        visible = batch["visible"].bool() & (batch["pixel"][:, 0] >= 0)
        fused_logits = logits_3d.clone()
        rows = torch.nonzero(visible, as_tuple=True)[0]
        if rows.numel() == 0:
            return fused_logits
        image = batch["image"]
        feature_map = self.encoder(image)
        sample_of_point = batch_index(batch["offset"], device=point_features.device)[rows]
        f2d = sample_pixel_features(feature_map, batch["pixel"][rows], sample_of_point,
                                    (image.shape[2], image.shape[3]))
        f2d = self.learner(f2d)
        f3d = point_features[rows]
        g = torch.sigmoid(self.gate(torch.cat([f3d, f2d.to(f3d.dtype)], dim=1)))
        fused = f3d + g * f2d.to(f3d.dtype)
        fused_logits[rows] = classify(fused).to(fused_logits.dtype)
        return fused_logits


def text_classifier(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The student's own head as a function of point features (projection, normalisation, temperature),
    so the fused features are scored against the same class text embeddings as the 3D ones."""
    return model.class_logits
