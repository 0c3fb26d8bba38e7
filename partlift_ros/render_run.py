"""Render a frame of a label run: camera overlay and bird's-eye view, with a legend strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import project_points
from .render import bev_image, class_colours, overlay_image, palette_for, save_png, side_by_side
from .types import InputError


def legend_strip(class_names: list[str], palette: np.ndarray, present: np.ndarray, width: int) -> np.ndarray:
    """A row of coloured boxes with the names of the classes present (PIL's default font)."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, 28), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    x = 6
    for i in np.flatnonzero(present):
        draw.rectangle([x, 8, x + 12, 20], fill=tuple(int(v) for v in palette[i]))
        draw.text((x + 16, 8), class_names[i], fill=(230, 230, 230))
        x += 24 + 7 * len(class_names[i])
        if x > width - 80:
            break
    return np.asarray(strip)


def render_labels(frame, label: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Overlay on the first camera + bird's-eye view + legend, as one RGB image."""
    palette = palette_for(class_names)
    colours = class_colours(label, palette)
    cam = frame.camera
    proj = project_points(frame.points, cam.K, cam.T_cam_lidar, cam.size, cam.D)
    overlay = overlay_image(cam.image, proj.uv, proj.in_image, colours, radius=1, depth=proj.depth, alpha=0.85)
    bev = bev_image(frame.points, colours, width=overlay.shape[1] // 2)
    present = np.bincount(label[label >= 0], minlength=len(class_names)) > 0
    return side_by_side(legend_strip(class_names, palette, present, overlay.shape[1]), overlay, bev)


def render_run_frame(run_dir: Path, source: Path, index: int, png: Path | None = None) -> Path:
    from .io.writers import read_run_classes, read_run_labels
    from .label_job import detect_source, iter_source

    run_dir = Path(run_dir)
    # Works for sequences and bags alike: stream the source up to the wanted frame.
    found = [f for _, f in iter_source(detect_source(source), slice(index, index + 1), lambda i: False)]
    if not found:
        raise InputError(f"frame {index} is not in {source}")
    if isinstance(found[0], InputError):
        raise found[0]
    frame = found[0]
    label, _ = read_run_labels(run_dir, index)
    if label.shape[0] != frame.points.shape[0]:
        raise InputError(f"frame {index}: run has {label.shape[0]} labels, source scan has {frame.points.shape[0]} points")
    image = render_labels(frame, label, read_run_classes(run_dir))
    path = Path(png) if png else run_dir / "render" / f"{index:06d}.png"
    save_png(path, image)
    return path
