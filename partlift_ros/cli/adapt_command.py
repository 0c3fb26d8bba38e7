"""`partlift adapt` (a typer command function; the app registers it)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, reported_errors, split_names


def _pct(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.1%}"


def adapt(
    ckpt: Path = typer.Argument(..., help="Trained student checkpoint (student.pt from `partlift train`)."),
    support: List[Path] = typer.Option(
        ..., "--support", "-s",
        help="`partlift label` output folder labelled with the new class list (repeat for several runs).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the adapted checkpoint."),
    classes: Optional[str] = typer.Option(
        None, "--classes", "-c",
        help="Comma-separated new class list: the support runs' list or a subset of it (default: all of it).",
    ),
    frames: int = typer.Option(4, "--frames", "-k", help="Support frames, chosen by greedy class coverage."),
    steps: int = typer.Option(50, "--steps", help="Inner Adam steps on the support frames."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 1e-2 head-only, 2e-3 full)."),
    mode: str = typer.Option("head", "--mode", help="head (backbone frozen) | full (every weight trains)."),
    compare: bool = typer.Option(False, "--compare", help="Also run the other mode on the same frames; print both."),
    target_points: int = typer.Option(500, "--target-points", help="Support rule: wanted points per class."),
    max_points: int = typer.Option(0, "--max-points", help="Sphere-crop support frames to N voxels (0 = whole)."),
    eval_frames: int = typer.Option(0, "--eval-frames", help="Also score N held-out frames of the support runs."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N"),
) -> None:
    """Adapt a trained student to a new class list: K steps on a few pseudo-labelled support frames."""
    from rich.table import Table

    from ..student.adapt import MODES, adapt_head

    with reported_errors():
        if mode not in MODES:
            raise typer.BadParameter(f"--mode must be one of {MODES}, got {mode!r}")
        common = dict(support_runs=support, classes=split_names(classes), k_frames=frames, inner_steps=steps,
                      seed=seed, device=device, max_points=max_points, eval_frames=eval_frames,
                      target_points=target_points)
        with console.status(f"adapting ({mode})…"):
            results = {mode: adapt_head(ckpt, lr=lr, mode=mode, out=out, **common)}
        if compare:
            other = MODES[1 - MODES.index(mode)]
            with console.status(f"adapting ({other}) for comparison…"):
                results[other] = adapt_head(ckpt, lr=None, mode=other, **common)  # its own default lr

    first = results[mode]
    titles = {"head": "head only", "full": "full fine-tuning"}
    table = Table(title=f"partlift adapt → {out}  ({len(first['classes'])} classes, {len(first['support'])} frames)")
    table.add_column("what")
    for m in results:
        table.add_column(titles[m] + (" (saved)" if m == mode else ""), justify="right")

    def row(label: str, fmt) -> None:
        table.add_row(label, *(fmt(r) for r in results.values()))

    row("trainable parameters", lambda r: f"{r['trainable_parameters']:,}")
    row("steps × lr", lambda r: f"{r['inner_steps']} × {r['lr']:g}")
    row("adaptation time", lambda r: f"{r['adapt_seconds']:.2f} s")
    row("support agreement before → after",
        lambda r: f"{_pct(r['agreement_before'])} → {_pct(r['agreement_after'])}")
    row("class-balanced agreement", lambda r: f"{_pct(r['balanced_before'])} → {_pct(r['balanced_after'])}")
    if first["heldout_frames"]:
        row(f"held-out agreement ({len(first['heldout_frames'])} frames)",
            lambda r: f"{_pct(r['heldout_before'])} → {_pct(r['heldout_after'])}")
    if len(results) == 2:
        head, full = results["head"]["adapt_seconds"], results["full"]["adapt_seconds"]
        table.caption = f"head-only adaptation took {head / max(full, 1e-9):.2f}× the time of full fine-tuning"
    console.print(table)
    console.print(f"classes: {', '.join(first['classes'])}")
    console.print(f"support frames: {', '.join(first['support'])}")
    if first["uncovered_classes"]:
        console.print(f"[yellow]no support pseudo-label for {first['uncovered_classes']}:[/] the head was not "
                      "fitted to them (they are still scored against their text embeddings)")
