"""`partlift` command line: thin typer shells over the library (heavy imports happen inside commands)."""

from __future__ import annotations

import typer

from . import adapt_command, demo, evaluate, label, render, student_commands

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Open-vocabulary LiDAR labelling: lift CLIP from the camera into 3D, distil it into a LiDAR-only student.",
)
app.command("label")(label.label)
app.command("eval")(evaluate.evaluate)
app.command("render")(render.render)
app.command("demo")(demo.demo)
app.command("kitti2bag")(label.kitti2bag)
app.command("train")(student_commands.train)
app.command("adapt")(adapt_command.adapt)


def main() -> None:
    app()
