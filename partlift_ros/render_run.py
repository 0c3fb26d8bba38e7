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
    import yaml

    from .label_job import SourceSpec, detect_source

    spec = detect_source(source)
    saved_file = Path(run_dir) / "source.yaml"
    if saved_file.is_file():
        try:
            saved = yaml.safe_load(saved_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{saved_file}: not valid YAML: {exc}") from exc
        if isinstance(saved, dict) and saved.get("kind") == spec.kind:
            try:
                return SourceSpec(**{**saved, "kind": spec.kind, "path": spec.path})
            except TypeError as exc:
                raise InputError(f"{saved_file}: unexpected keys ({exc})") from exc
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
