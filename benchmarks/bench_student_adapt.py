"""Fast adaptation to a new class list: head-only (backbone frozen) vs full fine-tuning on the same frames.

    python benchmarks/bench_student_adapt.py [--train-frames 6] [--epochs 8] [--k 3] [--steps 30] [--device cpu]

Real SemanticKITTI frames from ../shared/data. Pseudo-labels are the ground truth (no CLIP weights exist on
this machine), written as `partlift label` runs, and class text embeddings are random unit vectors, so the
zero-shot score of a swapped class list is chance level and all the knowledge must come from the support
frames. A student is trained briefly on sequence 00 with the 19 SemanticKITTI classes, then adapted to a
merged 6-class list (vehicle = car + truck + ..., human, ground, vegetation, structure, pole-like) on ``k``
support frames of sequence 08 (another street) picked by the greedy class-coverage rule; the other frames
of 08 are held out. Printed: adaptation time and agreement with the pseudo-labels of the support frames
(and the held-out ones) before and after, for head-only adaptation, full fine-tuning with the same steps,
head-only with 10x the steps (still far cheaper than full fine-tuning), and head-only on the first ``k``
frames instead of the rule's choice.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.student.adapt import adapt_head  # noqa: E402
from partlift_ros.student.train import TrainConfig, train  # noqa: E402
from partlift_ros.testing.student_runs import write_gt_pseudo_label_run, write_merged_run, write_thinned_sequence  # noqa: E402

SEQUENCES = REPO.parent / "shared" / "data" / "semantickitti-mini" / "sequences"
MERGED = {
    "vehicle": ["car", "bicycle", "motorcycle", "truck", "other-vehicle"],
    "human": ["person", "bicyclist", "motorcyclist"],
    "ground": ["road", "parking", "sidewalk", "other-ground", "terrain"],
    "vegetation": ["vegetation", "trunk"],
    "structure": ["building", "fence"],
    "pole-like": ["pole", "traffic-sign"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-frames", type=int, default=6, help="frames of sequence 00 the student trains on")
    ap.add_argument("--adapt-frames", type=int, default=10, help="frames of sequence 08 (support + held out)")
    ap.add_argument("--thin", type=int, default=2, help="keep every n-th point of each scan")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--voxel", type=float, default=0.2)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--max-points", type=int, default=20000, help="training sphere crop (voxels)")
    ap.add_argument("--k", type=int, default=3, help="support frames")
    ap.add_argument("--steps", type=int, default=30, help="inner steps (both modes)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_ids, adapt_ids = list(range(args.train_frames)), list(range(args.adapt_frames))
        seq00 = write_thinned_sequence(SEQUENCES / "00", tmp / "00", train_ids, step=args.thin)
        seq08 = write_thinned_sequence(SEQUENCES / "08", tmp / "08", adapt_ids, step=args.thin)
        train_run = write_gt_pseudo_label_run(tmp / "train_run", seq00, train_ids)
        full08 = write_gt_pseudo_label_run(tmp / "run08_19", seq08, adapt_ids)
        support_run = write_merged_run(full08, tmp / "run08_merged", MERGED, embedding_dim=16, seed=11)

        cfg = TrainConfig(epochs=args.epochs, batch_size=2, width=args.width, voxel_size=args.voxel, lr=1e-2,
                          max_points=args.max_points, use_2d=False, backend="torch", device=args.device, seed=0)
        t0 = time.perf_counter()
        trained = train([train_run], tmp / "student", cfg)
        print(f"student: {len(train_ids)} frames of seq 00, 19 classes, {args.epochs} epochs in "
              f"{time.perf_counter() - t0:.0f} s, loss {trained['first_loss']:.3f} -> {trained['final_loss']:.3f}")
        print(f"new class list: {list(MERGED)}; {args.k} support frames of seq 08, "
              f"{args.adapt_frames - args.k} held out; {args.steps} inner steps; device {args.device}")

        common = dict(support_runs=[support_run], k_frames=args.k, inner_steps=args.steps, device=args.device,
                      eval_frames=args.adapt_frames, seed=0)
        runs = {
            "head only (rule)": adapt_head(trained["checkpoint"], mode="head", out=tmp / "head.pt", **common),
            "full fine-tuning (rule)": adapt_head(trained["checkpoint"], mode="full", **common),
            f"head only ({10 * args.steps} steps)": adapt_head(
                trained["checkpoint"], mode="head", **{**common, "inner_steps": 10 * args.steps}),
            "head only (first k)": adapt_head(trained["checkpoint"], mode="head",
                                              support_frames=list(range(args.k)), **common),
        }
        head = runs["head only (rule)"]
        print(f"support chosen by the rule: {head['support']}; points per class: {head['support_points']}")
        print(f"{'':26s} {'params':>8s} {'time s':>8s} {'s/step':>8s} {'support before→after':>22s} "
              f"{'balanced':>16s} {'held-out before→after':>22s}")
        for name, r in runs.items():
            print(f"{name:26s} {r['trainable_parameters']:8d} {r['adapt_seconds']:8.2f} {r['seconds_per_step']:8.3f} "
                  f"{r['agreement_before']:10.1%} → {r['agreement_after']:6.1%} "
                  f"{r['balanced_before']:6.1%} → {r['balanced_after']:6.1%} "
                  f"{r['heldout_before']:10.1%} → {r['heldout_after']:6.1%}")
        full = runs["full fine-tuning (rule)"]
        print(f"time ratio head/full: {head['adapt_seconds'] / full['adapt_seconds']:.3f}; "
              f"support agreement head − full: {head['agreement_after'] - full['agreement_after']:+.1%}; "
              f"held-out head − full: {head['heldout_after'] - full['heldout_after']:+.1%}")


if __name__ == "__main__":
    main()
