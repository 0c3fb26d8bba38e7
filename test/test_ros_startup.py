"""Nodes that refuse to start say why in one line and exit 2: refused parameters, a missing student checkpoint,
a CLIP model that cannot be loaded. Checked in-process (the console entries' ``main``) and as the processes a
launch file starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="ROS 2 (rclpy) missing: pip install -e '.[ros-wheels]'")
pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs missing: pip install -e '.[ros-wheels]'")

REPO = Path(__file__).resolve().parents[1]


def _fatal_lines(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "[FATAL]" in lines[0] and "cannot start" in lines[0] and "Traceback" not in err
    return lines


@pytest.mark.parametrize("entry, params, says", [
    ("labeller", ["affinity.mode:=offline"], "only 'online' is allowed"),
    ("labeller", ["clustering.method:=kmeans"], "clustering.method"),
    ("labeller", ["clip.model:=/nonexistent/clip-folder", "clip.local_files_only:=true"], "/nonexistent/clip-folder"),
    ("labeller", ["max_points:=many"], "max_points"),
    ("student", ["checkpoint:=/nonexistent/student.pt"], "student checkpoint not found"),
    ("student", [], "checkpoint"),
])
def test_refused_start_is_one_fatal_line_and_exit_code_2(capfd, entry, params, says):
    if entry == "labeller":
        from partlift_ros.ros.labeller_node import main
    else:
        from partlift_ros.ros.student_node import main
    args = [entry, "--ros-args", *[a for p in params for a in ("-p", p)]]
    assert main(args) == 2
    (line,) = _fatal_lines(capfd.readouterr().err)
    assert says in line


@pytest.mark.parametrize("module, params", [
    ("partlift_ros.ros.labeller_node", ["affinity.mode:=offline"]),
    ("partlift_ros.ros.student_node", ["checkpoint:=/nonexistent/student.pt"]),
])
def test_refused_start_as_a_process(module, params):
    """What `ros2 run` / a launch file sees: exit code 2 and one line on stderr, nothing left running."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, "--ros-args", *[a for p in params for a in ("-p", p)]],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    _fatal_lines(proc.stderr)
