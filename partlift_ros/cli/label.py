"""`partlift label` and `partlift kitti2bag`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, reported_errors, resolve_config, split_names


def label(
    source: Path = typer.Argument(..., help="SemanticKITTI sequence folder, or a rosbag2 (.mcap, .db3, bag folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (re-running resumes it)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file overriding the defaults."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP hub id or local folder."),
    classes: Optional[str] = typer.Option(None, "--classes", help='Comma-separated class names, e.g. "car,road,tree".'),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda"),
    frames: Optional[str] = typer.Option(None, "--frames", help="Frame range A:B (B exclusive)."),
    seen_labels: Optional[Path] = typer.Option(
        None, "--seen-labels", help="Zero-shot setting: folder of .label files whose seen classes are kept."
    ),
    unseen: Optional[str] = typer.Option(
        None, "--unseen", help="With --seen-labels: classes CLIP chooses among (default motorcycle,truck,bicyclist,traffic-sign)."
    ),
    affinity: Optional[str] = typer.Option(None, "--affinity", help="offline | online | off"),
    write_bag: Optional[Path] = typer.Option(None, "--write-bag", help="Also write the labelled clouds to this MCAP bag."),
    points_topic: Optional[str] = typer.Option(None, "--points-topic", help="Bag sources: PointCloud2 topic."),
    image_topic: Optional[list[str]] = typer.Option(
        None, "--image-topic",
        help="Bag sources: Image/CompressedImage topic; repeat it or give a comma list for several cameras.",
    ),
    camera_info_topic: Optional[list[str]] = typer.Option(
        None, "--camera-info-topic",
        help="Bag sources: CameraInfo topic, one per --image-topic in the same order (default: the image's namespace).",
    ),
    cameras: Optional[str] = typer.Option(
        None, "--cameras", help='SemanticKITTI sources: colour cameras to use, "2" (default, image_2) or "2,3" (both).'
    ),
) -> None:
    """Label a sequence or a bag: per-point classes, confidences and superpoints in OUT."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from ..config import DEFAULT_UNSEEN
    from ..label_job import detect_source, parse_frame_range, run_label_job
    from ..pipeline import LabelPipeline

    with reported_errors():
        overrides = {"classes": split_names(classes), "clip.model": clip_model, "clip.device": device}
        if affinity is not None:
            if affinity == "off":
                overrides["affinity.enabled"] = False
            else:
                overrides["affinity.mode"] = affinity
        if seen_labels is not None:
            # The paper's generalized zero-shot setting: DBSCAN on the points not labelled as seen.
            overrides["unseen_classes"] = split_names(unseen) or list(DEFAULT_UNSEEN)
            overrides["clustering.method"] = "dbscan"
        cfg = resolve_config(config, **overrides)
        spec = detect_source(
            source, cameras=parse_cameras(cameras), intensity_scale=cfg.points.intensity_scale,
            points_topic=points_topic, image_topic=_topics(image_topic), camera_info_topic=_topics(camera_info_topic),
        )
        pipeline = LabelPipeline(cfg)
        with Progress(
            TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
        ) as progress:
            task = progress.add_task("label", total=None)

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            summary = run_label_job(
                pipeline, spec, out, parse_frame_range(frames), seen_labels, write_bag, on_progress
            )

    table = Table(title=f"partlift label → {out}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("frames in source (range)", str(summary.frames_total))
    table.add_row("labelled now", str(summary.frames_done))
    table.add_row("already done (resumed)", str(summary.frames_skipped))
    table.add_row("failed", str(len(summary.frames_failed)))
    if summary.points_total:
        table.add_row("points labelled", f"{summary.points_labelled / summary.points_total:.1%}")
    for stage, values in summary.stage_ms.items():
        import numpy as np

        table.add_row(f"{stage} ms (median)", f"{np.median(values):.1f}")
    table.add_row("wall time s", f"{summary.seconds:.1f}")
    console.print(table)
    for index, why in summary.frames_failed:
        console.print(f"[red]frame {index} skipped:[/] {why}")
    if summary.frames_failed:
        raise typer.Exit(1)


def parse_cameras(text: str | None) -> list[int] | None:
    """'2,3' -> [2, 3] (KITTI camera numbers); None when not given."""
    from ..types import InputError

    names = split_names(text)
    if not names:
        return None
    try:
        return [int(n) for n in names]
    except ValueError:
        raise InputError(f"--cameras expects KITTI camera numbers such as 2,3, got {text!r}") from None


def _topics(values: list[str] | None) -> str | list[str] | None:
    """Repeated and comma-separated topic options -> None, one topic, or a list (several cameras)."""
    topics = [t for v in values or () for t in split_names(v) or ()]
    if not topics:
        return None
    return topics[0] if len(topics) == 1 else topics


def kitti2bag(
    sequence: Path = typer.Argument(..., help="SemanticKITTI sequence folder."),
    out: Path = typer.Argument(..., help="Output bag (.mcap or .db3)."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Frame range A:B (B exclusive)."),
) -> None:
    """Write a SemanticKITTI sequence as a rosbag2 with PointCloud2, Image, CameraInfo and /tf_static."""
    from ..io.kitti2bag import kitti_to_bag
    from ..label_job import parse_frame_range

    with reported_errors():
        written = kitti_to_bag(sequence, out, frames=parse_frame_range(frames))
    console.print(f"wrote {out} ({written} frames)" if written is not None else f"wrote {out}")
