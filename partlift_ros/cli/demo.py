"""`partlift demo`: the main job on the embedded real frames; says plainly where its labels come from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, pct, reported_errors, resolve_config


def demo(
    out: Path = typer.Option(Path("partlift_demo"), "--out", "-o", help="Output folder."),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="CLIP hub id or local folder with weights."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda"),
    download: bool = typer.Option(
        False, "--download", help="Fetch the CLIP weights from the Hugging Face hub if they are not cached (needs internet)."
    ),
) -> None:
    """Label two real SemanticKITTI frames shipped with the package (geometry only when no CLIP weights)."""
    from ..demo import demo_sequence, run_demo

    with reported_errors():
        # Offline by default: a fresh machine without internet must not wait on hub retries.
        cfg = resolve_config(
            None, **{"clip.model": clip_model, "clip.device": device, "clip.local_files_only": not download}
        )
        console.print(f"demo data: {demo_sequence()} (2 real SemanticKITTI seq 08 frames, front-view crop)")
        result = run_demo(out, cfg)
    m = result.metrics
    if result.labelled:
        crops = m.get("crops") or {"count": 0, "accuracy": float("nan"), "chance": float("nan"), "kappa": float("nan")}
        check = (
            f"CLIP's class of each superpoint's crop against the superpoint's majority ground-truth class: "
            f"{100 * crops['accuracy']:.1f} % right on {crops['count']} crops, {100 * crops['chance']:.1f} % by chance "
            f"(kappa {crops['kappa']:.2f})."
        )
        if result.trusted:
            console.print(f"[bold green]labels come from CLIP[/] {result.clip_model} lifted to 3D (affinity on).")
            console.print(check)
            console.print(
                f"mIoU front view {pct(m['miou_front'])}, pseudo-label accuracy {pct(m['accuracy'])}, "
                f"coverage {pct(m['coverage'])}, instance ceiling {pct(m['ceiling_miou_front'])}"
            )
        elif not crops["count"]:
            console.print(
                "[bold red]These are not labels:[/] no superpoint had a crop CLIP could score, so nothing shows "
                f"that the weights in {result.clip_model!r} know these images; nothing was scored as labels."
            )
        else:
            console.print(
                f"[bold red]These are not labels:[/] {check}\n"
                f"That is chance level: the weights in {result.clip_model!r} look untrained, or do not match the "
                "model or tokenizer. The pictures show CLIP's output only to make that visible; nothing was scored as labels.\n"
                f"Use real CLIP weights: {how_to_get_weights()}"
            )
            console.print(
                f"instance ceiling (mIoU if every superpoint took its majority ground-truth class, front view) "
                f"{pct(m['ceiling_miou_front'])}"
            )
    else:
        console.print(
            f"[bold yellow]No labels:[/] CLIP weights for {result.clip_model!r} could not be loaded "
            f"({' '.join(result.clip_error.split())}).\n"
            "Labelling needs real CLIP weights; random weights would give meaningless classes, so none are shown.\n"
            "Ran the CLIP-free stages instead: superpoints and visibility on the real frames."
        )
        console.print(
            f"superpoints per frame (median) {m['superpoints_per_frame_median']:.0f}; instance ceiling "
            f"(mIoU if every superpoint took its majority ground-truth class, front view) {pct(m['ceiling_miou_front'])}"
        )
        console.print(f"To label: {how_to_get_weights()}")
    for p in result.pngs:
        console.print(f"wrote {p}")


def how_to_get_weights() -> str:
    """Advice that can work on this machine: --download where the hub answers, else fetch the folder elsewhere."""
    from ..clip_loading import offline_fix
    from ..config import ClipConfig
    from ..model_source import hub_unreachable_reason

    hub_id = ClipConfig().model
    if hub_unreachable_reason() is None:
        return f"partlift demo --download (fetches {hub_id}) or --clip-model PATH."
    return f"the hub cannot be reached from here. {offline_fix(hub_id)}."
