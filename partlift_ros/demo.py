"""The README's main job on the embedded default: two real SemanticKITTI frames shipped with the package.

With CLIP weights (a hub id in the local cache, or a folder) it labels them, evaluates against the shipped
ground truth and renders the result. It first checks CLIP itself: each superpoint's crop class against the
superpoint's majority ground-truth class. When that agreement is no better than chance (untrained or
mismatched weights), the output is called what it is, CLIP output, not labels. Without weights it never
invents labels: it runs the CLIP-free stages (superpoints, visibility), reports how well the superpoints
could carry labels (the instance ceiling) and renders the superpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .config import SEMANTIC_KITTI_CLASSES, PipelineConfig

GT_CAPTION = "majority ground-truth class per superpoint (what a perfect labeller could reach)"
# Cohen's kappa of the crop classes against the ground truth below which CLIP is taken to know nothing
# about these images: 0 is chance, and below 0.2 is at most "slight" agreement (Landis and Koch).
MIN_CROP_KAPPA = 0.2


def demo_sequence() -> Path:
    return Path(str(resources.files("partlift_ros") / "data" / "demo"))


@dataclass
class DemoResult:
    out_dir: Path
    labelled: bool  # True: CLIP ran and its output was lifted to 3D; False: geometry only
    clip_model: str
    clip_error: str = ""
    metrics: dict = field(default_factory=dict)
    pngs: list[Path] = field(default_factory=list)
    pictures: list = field(default_factory=list)  # render.Picture per PNG: where each panel is, the legend
    # CLIP's crop classes agree with the ground truth beyond chance (kappa >= MIN_CROP_KAPPA): only then
    # is the output presented as labels.
    trusted: bool = False


def crops_beyond_chance(metrics: dict) -> bool:
    crops = metrics.get("crops")
    return bool(crops) and crops["count"] > 0 and crops["kappa"] >= MIN_CROP_KAPPA


def run_demo(out_dir: Path, cfg: PipelineConfig, labeler=None) -> DemoResult:
    from .label_job import SourceSpec, run_label_job
    from .pipeline import LabelPipeline

    out_dir = Path(out_dir)
    seq = demo_sequence()
    pipeline = LabelPipeline(cfg, labeler=labeler)
    try:
        pipeline.labeler  # loads CLIP now, so a missing model is known before any output is written
    except Exception as exc:  # noqa: BLE001 - any load failure means: no labels, geometry only
        return _geometry_only(out_dir, pipeline, seq, cfg.clip.model, f"{type(exc).__name__}: {exc}")
    run_dir = out_dir / "labels_run"
    run_label_job(pipeline, SourceSpec("kitti", str(seq)), run_dir, overwrite=True)  # the demo's scratch run
    from .evaluation import evaluate_run
    from .io.kitti import KittiSequenceReader
    from .io.writers import read_run_classes, read_run_labels
    from .semantickitti import raw_to_train_ids, run_to_train_ids

    metrics = evaluate_run(run_dir, seq)
    trusted = crops_beyond_chance(metrics)
    classes = read_run_classes(run_dir)
    reader = KittiSequenceReader(seq)
    result = DemoResult(out_dir, True, cfg.clip.model, metrics=metrics, trusted=trusted)
    for position, index in enumerate(reader.frame_indices):
        frame = reader.read(position)
        label, superpoint = read_run_labels(run_dir, index)
        gt = raw_to_train_ids(reader.read_labels(index))
        if trusted:
            title, name = f"labels: CLIP {cfg.clip.model} lifted to 3D", "labels"
        else:
            title, name = "CLIP output, NOT labels: its crop classes match the ground truth no better than chance", "clip_output"
        picture = _picture(frame, (title, run_to_train_ids(label, classes)), superpoint, gt)
        _save(result, picture, out_dir / f"{name}_{index:06d}.png")
    _write_summary(result)
    return result


def _picture(frame, first: tuple[str, np.ndarray], superpoint: np.ndarray, gt: np.ndarray):
    """Panels: ``first`` (title, train ids or colours), then each superpoint in its majority ground-truth
    class; the bird's-eye view of the first panel; a legend of the classes shown."""
    from .metrics import instance_ceiling
    from .render import class_colours, frame_picture, palette_for

    names = list(SEMANTIC_KITTI_CLASSES)
    palette = palette_for(names)
    majority = instance_ceiling(superpoint, gt, len(names))
    title, values = first
    colours = values if values.ndim == 2 else class_colours(values, palette)
    present = np.bincount(majority[majority >= 0], minlength=len(names)) > 0
    if values.ndim == 1:
        present |= np.bincount(values[values >= 0], minlength=len(names)) > 0
    bev_title = "bird's-eye view of the top panel (x forward = up)"
    return frame_picture(
        frame, [(title, colours), (GT_CAPTION, class_colours(majority, palette))],
        (bev_title, colours), (names, palette, present),
    )


def _save(result: DemoResult, picture, path: Path) -> None:
    from .render import save_png

    save_png(path, picture.image)
    result.pngs.append(path)
    result.pictures.append(picture)


def _write_summary(result: DemoResult) -> None:
    """OUT/demo.json: what ran, the metrics, and where each picture's panels and legend are."""
    import json

    from .config import atomic_write_text

    summary = {
        "labelled": result.labelled, "trusted": result.trusted, "clip_model": result.clip_model,
        "clip_error": result.clip_error, "metrics": result.metrics,
        "pictures": [{"png": p.name, "boxes": pic.boxes, "legend": pic.legend} for p, pic in zip(result.pngs, result.pictures)],
    }
    atomic_write_text(result.out_dir / "demo.json", json.dumps(summary, indent=2, default=float))


def _geometry_only(out_dir: Path, pipeline, seq: Path, model: str, why: str) -> DemoResult:
    from .io.kitti import KittiSequenceReader
    from .metrics import ConfusionAccumulator, instance_ceiling
    from .render import instance_colours
    from .semantickitti import raw_to_train_ids

    reader = KittiSequenceReader(seq)
    ceiling = ConfusionAccumulator(len(SEMANTIC_KITTI_CLASSES))
    counts = []
    result = DemoResult(out_dir, False, model, clip_error=why)
    for position, index in enumerate(reader.frame_indices):
        frame = reader.read(position)
        g = pipeline.geometry(frame)
        gt = raw_to_train_ids(reader.read_labels(index))
        ceiling.add(instance_ceiling(g.instance, gt, len(SEMANTIC_KITTI_CLASSES))[g.in_view], gt[g.in_view])
        counts.append(g.num_instances)
        title = f"{g.num_instances} superpoints (random colours) of the points in camera view"
        picture = _picture(frame, (title, instance_colours(g.instance)), g.instance, gt)
        _save(result, picture, out_dir / f"superpoints_{index:06d}.png")
    result.metrics = {
        "ceiling_miou_front": ceiling.miou(),
        "superpoints_per_frame_median": float(np.median(counts)),
        "frames": len(counts),
    }
    _write_summary(result)
    return result
