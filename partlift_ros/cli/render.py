"""`partlift render`: PNGs of a labelled frame (every camera's overlay + bird's-eye view)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, reported_errors


def render(
    out: Path = typer.Argument(..., help="Label run folder."),
    source: Path = typer.Argument(..., help="The SemanticKITTI sequence or bag the run labelled."),
    frame: int = typer.Option(..., "--frame", "-f", help="Frame number."),
    png: Optional[Path] = typer.Option(None, "--png", help="Output PNG (default OUT/render/NNNNNN.png)."),
) -> None:
    """Draw the labelled points over every camera's image and a bird's-eye view, coloured by class.

    A bag is read with the topics the run recorded in OUT/source.yaml (several image topics too)."""
    from ..render_run import render_run_frame

    with reported_errors():
        path = render_run_frame(out, source, frame, png)
    console.print(f"wrote {path}")
