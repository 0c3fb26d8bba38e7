"""`partlift label` and `partlift kitti2bag`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, reported_errors, resolve_config, split_names


def label(
    source: list[str] = typer.Argument(
        ..., help="SemanticKITTI sequence folders or rosbag2s (.mcap, .db3, bag folder): paths, globs or @list.txt."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder (re-running resumes it); several sources: one run per source in it."
    ),
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
    overwrite: bool = typer.Option(
        False, "--overwrite",
        help="Label afresh: replace the run in OUT (once the new one has started) and the --write-bag file.",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-w", min=1,
        help="Chunks labelled at once: 1 (default) in this process; N > 1 on a local Ray cluster (needs the ray extra).",
    ),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (auto: the one `ray start --head` runs here)."
    ),
    gpus_per_actor: float = typer.Option(
        0.0, "--gpus-per-actor", min=0.0, help="On Ray: GPUs per CLIP actor (with --device cuda); 0 = CPU."
    ),
    clip_actors: Optional[int] = typer.Option(
        None, "--clip-actors", min=1, help="On Ray: CLIP actors (default one per worker on CPU, as many as fit on GPUs)."
    ),
) -> None:
    """Label sequences or bags: per-point classes, confidences and superpoints in OUT.

    Exit codes: 0 every frame in the range is labelled; 1 finished, but some frames were skipped (listed);
    2 bad arguments or input, nothing labelled; 130 interrupted (re-running the same command resumes).
    With several sources, the worst code over the sources.
    """
    from ..config import DEFAULT_UNSEEN
    from ..fleet import label_fleet, plan_fleet, start_fleet
    from ..fleet_sources import expand_sources
    from ..label_job import detect_source, parse_frame_range
    from ..pipeline import LabelPipeline

    with reported_errors():
        if (workers or 1) > 1 or ray_address is not None:
            from ..fleet_ray import import_ray

            import_ray()  # before anything else: without Ray this fails at once, saying what to install
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
        frame_range = parse_frame_range(frames)
        cfg = resolve_config(config, **overrides)
        bag_options = dict(points_topic=points_topic, image_topic=_topics(image_topic),
                           camera_info_topic=_topics(camera_info_topic))
        camera_list = parse_cameras(cameras)

        def detect(path):
            return detect_source(path, cameras=camera_list, intensity_scale=cfg.points.intensity_scale, **bag_options)

        # Everything that can be checked without a model is checked here: nothing is written on an error.
        fleet = plan_fleet(cfg, expand_sources(source), out, detect, frame_range, seen_labels, write_bag, overwrite)
        total, done_before = fleet.frames_total, fleet.done_before
        resumed = f", {done_before} already done (resuming)" if done_before else ""
        what = f"{fleet.sources[0].path}" if not fleet.is_fleet else f"{len(fleet.sources)} sources"
        console.print(f"labelling {total} frames of {what} into {out}{resumed}")
        pipeline = LabelPipeline(cfg)
        stats: dict = {}
        try:
            if total > done_before:
                with console.status(f"loading CLIP {cfg.clip.model}"):
                    start_fleet(pipeline, fleet)
            with _progress_bar() as progress:
                task = progress.add_task("label", total=total, completed=done_before)
                stats = label_fleet(pipeline, fleet, workers, ray_address, gpus_per_actor, clip_actors,
                            lambda done, all_frames: progress.update(task, completed=done, total=all_frames))
        except KeyboardInterrupt:
            from ..fleet import frames_written

            now = sum(s.summary.frames_done for s in fleet.sources)
            written = sum(frames_written(s.job) for s in fleet.sources)
            console.print(
                f"[yellow]interrupted:[/] {now} frames labelled by this run, {written} of {total} now done in "
                f"{out}; re-running the same command resumes"
            )
            raise typer.Exit(130) from None
    if fleet.is_fleet:
        from .label_fleet_report import report_fleet

        raise typer.Exit(report_fleet(fleet, stats))
    raise typer.Exit(_report(fleet.sources[0].summary, out))


def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]labelling"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
    )


def _report(summary, out: Path) -> int:
    """Print the summary table and the skipped frames; return the exit code (see ``label``)."""
    import numpy as np
    from rich.table import Table

    table = Table(title=f"partlift label → {out}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("frames in range", str(summary.frames_total))
    table.add_row("labelled now", str(summary.frames_done))
    table.add_row("already done (resumed)", str(summary.frames_skipped))
    table.add_row("skipped (unreadable)", str(len(summary.frames_failed)))
    if summary.points_total:
        table.add_row("points labelled", f"{summary.points_labelled / summary.points_total:.1%}")
    for stage, values in summary.stage_ms.items():
        table.add_row(f"{stage} ms (median)", f"{np.median(values):.1f}")
    table.add_row("wall time s", f"{summary.seconds:.1f}")
    if summary.bag_path is not None:
        table.add_row("labelled bag", f"{summary.bag_path} ({summary.bag_frames} frames)")
    console.print(table)
    print_skipped(summary)
    code = exit_code(summary)
    if code == 2:
        console.print("[bold red]error:[/] no frame could be labelled")
    return code


def print_skipped(summary, source: str = "") -> None:
    """The warnings, skipped messages and skipped frames of one job, prefixed with ``source`` when given.

    The reasons quote paths and message fields: escaped, so brackets in them are printed, not read as markup.
    """
    from rich.markup import escape

    prefix = f"{escape(source)}: " if source else ""
    for why in summary.warnings:
        console.print(f"[yellow]warning:[/] {prefix}{escape(why)}")
    for why in summary.skipped_messages:
        console.print(f"[red]message skipped:[/] {prefix}{escape(why)}")
    for _, why in summary.frames_failed:
        console.print(f"[red]skipped[/] {prefix}{escape(why)}")


def exit_code(summary) -> int:
    """2 when frames failed and none is labelled, 1 when some frames or messages were skipped, else 0."""
    if summary.frames_failed and summary.frames_done + summary.frames_skipped == 0:
        return 2
    return 1 if summary.frames_failed or summary.skipped_messages else 0


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
    out: Path = typer.Argument(..., help="Output bag: x.mcap or x.db3 (one file), or a name without suffix (a bag folder)."),
    frames: Optional[str] = typer.Option(None, "--frames", help="Frame range A:B (B exclusive)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write a SemanticKITTI sequence as a rosbag2 with PointCloud2, Image, CameraInfo and /tf_static."""
    from ..io.kitti2bag import kitti_to_bag
    from ..label_job import parse_frame_range

    with reported_errors():
        written = kitti_to_bag(sequence, out, frames=parse_frame_range(frames), overwrite=overwrite)
    console.print(f"wrote {out} ({written} frames)")
