"""Pictures of labelled clouds: camera overlays and bird's-eye views (numpy only, no GUI)."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

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


def bev_extent(xyz: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """x and y ranges of the finite points (2nd-98th percentile, at most ±50 m); (-1, 1) without any.

    Non-finite points keep their index in a scan (points.py), so they are left out here: a NaN would make the
    percentiles NaN.
    """
    from .points import finite_points_mask

    finite = xyz[finite_points_mask(xyz[:, :3])] if len(xyz) else xyz
    if not len(finite):
        return (-1.0, 1.0), (-1.0, 1.0)
    x0, x1 = np.clip(np.percentile(finite[:, 0], [2, 98]), -50, 50)
    y0, y1 = np.clip(np.percentile(finite[:, 1], [2, 98]), -50, 50)
    return (float(x0), float(x1)), (float(y0), float(y1))


def bev_image(
    xyz: np.ndarray,
    colours: np.ndarray,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    width: int = 800,
    point_size: int = 2,
    height: int | None = None,
) -> np.ndarray:
    """Top view (x forward = up, y left = left), ``width`` pixels wide.

    The ranges default to the extent of the points (2nd-98th percentile, at most ±50 m), so a
    front-view crop fills the picture as well as a full scan. With ``height`` the picture has that
    size and the ranges are widened about their centre to its aspect ratio (same scale on both axes),
    so the points fill the panel in one direction and are centred in the other.
    """
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if x_range is None or y_range is None:
        extent_x, extent_y = bev_extent(xyz)
        x_range, y_range = x_range or extent_x, y_range or extent_y
    (x0, x1), (y0, y1) = x_range, y_range
    if height is not None:
        scale = min(width / max(y1 - y0, 1e-3), height / max(x1 - x0, 1e-3))
        xc, yc = (x0 + x1) / 2, (y0 + y1) / 2
        x0, x1 = xc - height / scale / 2, xc + height / scale / 2
        y0, y1 = yc - width / scale / 2, yc + width / scale / 2
    scale = width / max(y1 - y0, 1e-3)  # pixels per metre
    if height is None:
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


def grid(images: list[np.ndarray], columns: int, gap: int = 8) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Images in rows of ``columns`` cells of the largest image's size; returns the picture and each
    image's top-left corner (x, y)."""
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    rows = -(-len(images) // columns)
    width = columns * cell_w + (columns - 1) * gap
    out = np.full((rows * cell_h + (rows - 1) * gap, width, 3), 24, dtype=np.uint8)
    corners = []
    for k, im in enumerate(images):
        x, y = (k % columns) * (cell_w + gap), (k // columns) * (cell_h + gap)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
        corners.append((x, y))
    return out, corners


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


TITLE_HEIGHT = 28


def titled(image: np.ndarray, title: str, size: int = 18) -> np.ndarray:
    """``image`` under a dark bar holding ``title``."""
    from PIL import Image, ImageDraw

    bar = Image.new("RGB", (image.shape[1], TITLE_HEIGHT), (24, 24, 24))
    ImageDraw.Draw(bar).text((8, (TITLE_HEIGHT - size) // 2 - 1), title, fill=(235, 235, 235), font=_font(size))
    return np.concatenate([np.asarray(bar), image], axis=0)


NO_CLASS = "no class / none"  # the legend's name for grey points


def legend_strip(class_names: list[str], palette: np.ndarray, present: np.ndarray, width: int) -> np.ndarray:
    """Coloured boxes with the names of the classes present (and grey for points without one), wrapped
    over as many rows as they need."""
    from PIL import Image, ImageDraw

    font = _font(16)
    entries = [(class_names[i], tuple(int(v) for v in palette[i])) for i in np.flatnonzero(present)]
    entries.append((NO_CLASS, tuple(int(v) for v in IGNORE_COLOUR)))
    sizes = [int(font.getlength(name)) + 36 for name, _ in entries]
    rows, x = 1, 8
    for w in sizes:
        if x + w > width and x > 8:
            rows, x = rows + 1, 8
        x += w
    strip = Image.new("RGB", (width, 8 + 26 * rows), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    x, y = 8, 6
    for (name, colour), w in zip(entries, sizes):
        if x + w > width and x > 8:
            x, y = 8, y + 26
        draw.rectangle([x, y + 3, x + 16, y + 19], fill=colour)
        draw.text((x + 22, y + 2), name, fill=(230, 230, 230), font=font)
        x += w
    return np.asarray(strip)


def save_png(path, image: np.ndarray) -> None:
    """Atomic PNG write."""
    import io

    from PIL import Image

    from .config import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class Picture:
    """A rendered frame and where its parts are: ``boxes`` maps a part's title to (x0, y0, x1, y1) of its
    image (without the title bar); ``legend`` lists the class names in the legend."""

    image: np.ndarray
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    legend: list[str] = field(default_factory=list)


def camera_name(frame, k: int) -> str:
    cam = frame.cameras[k]
    return cam.frame_id if cam.frame_id and cam.frame_id != "camera" else f"camera {k}"


def frame_picture(
    frame,
    panels: list[tuple[str, np.ndarray]],
    bev: tuple[str, np.ndarray],
    legend: tuple[list[str], np.ndarray, np.ndarray] | None = None,
    gap: int = 8,
) -> Picture:
    """Every camera of ``frame`` once per panel, then a bird's-eye view as wide as the picture.

    ``panels``: (title, per-point colours), each drawn as a titled grid with one overlay per camera
    (⌈√n⌉ columns, each captioned with its camera when there are several); ``bev``: (title, per-point
    colours); ``legend``: (class names, palette, which are present), drawn on top.
    """
    from .calibration import project_points

    cams = frame.cameras
    projections = [project_points(frame.points, c.K, c.T_cam_lidar, c.size, c.D) for c in cams]
    columns = int(np.ceil(np.sqrt(len(cams))))
    caption = TITLE_HEIGHT if len(cams) > 1 else 0
    parts, boxes, y = [], {}, 0
    for title, colours in panels:
        cells = []
        for k, (cam, proj) in enumerate(zip(cams, projections)):
            cell = overlay_image(cam.image, proj.uv, proj.in_image, colours, radius=1, depth=proj.depth, alpha=0.85)
            cells.append(titled(cell, camera_name(frame, k), size=15) if caption else cell)
        block, corners = grid(cells, columns, gap)
        for k, (x0, y0) in enumerate(corners):
            top = y + TITLE_HEIGHT + y0 + caption
            boxes[f"{title} / {camera_name(frame, k)}"] = (x0, top, x0 + cams[k].size[0], top + cams[k].size[1])
        parts.append(titled(block, title))
        y += parts[-1].shape[0] + gap
    width = max(p.shape[1] for p in parts)
    bev_title, bev_colours = bev
    x_range, y_range = bev_extent(frame.points)
    bev_img = bev_image(frame.points, bev_colours, x_range, y_range, width=width,
                        height=_bev_height(x_range, y_range, width))
    boxes[bev_title] = (0, y + TITLE_HEIGHT, width, y + TITLE_HEIGHT + bev_img.shape[0])
    parts.append(titled(bev_img, bev_title))
    shown: list[str] = []
    if legend is not None:
        names, palette, present = legend
        shown = [n for n, p in zip(names, present) if p] + [NO_CLASS]
        strip = legend_strip(names, palette, present, width)
        parts.insert(0, strip)
        shift = strip.shape[0] + gap
        boxes = {k: (x0, y0 + shift, x1, y1 + shift) for k, (x0, y0, x1, y1) in boxes.items()}
    return Picture(side_by_side(*parts, gap=gap), boxes, shown)


def _bev_height(x_range: tuple[float, float], y_range: tuple[float, float], width: int) -> int:
    """As tall as the points' extent (``bev_extent``) asks at this width, within [0.4, 1] × width, ≤ 1400 px."""
    (x0, x1), (y0, y1) = x_range, y_range
    natural = width * (x1 - x0) / max(y1 - y0, 1e-3)
    return int(np.clip(natural, 0.4 * width, min(width, 1400)))
