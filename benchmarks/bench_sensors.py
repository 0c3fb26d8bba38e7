"""Superpoints on real frames delivered as other sensors would: intensity 0..255, random point order, 32 and 16
beams, an organised 64 x N cloud with NaN returns, a second camera; default config throughout.

    python benchmarks/bench_sensors.py [--root ../shared/data/semantickitti-mini] [--sequences 00,08] [--frames N]
                                       [--budget-rules]

Per sequence and variant (built by ``partlift_ros.testing.sensors`` through the reader rules): the instance ceiling
(every superpoint takes its majority ground-truth class, over the points the cameras see) of the default method,
its change against the original scan, RANSAC + DBSCAN on the same variant (all in the same run), the median
superpoints per frame, and the geometry stages' time (projection, superpixels, superpoints, visibility through
``LabelPipeline.geometry``): median CPU and wall ms per frame and CPU ms per 10k points in view. The two-camera
run uses frames 0-9 (image_3 exists for those) against the single camera on the same frames.

``--budget-rules`` also compares superpoint budgets on the original scan, every 4th laser, both cameras and the whole
360-degree scan (every point eligible): the default (per steradian of view), a fixed 300 and 300 per 19.5k
eligible points (per visible point).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from partlift_ros.calibration import project_points
from partlift_ros.config import SEMANTIC_KITTI_CLASSES, PipelineConfig, apply_overrides
from partlift_ros.metrics import ConfusionAccumulator, instance_ceiling
from partlift_ros.pipeline import LabelPipeline
from partlift_ros.superpoints.budget import view_solid_angle
from partlift_ros.testing.sensors import (
    every_nth_laser,
    intensity_255,
    kitti_frames,
    organised,
    random_order,
)

C = len(SEMANTIC_KITTI_CLASSES)
VARIANTS = {
    "original scan": lambda item: item,
    "intensity 0..255 (uint8 field)": intensity_255,
    "random point order": random_order,
    "32 beams (every 2nd laser)": lambda item: every_nth_laser(item, 2),
    "16 beams (every 4th laser)": lambda item: every_nth_laser(item, 4),
    "organised 64 x 2048, NaN returns, ring = row": organised,
}


class Score:
    """Summed confusions (ceiling), superpoint counts and timings of one method on one variant."""

    def __init__(self) -> None:
        self.acc, self.counts, self.cpu, self.wall, self.per10k = ConfusionAccumulator(C), [], [], [], []

    def add(self, pipe: LabelPipeline, item, timed: bool = True, rows: np.ndarray | None = None) -> np.ndarray:
        t, w = time.process_time(), time.perf_counter()
        g = pipe.geometry(item.frame)
        cpu, wall = (time.process_time() - t) * 1e3, (time.perf_counter() - w) * 1e3
        scored = g.in_view if rows is None else rows
        self.acc.add(instance_ceiling(g.instance[scored], item.gt[scored], C), item.gt[scored])
        self.counts.append(g.num_instances)
        if timed:
            self.cpu.append(cpu)
            self.wall.append(wall)
            self.per10k.append(cpu / max(int(g.in_view.sum()), 1) * 1e4)
        return g.in_view

    @property
    def miou(self) -> float:
        return 100 * self.acc.miou()


def pipeline(**overrides) -> LabelPipeline:
    return LabelPipeline(apply_overrides(PipelineConfig(), overrides))


def run_variants(items, sequence: str) -> dict[str, Score]:
    sv, db = pipeline(), pipeline(**{"clustering.method": "dbscan"})
    scores = {}
    for name, make in VARIANTS.items():
        ours, base = Score(), Score()
        for item in items:
            variant = make(item)
            ours.add(sv, variant)
            base.add(db, variant, timed=False)
        scores[name] = ours
        ref = scores["original scan"].miou
        print(f"{sequence:4s} {name:46s} {ours.miou:7.1f} {ours.miou - ref:+7.1f} {base.miou:8.1f} "
              f"{np.median(ours.counts):6.0f} {np.median(ours.cpu):8.1f} {np.median(ours.wall):8.1f} "
              f"{np.median(ours.per10k):7.1f} {np.max(ours.per10k):7.1f}", flush=True)
    return scores


def run_two_cameras(root: Path, sequence: str) -> None:
    sv, db = pipeline(), pipeline(**{"clustering.method": "dbscan"})
    one = list(kitti_frames(root / "sequences" / sequence, cameras=(2,), frames=slice(0, 10)))
    two = list(kitti_frames(root / "sequences" / sequence, cameras=(2, 3), frames=slice(0, 10)))
    single, both, both_on_single, base = Score(), Score(), Score(), Score()
    covered = []
    for a, b in zip(one, two):
        seen_one = single.add(sv, a)
        seen_two = both.add(sv, b)
        both_on_single.add(sv, b, timed=False, rows=seen_one)
        base.add(db, b, timed=False)
        covered.append(bool((seen_two | ~seen_one).all()))
    print(f"{sequence:4s} {'left camera only, frames 0-9':46s} {single.miou:7.1f} {0:+7.1f} {'':8s} "
          f"{np.median(single.counts):6.0f} {np.median(single.cpu):8.1f} {np.median(single.wall):8.1f} "
          f"{np.median(single.per10k):7.1f} {np.max(single.per10k):7.1f}")
    print(f"{sequence:4s} {'left + right cameras (--cameras 2,3), frames 0-9':46s} {both.miou:7.1f} "
          f"{both.miou - single.miou:+7.1f} {base.miou:8.1f} {np.median(both.counts):6.0f} {np.median(both.cpu):8.1f} "
          f"{np.median(both.wall):8.1f} {np.median(both.per10k):7.1f} {np.max(both.per10k):7.1f}")
    print(f"     two cameras cover every point the left camera sees: {all(covered)}; their ceiling on the left "
          f"camera's points only: {both_on_single.miou:.1f}", flush=True)


def in_view(frame) -> np.ndarray:
    """(N,) bool: the points some camera of the frame sees."""
    seen = np.zeros(frame.points.shape[0], dtype=bool)
    finite = np.isfinite(frame.points[:, :3]).all(axis=1)
    for cam in frame.cameras:
        seen[finite] |= project_points(frame.points[finite], cam.K, cam.T_cam_lidar, cam.size, cam.D).in_image
    return seen


def run_budget_rules(items, two_camera_items, sequence: str) -> None:
    reference_points = 19500  # eligible points of one KITTI front camera, the per-point rule's unit
    cases = {
        "original scan": (items, lambda item: item, False),
        "16 beams (every 4th laser)": (items, lambda item: every_nth_laser(item, 4), False),
        "left + right cameras, frames 0-9": (two_camera_items, lambda item: item, False),
        "whole 360-degree scan eligible": (items, lambda item: item, True),
    }
    for case, (frames, make, everything) in cases.items():
        row = []
        for rule in ("per steradian (default)", "fixed 300", "per visible point"):
            score = Score()
            for item in frames:
                variant = make(item)
                over = {"clustering.front_view_only": not everything}
                finite = np.isfinite(variant.frame.points[:, :3]).all(axis=1)
                if rule == "fixed 300":
                    over["clustering.max_superpoints"] = 300
                elif rule == "per visible point":
                    eligible = finite if everything else in_view(variant.frame)
                    over["clustering.max_superpoints"] = max(1, round(300 * eligible.sum() / reference_points))
                score.add(pipeline(**over), variant, timed=False, rows=finite if everything else None)
            row.append(f"{rule} {score.miou:.1f} (median {np.median(score.counts):.0f})")
        solid = np.median([view_solid_angle(make(i).frame.points[:, :3]) for i in frames]) if everything else None
        print(f"{sequence:4s} {case:34s} " + " | ".join(row) + (f" | {solid:.2f} sr" if solid else ""), flush=True)


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=here.parent / "shared" / "data" / "semantickitti-mini")
    ap.add_argument("--sequences", default="00,08")
    ap.add_argument("--frames", type=int, default=None, help="frames per sequence (default: all)")
    ap.add_argument("--budget-rules", action="store_true")
    args = ap.parse_args()
    print("Machine shared with other jobs: times are CPU ms (process time) beside wall ms; read them as ratios.")
    print(f"{'seq':4s} {'variant':46s} {'ceiling':>7s} {'vs orig':>7s} {'DBSCAN':>8s} {'#sp':>6s} "
          f"{'cpu ms':>8s} {'wall ms':>8s} {'ms/10k':>7s} {'max/10k':>7s}")
    for sequence in args.sequences.split(","):
        frames = slice(0, args.frames) if args.frames else None
        items = list(kitti_frames(args.root / "sequences" / sequence, frames=frames))
        pipeline().geometry(items[0].frame)  # warm-up: imports and first-call costs stay out of the times
        run_variants(items, sequence)
        run_two_cameras(args.root, sequence)
        if args.budget_rules:
            two = list(kitti_frames(args.root / "sequences" / sequence, cameras=(2, 3), frames=slice(0, 10)))
            run_budget_rules(items, two, sequence)


if __name__ == "__main__":
    main()
