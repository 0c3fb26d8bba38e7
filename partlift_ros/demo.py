"""The README's main job on the embedded default: two real SemanticKITTI frames shipped with the package.

With CLIP weights (a hub id in the local cache, or a folder) it labels them, evaluates against the shipped
ground truth and renders the result. Without weights it never invents labels: it runs the CLIP-free stages
(superpoints, visibility), reports how well the superpoints could carry labels (the instance ceiling) and
renders the superpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .config import PipelineConfig


def demo_sequence() -> Path:
    return Path(str(resources.files("partlift_ros") / "data" / "demo"))


@dataclass
class DemoResult:
    out_dir: Path
    labelled: bool  # True: CLIP labels were produced; False: geometry only
    clip_model: str
    clip_error: str = ""
    metrics: dict = field(default_factory=dict)
    pngs: list[Path] = field(default_factory=list)


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
    from .render_run import render_run_frame

    metrics = evaluate_run(run_dir, seq)
    pngs = [render_run_frame(run_dir, seq, i, out_dir / f"labels_{i:06d}.png") for i in (0, 1)]
    return DemoResult(out_dir, True, cfg.clip.model, metrics=metrics, pngs=pngs)


def _geometry_only(out_dir: Path, pipeline, seq: Path, model: str, why: str) -> DemoResult:
    from .config import SEMANTIC_KITTI_CLASSES
    from .io.kitti import KittiSequenceReader
    from .metrics import ConfusionAccumulator, instance_ceiling
    from .render import bev_image, class_colours, instance_colours, overlay_image, palette_for, save_png, side_by_side
    from .semantickitti import map_raw_labels

    reader = KittiSequenceReader(seq)
    ceiling = ConfusionAccumulator(len(SEMANTIC_KITTI_CLASSES))
    counts, pngs = [], []
    for position, index in enumerate(reader.frame_indices):
        frame = reader.read(position)
        g = pipeline.geometry(frame)
        gt = map_raw_labels(reader.read_labels(index))
        fv = g.in_view
        majority = instance_ceiling(g.instance, gt, len(SEMANTIC_KITTI_CLASSES))
        ceiling.add(majority[fv], gt[fv])
        counts.append(g.num_instances)
        proj = g.projections[0]

        def draw(colours: np.ndarray) -> np.ndarray:
            return overlay_image(frame.camera.image, proj.uv, proj.in_image, colours, radius=1, depth=proj.depth, alpha=0.85)

        # Top: superpoints (random colours); middle: each superpoint in its majority ground-truth class
        # colour (what a perfect labeller could reach with them); bottom: bird's-eye view of the superpoints.
        by_instance = instance_colours(g.instance)
        by_majority = class_colours(majority, palette_for(list(SEMANTIC_KITTI_CLASSES)))
        picture = side_by_side(
            draw(by_instance), draw(by_majority), bev_image(frame.points, by_instance, width=frame.camera.size[0] // 2)
        )
        path = out_dir / f"superpoints_{index:06d}.png"
        save_png(path, picture)
        pngs.append(path)
    metrics = {
        "ceiling_miou_front": ceiling.miou(),
        "superpoints_per_frame_median": float(np.median(counts)),
        "frames": len(counts),
    }
    return DemoResult(out_dir, False, model, clip_error=why, metrics=metrics, pngs=pngs)
