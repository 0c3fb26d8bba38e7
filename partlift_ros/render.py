"""Pictures of labelled clouds: camera overlays and bird's-eye views (numpy only, no GUI)."""

from __future__ import annotations

import colorsys

import numpy as np

IGNORE_COLOUR = np.array([128, 128, 128], dtype=np.uint8)


def class_palette(num_classes: int) -> np.ndarray:
    """(C, 3) uint8 distinct colours; the 19 SemanticKITTI classes get their usual colours elsewhere."""
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0  # golden-ratio steps keep neighbours apart
    rgb = [colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues]
    return (np.asarray(rgb).reshape(-1, 3) * 255).astype(np.uint8)


def palette_for(class_names: list[str]) -> np.ndarray:
    """SemanticKITTI colours for classes that have one, generated colours for the rest."""
    from .config import SEMANTIC_KITTI_CLASSES
    from .semantickitti import PALETTE

    known = dict(zip(SEMANTIC_KITTI_CLASSES, PALETTE))
    generated = class_palette(len(class_names))
    rows = [known.get(name, generated[i]) for i, name in enumerate(class_names)]
    return np.asarray(rows, dtype=np.uint8).reshape(-1, 3)


def class_colours(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colour per point; IGNORE (-1) and out-of-range ids are grey."""
    labels = np.asarray(labels)
    ok = (labels >= 0) & (labels < len(palette))
    out = np.empty((labels.shape[0], 3), dtype=np.uint8)
    out[:] = IGNORE_COLOUR
    out[ok] = palette[labels[ok]]
    return out


def instance_colours(instance: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colour per superpoint id (a hash, so neighbours differ); -1 is grey."""
    instance = np.asarray(instance, dtype=np.int64)
    pal = class_palette(97)
    out = pal[np.mod(instance * 31 + 7, 97)]
    out[instance < 0] = IGNORE_COLOUR
    return out


def overlay_image(
    image: np.ndarray,
    uv: np.ndarray,
    in_image_mask: np.ndarray,
    colours: np.ndarray,
    radius: int = 1,
    depth: np.ndarray | None = None,
    alpha: float = 1.0,
) -> np.ndarray:
    """Copy of ``image`` with the masked points drawn as squares of side 2·radius+1, blended by ``alpha``.

    With ``depth``, far points are drawn first so near ones stay on top.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    idx = np.flatnonzero(in_image_mask)
    if depth is not None:
        idx = idx[np.argsort(-np.asarray(depth)[idx], kind="stable")]
    px = np.floor(uv[idx]).astype(np.int64)
    cols = colours[idx] if alpha >= 1 else colours[idx].astype(np.float32)
    base = out.astype(np.float32) if alpha < 1 else None  # blending reads the original pixels
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            u = np.clip(px[:, 0] + dx, 0, w - 1)
            v = np.clip(px[:, 1] + dy, 0, h - 1)
            out[v, u] = cols if alpha >= 1 else (alpha * cols + (1 - alpha) * base[v, u]).astype(np.uint8)
    return out


def bev_image(
    xyz: np.ndarray,
    colours: np.ndarray,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 800,
    point_size: int = 2,
) -> np.ndarray:
    """Top view (x forward = up, y left = left), ``width`` pixels wide.

    The ranges default to the extent of the points (2nd-98th percentile, at most ±50 m), so a
    front-view crop fills the picture as well as a full scan.
    """
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if x_range is None:
        x_range = tuple(np.clip(np.percentile(x, [2, 98]), -50, 50)) if len(x) else (-1.0, 1.0)
    if y_range is None:
        y_range = tuple(np.clip(np.percentile(y, [2, 98]), -50, 50)) if len(y) else (-1.0, 1.0)
    (x0, x1), (y0, y1) = x_range, y_range
    scale = width / max(y1 - y0, 1e-3)  # pixels per metre
    height = max(1, int(round((x1 - x0) * scale)))
    out = np.zeros((height, width, 3), dtype=np.uint8)
    keep = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
    # Draw low points first so tall objects (poles, signs) stay visible from above.
    order = np.flatnonzero(keep)[np.argsort(z[keep], kind="stable")]
    row = ((x1 - x[order]) * scale).astype(np.int64)
    col = ((y1 - y[order]) * scale).astype(np.int64)
    for d in range(point_size):
        for e in range(point_size):
            out[np.clip(row + d, 0, height - 1), np.clip(col + e, 0, width - 1)] = colours[order]
    return out


def side_by_side(*images: np.ndarray, gap: int = 8) -> np.ndarray:
    """Stack images vertically (widths padded to the widest), separated by a dark gap."""
    width = max(im.shape[1] for im in images)
    parts = []
    for im in images:
        pad = np.zeros((im.shape[0], width, 3), dtype=np.uint8)
        pad[:, : im.shape[1]] = im
        parts.append(pad)
        parts.append(np.full((gap, width, 3), 24, dtype=np.uint8))
    return np.concatenate(parts[:-1], axis=0)


def save_png(path, image: np.ndarray) -> None:
    """Atomic PNG write."""
    import io

    from PIL import Image

    from .config import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
