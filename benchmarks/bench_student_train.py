"""Peak memory (RSS) of `partlift train` against the number of frames, beside the previous release.

    python benchmarks/bench_student_train.py                        # the default runs below
    python benchmarks/bench_student_train.py --full 10 --cropped 10,35,105 --previous

Pseudo-labels are SemanticKITTI ground truth written as `partlift label` runs (partlift_ros/testing/student_runs.py):
seq 08 (10 frames) and seq 00 (25 frames), cycled 08, 00, 08, 00, ... to reach a frame count (10, 35, 45, 70, 80,
105, ...). Every configuration is one `partlift train ... --epochs 1` in a fresh process; its peak RSS comes from
``os.wait4`` (the kernel's maximum resident set size of that process), with its wall and CPU time.

- ``--full N,...``: default settings (whole scans, batch 2, 2D branch on): the acceptance run (<= 3 GB at 10 frames).
- ``--cropped N,...``: ``--max-points 20000`` so a step is cheap: peak RSS must not grow with the frame count.
- ``--previous``: the cropped runs also with the training code of git revision ``--baseline`` (extracted with
  ``git archive`` into a temporary folder), which kept every sample in memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.testing.student_runs import write_gt_pseudo_label_run  # noqa: E402

SEQUENCES = REPO.parent / "shared" / "data" / "semantickitti-mini" / "sequences"
BASELINE_REV = "5a511fb"  # the release before the lean student (issue 16)
FRAMES = {"08": 10, "00": 25}


def runs_for(frames: int, runs: dict[str, Path]) -> list[Path]:
    chosen, total = [], 0
    while total < frames:
        seq = ("08", "00")[len(chosen) % 2]
        chosen.append(runs[seq])
        total += FRAMES[seq]
    if total != frames:
        raise SystemExit(f"{frames} frames cannot be made of whole runs cycled 08, 00, ... (10, 35, 45, 70, 80, 105)")
    return chosen


def train_once(code_root: Path, run_dirs: list[Path], out: Path, extra: list[str]) -> dict:
    """One `partlift train` in a fresh process with ``code_root`` first on the path; its peak RSS and times."""
    cmd = [sys.executable, "-c", "from partlift_ros.cli import main; main()", "train", *map(str, run_dirs),
           "--out", str(out), "--epochs", "1", *extra]
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    t0 = time.perf_counter()
    # cwd = the output's parent: `python -c` puts the cwd first on the path, before PYTHONPATH.
    proc = subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train failed ({' '.join(cmd[3:])}):\n{err[-2000:]}")
    return {"rss_gb": usage.ru_maxrss / 2**20, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", default="10", help="frame counts trained with default settings ('' = none)")
    parser.add_argument("--cropped", default="10,35,105", help="frame counts trained with --max-points 20000")
    parser.add_argument("--previous", action="store_true", help="cropped runs with the previous release too")
    parser.add_argument("--baseline", default=BASELINE_REV)
    args = parser.parse_args()
    full = [int(n) for n in args.full.split(",") if n]
    cropped = [int(n) for n in args.cropped.split(",") if n]

    with tempfile.TemporaryDirectory(prefix="bench-student-train-") as tmp:
        tmp = Path(tmp)
        runs = {seq: write_gt_pseudo_label_run(tmp / f"run{seq}", SEQUENCES / seq, range(n))
                for seq, n in FRAMES.items()}
        codes = {"this checkout": REPO}
        if args.previous:
            previous = tmp / "previous"
            previous.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.baseline, "partlift_ros"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(previous)], input=archive, check=True)
            codes[f"previous ({args.baseline})"] = previous
        print(f"torch threads: default; {os.cpu_count()} CPUs, shared with other jobs (times are noisy, RSS is not)")
        plan = [("default settings", n, []) for n in full]
        plan += [("--max-points 20000", n, ["--max-points", "20000"]) for n in cropped]
        for name, root in codes.items():
            for label, frames, extra in plan:
                if root is not REPO and not extra:
                    continue  # the previous release at full size: 9.9 GB, ~27 min here (RESULTS.md)
                out = tmp / f"out-{len(list(tmp.iterdir()))}"
                r = train_once(root, runs_for(frames, runs), out, extra)
                size = (out / "student.pt").stat().st_size / 2**20
                print(f"{name:>20} | {label:>18} | {frames:4d} frames | peak RSS {r['rss_gb']:5.2f} GB | "
                      f"wall {r['wall_s']:7.1f} s | CPU {r['cpu_s']:7.1f} s | student.pt {size:6.1f} MB", flush=True)


if __name__ == "__main__":
    main()
