"""The end of `partlift label` with several sources: one table, a row per source, and the exit code."""

from __future__ import annotations

from .common import console
from .label import exit_code, print_skipped


def report_fleet(fleet, stats: dict) -> int:
    """Print the per-source table, what was skipped and where fleet.json is; the worst exit code of the sources."""
    from rich.table import Table

    from ..fleet import FLEET_FILE, frames_written

    table = Table(title=f"partlift label → {fleet.out_dir} ({len(fleet.sources)} sources)")
    for name in ("source", "frames", "labelled now", "resumed", "skipped", "done", "seconds"):
        table.add_column(name, justify="left" if name == "source" else "right")
    totals = [0, 0, 0, 0, 0, 0.0]
    for s in fleet.sources:
        row = [len(s.job.indices), s.summary.frames_done, s.job.done_before, len(s.summary.frames_failed),
               frames_written(s.job), s.summary.seconds]
        totals = [a + b for a, b in zip(totals, row)]
        table.add_row(s.name, *(str(v) for v in row[:5]), f"{row[5]:.1f}")
    table.add_row("[bold]all", *(str(v) for v in totals[:5]), f"{totals[5]:.1f}")
    console.print(table)
    if stats:
        console.print(f"Ray: {stats['workers']} workers, {stats['clip_actors']} CLIP actors, start-up "
                      f"{stats['startup_s']:.1f} s, peak memory {stats['worker_peak_rss_mb']:.0f} MiB per worker, "
                      f"{stats['clip_peak_rss_mb']:.0f} MiB per CLIP actor")
    for s in fleet.sources:
        print_skipped(s.summary, s.name)
    codes = {s.name: exit_code(s.summary) for s in fleet.sources}
    for name, code in codes.items():
        if code == 2:
            console.print(f"[bold red]error:[/] {name}: no frame could be labelled")
    console.print(f"per-source record: {fleet.out_dir / FLEET_FILE}")
    return max(codes.values())
