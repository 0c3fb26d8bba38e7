"""`partlift eval`: metrics of a label run, a fleet folder (or of a student checkpoint) against SemanticKITTI labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import console, pct, reported_errors, split_names


def evaluate(
    out: Path = typer.Argument(
        ..., help="Label run folder, or a fleet folder (with fleet.json); with --student: where its predictions go."
    ),
    gt_sequence: Optional[Path] = typer.Argument(
        None, help="SemanticKITTI sequence folder with labels/; for a fleet folder a root holding sequences/<name>/ "
        "too. Omitted: each run's own source, when it is a SemanticKITTI folder with labels/.",
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
    unseen: Optional[str] = typer.Option(None, "--unseen", help="Unseen classes for hIoU (default motorcycle,truck,bicyclist,traffic-sign)."),
    student: Optional[Path] = typer.Option(None, "--student", help="Evaluate this student checkpoint instead of a label run."),
    tta: int = typer.Option(0, "--tta", help="With --student: number of extra z-rotations averaged at test time."),
    device: str = typer.Option("cpu", "--device", help="With --student: cpu | cuda"),
) -> None:
    """Confusion, per-class IoU, mIoU (front view and all points), hIoU, accuracy, coverage, instance ceiling.

    A fleet folder: the metrics pooled over every frame of every run, then one row per run.
    """
    from ..config import atomic_write_text
    from ..evaluation import evaluate_fleet, evaluate_run, gt_sequence_for
    from ..fleet import FLEET_FILE
    from ..types import InputError

    fleet = (out / FLEET_FILE).is_file()
    with reported_errors():
        if student is not None:
            from ..student.predict_run import write_student_run

            if gt_sequence is None or fleet:
                raise InputError("--student needs one SemanticKITTI sequence (GT_SEQUENCE) and a run folder as OUT")
            write_student_run(student, gt_sequence, out, tta_rotations=tta, device=device)
        if fleet:
            result = evaluate_fleet(out, gt_sequence, split_names(unseen))
        else:
            gt_sequence = gt_sequence if gt_sequence is not None else gt_sequence_for(out)
            result = evaluate_run(out, gt_sequence, split_names(unseen))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2))
    if fleet:
        _print_metrics(result["pooled"], f"{out}: {len(result['runs'])} runs pooled ({result['pooled']['frames']} frames)")
        _print_runs(result)
    else:
        _print_metrics(result, f"{out} vs {gt_sequence} ({result['frames']} frames)")


def _print_metrics(result: dict, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU front", justify="right")
    table.add_column("IoU all", justify="right")
    table.add_column("ceiling front", justify="right")
    table.add_column("GT pts front", justify="right")
    for name, row in result["per_class"].items():
        if row["gt_points_front"] or row["iou_front"] is not None:
            table.add_row(name, pct(row["iou_front"]), pct(row["iou_all"]), pct(row["ceiling_iou_front"]),
                          str(row["gt_points_front"]))
    console.print(table)
    summary = Table(show_header=False)
    for key in ("miou_front", "miou_all", "hiou", "accuracy", "coverage", "ceiling_miou_front"):
        summary.add_row(key, pct(result[key]))
    summary.add_row("superpoints_per_frame_median", f"{result['superpoints_per_frame_median']:.0f}")
    console.print(summary)
    crops = result["crops"]
    if crops and crops["count"]:
        console.print(
            f"CLIP crops (before affinity) against each superpoint's majority class: {100 * crops['accuracy']:.1f} % "
            f"right on {crops['count']}, {100 * crops['chance']:.1f} % by chance (kappa {crops['kappa']:.2f})"
        )


def _print_runs(result: dict) -> None:
    """One row per run of a fleet, the pooled row, and where each run's ground truth came from."""
    from rich.table import Table

    columns = {"miou_front": "mIoU front", "miou_all": "mIoU all", "hiou": "hIoU", "accuracy": "acc",
               "coverage": "cov", "ceiling_miou_front": "ceiling"}
    table = Table(title="per run")
    table.add_column("run")
    table.add_column("frames", justify="right")
    for header in columns.values():
        table.add_column(header, justify="right")
    for name, row in result["runs"].items():
        table.add_row(name, str(row["frames"]), *(pct(row[k]) for k in columns))
    pooled = result["pooled"]
    table.add_row("[bold]pooled", str(pooled["frames"]), *(pct(pooled[k]) for k in columns))
    console.print(table)
    for name, sequence in result["ground_truth"].items():
        console.print(f"{name}: ground truth {sequence}")
