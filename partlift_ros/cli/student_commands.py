"""`partlift train` (a typer command function; the app registers it)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, reported_errors


def train(
    label_dirs: List[Path] = typer.Argument(..., help="`partlift label` output folders (pseudo-labels) to learn from."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: checkpoints/, metrics.jsonl, student.pt."),
    epochs: int = typer.Option(20, "--epochs", help="Epochs per round."),
    rounds: int = typer.Option(1, "--rounds", help="> 1: backward distillation (re-score units between rounds)."),
    batch_size: int = typer.Option(2, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    voxel_size: float = typer.Option(0.05, "--voxel-size", help="Metres."),
    width: int = typer.Option(32, "--width", help="SPVCNN base channels."),
    max_points: int = typer.Option(0, "--max-points", help="Sphere-crop scans to this many voxels per step (0 = whole scans)."),
    use_2d: bool = typer.Option(True, "--2d/--no-2d", help="Training-only 2D branch (camera images)."),
    confidence: bool = typer.Option(True, "--confidence/--no-confidence", help="Weight points by pseudo-label confidence."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.pt."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA."),
    recompute: bool = typer.Option(True, "--recompute/--no-recompute",
                                   help="Recompute activations in backward: less memory, one more forward pass per step."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="SemanticKITTI sequence folder with labels/: mIoU per epoch."),
    eval_frames: int = typer.Option(0, "--eval-frames", help="With --gt: evaluate on the first N frames (0 = all)."),
) -> None:
    """Distil pseudo-labels into the LiDAR-only SPVCNN student."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from ..student.train import TrainConfig
    from ..student.train import train as run_training

    cfg = TrainConfig(
        epochs=epochs, rounds=rounds, batch_size=batch_size, lr=lr, voxel_size=voxel_size, width=width,
        max_points=max_points,
        use_2d=use_2d, confidence_weighting=confidence, seed=seed, device=device, amp=amp, recompute=recompute,
        eval_max_frames=eval_frames,
    )
    with reported_errors(), Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(), console=console,
    ) as progress:
        task = progress.add_task("training", total=epochs * rounds, loss=float("nan"))

        def on_event(event: dict) -> None:
            if event["kind"] == "step":
                progress.update(task, description=f"round {event['round'] + 1} epoch {event['epoch'] + 1}",
                                loss=event["loss"])
            elif event["kind"] == "epoch":
                progress.update(task, completed=event["round"] * epochs + event["epoch"] + 1)
                if "miou" in event:
                    progress.console.print(f"round {event['round'] + 1} epoch {event['epoch'] + 1}: "
                                           f"loss {event['loss']:.4f}, mIoU {event['miou']:.3f}")
            elif event["kind"] == "rescore":
                progress.console.print(f"round {event['round'] + 1}: student agrees with "
                                       f"{event['agreement']:.1%} of the pseudo-labelled points")

        summary = run_training(label_dirs, out, cfg, gt_sequence=gt, progress=on_event, resume=resume)

    table = Table(title=f"partlift train → {out}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("frames / classes", f"{summary['frames']} / {summary['classes']}")
    if summary["resumed_from"]:
        r = summary["resumed_from"]
        table.add_row("resumed after", f"round {r['round'] + 1} epoch {r['epoch'] + 1}")
    table.add_row("epochs run now", str(summary["epochs_run"]))
    table.add_row("loss first → last epoch", f"{summary['first_loss']:.4f} → {summary['final_loss']:.4f}")
    for r, a in enumerate(summary["unit_agreement_per_round"], 2):
        table.add_row(f"agreement before round {r}", f"{a:.1%}")
    if summary["final_miou"] is not None:
        table.add_row("mIoU (last / best)", f"{summary['final_miou']:.3f} / {summary['best_miou']:.3f}")
    table.add_row("time", f"{summary['seconds']:.1f} s")
    table.add_row("checkpoint", summary["checkpoint"])
    console.print(table)
