"""Can the student reproduce the pseudo-labels it is trained on? (capacity / pipeline sanity check)

    python benchmarks/bench_student_overfit.py [--frames 3] [--epochs 60] [--voxel 0.2] [--width 16]

Pseudo-labels: the SemanticKITTI ground truth of the first few real frames of sequence 08 (../shared/data),
written as a `partlift label` run (no CLIP weights exist on this machine, and for this check the labels'
origin does not matter, only that the student can fit them). The student is trained on them without
augmentation, then labels the same full scans; the script prints the loss curve, the time, and the share of
pseudo-labelled points where the student agrees, next to two baselines measured in the same run: the
majority class and the voxel-purity ceiling (the best any per-voxel labelling could do at this voxel size).
Target: >= 95 % agreement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.student.data import PseudoLabelDataset  # noqa: E402
from partlift_ros.student.infer import load_student, predict  # noqa: E402
from partlift_ros.student.train import TrainConfig, train  # noqa: E402
from partlift_ros.testing.student_runs import write_gt_pseudo_label_run  # noqa: E402

SEQ08 = REPO.parent / "shared" / "data" / "semantickitti-mini" / "sequences" / "08"


def voxel_purity(coord: np.ndarray, segment: np.ndarray, voxel: float) -> float:
    """Share of labelled points that carry their voxel's majority label."""
    keep = segment >= 0
    cells = np.floor(coord[keep] / voxel).astype(np.int64)
    _, vid = np.unique(cells, axis=0, return_inverse=True)
    seg = segment[keep]
    counts = np.zeros((vid.max() + 1, seg.max() + 1), np.int64)
    np.add.at(counts, (vid.reshape(-1), seg), 1)
    return counts.max(axis=1).sum() / keep.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--voxel", type=float, default=0.2)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--max-points", type=int, default=0, help="sphere-crop scans to this many voxels (0 = whole)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--use-2d", action="store_true", help="also train the 2D branch (slower)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not SEQ08.is_dir():
        sys.exit(f"needs the real frames in {SEQ08}")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        run = write_gt_pseudo_label_run(Path(tmp) / "labels", SEQ08, list(range(args.frames)))
        cfg = TrainConfig(
            epochs=args.epochs, batch_size=min(args.frames, 2), lr=args.lr, voxel_size=args.voxel, width=args.width,
            augment=False, max_points=args.max_points, use_2d=args.use_2d, device=args.device, seed=0,
        )
        curve: list[float] = []

        def on_event(event: dict) -> None:
            if event["kind"] == "epoch":
                curve.append(event["loss"])

        t0 = time.perf_counter()
        summary = train([run], Path(tmp) / "student", cfg, progress=on_event)
        train_s = time.perf_counter() - t0
        model, _ = load_student(summary["checkpoint"], args.device)
        ds = PseudoLabelDataset([run])
        agree = total = majority = 0
        purity_hits = 0.0
        infer_ms = []
        all_segments = np.concatenate([ds[i]["segment"] for i in range(len(ds))])
        majority_class = np.bincount(all_segments[all_segments >= 0]).argmax()
        for i in range(len(ds)):
            s = ds[i]
            points = np.concatenate([s["coord"], s["strength"]], axis=1)
            t = time.perf_counter()
            pred, _ = predict(model, points)
            infer_ms.append((time.perf_counter() - t) * 1e3)
            labelled = s["segment"] >= 0
            agree += int((pred[labelled] == s["segment"][labelled]).sum())
            majority += int((s["segment"][labelled] == majority_class).sum())
            purity_hits += voxel_purity(s["coord"], s["segment"], args.voxel) * labelled.sum()
            total += int(labelled.sum())

    print(f"frames {args.frames} (seq 08, {total} pseudo-labelled points), voxel {args.voxel} m, width {args.width}, "
          f"2D branch {'on' if args.use_2d else 'off'}, {args.threads} thread(s) on {args.device}")
    print("loss per epoch: " + " ".join(f"{v:.3f}" for v in curve))
    print(f"training time: {train_s:.1f} s ({train_s / args.epochs:.2f} s/epoch)")
    print(f"inference: {np.mean(infer_ms):.0f} ms per full scan (mean of {len(infer_ms)})")
    print(f"majority-class baseline agreement: {majority / total:.1%}")
    print(f"voxel-purity ceiling at {args.voxel} m:   {purity_hits / total:.1%}")
    result = agree / total
    print(f"student agreement:                 {result:.1%} "
          f"(target >= 95%: {'met' if result >= 0.95 else 'NOT met'}; "
          f"{result / (majority / total):.2f}x the majority baseline)")


if __name__ == "__main__":
    main()
