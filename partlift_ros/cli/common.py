"""Helpers shared by the CLI commands: config resolution and error reporting."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def pct(value: float | None) -> str:
    """A 0..1 metric as a percentage with two decimals; "-" when there is none."""
    return "-" if value is None else f"{100 * value:.2f}"


def split_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def resolve_config(config_file: Path | None, **overrides):
    """Defaults <- YAML file <- command-line options (only those given)."""
    from ..config import load_config

    given = {k: v for k, v in overrides.items() if v is not None}
    return load_config(config_file, given)


@contextmanager
def reported_errors():
    """Turn the library's precise exceptions into one red line and exit code 2 (no traceback)."""
    from ..clip_loading import ModelLoadError
    from ..config import ConfigError
    from ..sam_refine import SamLoadError
    from ..types import InputError

    try:
        yield
    except (InputError, ConfigError, FileNotFoundError, ModelLoadError, SamLoadError) as exc:
        from rich.markup import escape

        console.print(f"[bold red]error:[/] {escape(str(exc))}")  # a message may hold brackets: ".[ray]"
        raise typer.Exit(2) from None
