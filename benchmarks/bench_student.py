"""Student (SPVCNN) inference time on one real SemanticKITTI scan.

    python benchmarks/bench_student.py                      # CPU, torch backend (+ spconv CPU if installed)
    python benchmarks/bench_student.py --device cuda        # GPU: torch backend and spconv if installed
    python benchmarks/bench_student.py --width 16 --threads 1 --repeats 3

Prints ms per scan, voxel count, parameter count, and each backend's time relative to the torch
backend measured in the same run (the baseline). Also checks the backends agree on the logits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from partlift_ros.student.model import SPVCNN  # noqa: E402
from partlift_ros.student.sparse import spconv_available  # noqa: E402

DEFAULT_SCAN = Path(__file__).resolve().parents[2] / "shared/data/semantickitti-mini/sequences/08/velodyne/000000.bin"


def load_batch(path: Path, voxel_size: float, device: str) -> dict:
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    coord = torch.from_numpy(points[:, :3].copy())
    grid = torch.floor((coord - coord.min(0).values) / voxel_size).int()
    batch = {"coord": coord, "feat": torch.from_numpy(points.copy()), "grid_coord": grid,
             "offset": torch.tensor([len(points)])}
    return {k: v.to(device) for k, v in batch.items()}


def time_model(model: SPVCNN, batch: dict, repeats: int, device: str) -> tuple[list[float], torch.Tensor]:
    times = []
    with torch.inference_mode():
        logits = model(batch)["logits"]  # warm-up (allocator, spconv kernel selection)
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            logits = model(batch)["logits"]
            if device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1000.0)
    return times, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=Path, default=DEFAULT_SCAN)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--classes", type=int, default=19)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batch = load_batch(args.scan, args.voxel_size, args.device)
    n_points = batch["coord"].shape[0]
    n_voxels = torch.unique(batch["grid_coord"], dim=0).shape[0]
    torch.manual_seed(0)
    emb = torch.randn(args.classes, 512)
    backends = ["torch"] + (["spconv"] if spconv_available() else [])
    print(f"scan {args.scan.name}: {n_points} points, {n_voxels} voxels at {args.voxel_size} m; "
          f"device {args.device}, torch threads {torch.get_num_threads()}, width {args.width}")
    if "spconv" not in backends:
        print("spconv not installed: torch backend only")

    reference, baseline_ms = None, None
    for backend in backends:
        model = SPVCNN(4, emb, width=args.width, voxel_size=args.voxel_size, backend=backend)
        if reference is not None:
            model.load_state_dict(reference[0].state_dict())
        model = model.to(args.device).eval()
        times, logits = time_model(model, batch, args.repeats, args.device)
        ms = statistics.median(times)
        params = sum(p.numel() for p in model.parameters())
        line = f"{backend:>7}: {ms:9.1f} ms/scan (runs {', '.join(f'{t:.0f}' for t in times)}), {params} parameters"
        if reference is None:
            reference, baseline_ms = (model, logits), ms
        else:
            diff = (logits - reference[1]).abs().max().item()
            agree = (logits.argmax(1) == reference[1].argmax(1)).float().mean().item()
            line += f", {baseline_ms / ms:.2f}x vs torch, max |logit diff| {diff:.2e}, argmax agreement {agree:.4f}"
        print(line)


if __name__ == "__main__":
    main()
