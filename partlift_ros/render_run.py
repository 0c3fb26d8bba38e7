"""Render a frame of a label run: a legend, every camera's overlay and a bird's-eye view."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .render import Picture, class_colours, frame_picture, palette_for, save_png
from .types import InputError


def render_labels(frame, label: np.ndarray, class_names: list[str], title: str = "labels") -> Picture:
    """Legend, one overlay per camera of ``frame`` and the bird's-eye view, coloured by class."""
    palette = palette_for(class_names)
    colours = class_colours(label, palette)
    present = np.bincount(label[label >= 0], minlength=len(class_names)) > 0
    return frame_picture(
        frame, [(title, colours)], ("bird's-eye view (x forward = up)", colours), (class_names, palette, present)
    )


def run_source(run_dir: Path, source: Path):
    """The source spec to read ``source`` with: the one the run recorded in source.yaml (its topics and
    cameras) when it names the same kind of source, else what ``source`` looks like on its own."""
    import dataclasses

    from .label_job import detect_source, read_source_spec

    spec = detect_source(source)
    saved = read_source_spec(run_dir)
    if saved is not None and saved.kind == spec.kind:
        return dataclasses.replace(saved, path=spec.path)
    return spec


def render_run_frame(run_dir: Path, source: Path, index: int, png: Path | None = None) -> Path:
    from .io.writers import read_run_classes, read_run_labels
    from .label_job import iter_source

    run_dir = Path(run_dir)
    # Works for sequences and bags alike (several cameras too): stream the source up to the wanted frame.
    found = [f for _, f in iter_source(run_source(run_dir, source), slice(index, index + 1), lambda i: False)]
    if not found:
        raise InputError(f"frame {index} is not in {source}")
    if isinstance(found[0], InputError):
        raise found[0]
    frame = found[0]
    label, _ = read_run_labels(run_dir, index)
    if label.shape[0] != frame.points.shape[0]:
        raise InputError(f"frame {index}: run has {label.shape[0]} labels, source scan has {frame.points.shape[0]} points")
    picture = render_labels(frame, label, read_run_classes(run_dir), f"labels of {run_dir.name}, frame {index}")
    path = Path(png) if png else run_dir / "render" / f"{index:06d}.png"
    save_png(path, picture.image)
    return path
