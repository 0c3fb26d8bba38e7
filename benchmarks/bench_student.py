"""Student (SPVCNN) inference time on one real SemanticKITTI scan, beside the previous release in the same run.

    python benchmarks/bench_student.py                          # CPU, default width, seq 08 frame 0
    python benchmarks/bench_student.py --checkpoint student.pt  # trained weights (default: seeded random)
    python benchmarks/bench_student.py --spconv --threads 1 --repeats 5

Times the network forward pass (inference mode, logits) of:

- ``previous``: the sparse conv and model code of git revision ``--baseline`` (default: the commit before this
  work), loaded from git into temporary modules, with the same weights;
- ``fp32``: this checkout (what ``predict`` runs);
- ``bf16``: this checkout under CPU bf16 autocast (pays only with native bf16 matmul, AVX-512 BF16 / AMX);
- ``spconv``: this checkout with the spconv CPU backend (``--spconv``, when installed).

Prints ms per scan (median of ``--repeats``, runs interleaved so load changes hit every variant alike), the
ratio to ``previous``, max |logit difference| and argmax agreement with ``previous``; and the argmax agreement
of the int8-stored weights of ``student.pt`` (checkpoint.py) with the float32 weights.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.student.checkpoint import (  # noqa: E402
    model_from_checkpoint, model_weights, read_checkpoint, student_state,
)
from partlift_ros.student.model import SPVCNN  # noqa: E402
from partlift_ros.student.sparse import spconv_available  # noqa: E402
from partlift_ros.student.train import TrainConfig  # noqa: E402

DEFAULT_SCAN = REPO.parent / "shared/data/semantickitti-mini/sequences/08/velodyne/000000.bin"
BASELINE_REV = "5a511fb"  # the release before the lean student (issue 16)


def load_batch(path: Path, voxel_size: float) -> dict:
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    coord = torch.from_numpy(points[:, :3].copy())
    grid = torch.floor((coord - coord.min(0).values) / voxel_size).int()
    return {"coord": coord, "feat": torch.from_numpy(points.copy()), "grid_coord": grid,
            "offset": torch.tensor([len(points)])}


def load_previous_model_class(rev: str):
    """SPVCNN as it was at git revision ``rev`` (its sparse.py and model.py), or None outside a git checkout."""
    sources = {}
    for name in ("sparse", "model"):
        result = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:partlift_ros/student/{name}.py"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(f"no previous release to compare with: git show {rev} failed ({result.stderr.strip()})")
            return None
        sources[name] = result.stdout
    sources["model"] = sources["model"].replace("from partlift_ros.student.sparse import",
                                                "from previous_student_sparse import")
    for name in ("sparse", "model"):
        module = types.ModuleType(f"previous_student_{name}")
        module.__file__ = f"<{rev}:partlift_ros/student/{name}.py>"
        sys.modules[module.__name__] = module  # dataclasses look their module up here
        exec(compile(sources[name], module.__file__, "exec"), module.__dict__)
    return sys.modules["previous_student_model"].SPVCNN


def random_weights(model: SPVCNN, seed: int = 0) -> dict:
    """The seeded initialisation plus non-trivial BatchNorm statistics (so folding them is exercised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.state_dict()


def int8_round_trip(model: SPVCNN, model_args: dict) -> SPVCNN:
    """``model`` after the trip through student.pt's storage (int8 sparse-conv weights, checkpoint.py)."""
    names = [f"class{c}" for c in range(model.num_classes)]
    state = student_state(model, model_args, names, model.class_embeddings.numpy(), TrainConfig())
    return model_from_checkpoint(state).eval()


def timed(fn, batch: dict) -> tuple[float, float, torch.Tensor]:
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        logits = fn(batch)
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3, logits.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=Path, default=DEFAULT_SCAN)
    parser.add_argument("--checkpoint", type=Path, help="a student.pt / last.pt (default: seeded random weights)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--voxel-size", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision of the previous release")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--spconv", action="store_true", help="also time the spconv CPU backend")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.checkpoint:
        ckpt = read_checkpoint(args.checkpoint)
        model = model_from_checkpoint(ckpt).eval()
        state, emb, voxel = model_weights(ckpt), model.class_embeddings, model.voxel_size
        model_args = {k: v for k, v in ckpt["model_args"].items() if k != "backend"}
    else:
        torch.manual_seed(0)
        emb = torch.randn(args.classes, 512)
        model_args = {"in_channels": 4, "width": args.width, "voxel_size": args.voxel_size}
        model = SPVCNN(class_embeddings=emb, backend="torch", **model_args).eval()
        state, voxel = random_weights(model), args.voxel_size
    batch = load_batch(args.scan, voxel)
    n_voxels = torch.unique(batch["grid_coord"], dim=0).shape[0]
    print(f"scan {args.scan}: {len(batch['coord'])} points, {n_voxels} voxels at {voxel} m; width "
          f"{model_args['width']}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{'weights of ' + str(args.checkpoint) if args.checkpoint else 'seeded random weights'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print("the machine is shared with other jobs: compare the ratios, not the absolute times")

    variants = {}
    previous_cls = load_previous_model_class(args.baseline)
    if previous_cls is not None:
        previous = previous_cls(4, emb, backend="torch", **{k: v for k, v in model_args.items() if k != "in_channels"})
        previous.load_state_dict(state)
        variants[f"previous ({args.baseline})"] = lambda b, m=previous.eval(): m(b)["logits"]
    variants["fp32"] = lambda b: model(b, embeddings=False)["logits"]
    if not args.no_bf16:
        def bf16(b):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(b, embeddings=False)["logits"]
        variants["bf16"] = bf16
    if args.spconv and spconv_available():
        twin = SPVCNN(class_embeddings=emb, backend="spconv", **model_args)
        twin.load_state_dict(state)
        variants["spconv"] = lambda b, m=twin.eval(): m(b, embeddings=False)["logits"]

    times = {name: [] for name in variants}
    logits = {}
    for name, fn in variants.items():  # warm-up: allocator, lazy imports
        logits[name] = timed(fn, batch)[2]
    for _ in range(args.repeats):
        for name, fn in variants.items():
            wall, cpu, _ = timed(fn, batch)
            times[name].append((wall, cpu))

    names = list(variants)
    reference = names[0]
    base_ms = statistics.median(t[0] for t in times[reference])
    for name in names:
        wall = statistics.median(t[0] for t in times[name])
        cpu = statistics.median(t[1] for t in times[name])
        line = (f"{name:>20}: {wall:8.0f} ms/scan wall (runs {', '.join(f'{t[0]:.0f}' for t in times[name])}), "
                f"{cpu:8.0f} ms CPU, {base_ms / wall:5.2f}x vs {reference}")
        if name != reference:
            diff = (logits[name] - logits[reference]).abs().max().item()
            agree = (logits[name].argmax(1) == logits[reference].argmax(1)).float().mean().item()
            line += f", max |logit diff| {diff:.2e}, argmax agreement {agree:.5f}"
        print(line)

    quantised = int8_round_trip(model, model_args)
    with torch.inference_mode():
        q_logits = quantised(batch, embeddings=False)["logits"]
    agree = (q_logits.argmax(1) == logits["fp32"].argmax(1)).float().mean().item()
    print(f"int8-stored weights (student.pt) vs float32: argmax agreement {agree:.5f}, "
          f"max |logit diff| {(q_logits - logits['fp32']).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
