"""`partlift eval`: metrics of a label run (or of a student checkpoint) against SemanticKITTI labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import console, reported_errors, split_names


def evaluate(
    out: Path = typer.Argument(..., help="Label run folder (with --student: where its predictions are written)."),
    gt_sequence: Path = typer.Argument(..., help="SemanticKITTI sequence folder with labels/."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
    unseen: Optional[str] = typer.Option(None, "--unseen", help="Unseen classes for hIoU (default motorcycle,truck,bicyclist,traffic-sign)."),
    student: Optional[Path] = typer.Option(None, "--student", help="Evaluate this student checkpoint instead of a label run."),
    tta: int = typer.Option(0, "--tta", help="With --student: number of extra z-rotations averaged at test time."),
    device: str = typer.Option("cpu", "--device", help="With --student: cpu | cuda"),
) -> None:
    """Confusion, per-class IoU, mIoU (front view and all points), hIoU, accuracy, coverage, instance ceiling."""
    from rich.table import Table

    from ..config import atomic_write_text
    from ..evaluation import evaluate_run

    with reported_errors():
        if student is not None:
            from ..student.predict_run import write_student_run

            write_student_run(student, gt_sequence, out, tta_rotations=tta, device=device)
        result = evaluate_run(out, gt_sequence, split_names(unseen))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2))

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    table = Table(title=f"{out} vs {gt_sequence} ({result['frames']} frames)")
    table.add_column("class")
    table.add_column("IoU front", justify="right")
    table.add_column("IoU all", justify="right")
    table.add_column("ceiling front", justify="right")
    table.add_column("GT pts front", justify="right")
    for name, row in result["per_class"].items():
        if row["gt_points_front"] or row["iou_front"] is not None:
            table.add_row(name, pct(row["iou_front"]), pct(row["iou_all"]), pct(row["ceiling_iou_front"]), str(row["gt_points_front"]))
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
