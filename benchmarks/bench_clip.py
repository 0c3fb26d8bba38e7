"""CLIP crop encoding on every backend beside fp32 torch, with the machine's matmul ceilings, in one run.

    python benchmarks/bench_clip.py [--crops 64] [--rounds 3] [--batch 32] [--threads N] [--device cpu]

Full-size ViT-B/32 (transformers' CLIPConfig() defaults) with random weights (they cost the same time as
real ones), crops from a real SemanticKITTI image (../shared, else the frame shipped with the package).
Prints, all measured in this run:
- the fp32 and bf16 GFLOPS of a large torch matmul and what they allow for this model (crops/s ceiling);
- the preprocessing speed of the torch path against transformers' CLIPImageProcessor;
- per backend (clip.backend / clip.precision): export time, crops/s (best of --rounds, backends
  interleaved so a busy machine slows all alike), the ratio to fp32 torch, the share of the ceiling, and
  the fidelity to fp32 torch: worst and median cosine, and agreement of the argmax class against the 19
  SemanticKITTI class text embeddings (real tokenizer, the model's logit scale) on all crops and on the
  decided ones (partlift_ros/testing/clip_fidelity.py), with the fp32 top-1 margins;
- what clip.backend=auto picks here, and crops/s of that choice at batch 1, 8 and 32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.clip_export import DEMO_IMAGE, MIN_COSINE, kitti_crop_boxes  # noqa: E402
from partlift_ros.clip_labeling import ClipLabeler, ClipProcessor  # noqa: E402
from partlift_ros.config import SEMANTIC_KITTI_CLASSES, ClipConfig  # noqa: E402
from partlift_ros.testing.clip_fidelity import JITTER, decided_crops, fidelity, passes, shifted_crops  # noqa: E402

SHARED = REPO.parent / "shared"
KITTI_IMAGES = SHARED / "data" / "semantickitti-mini" / "sequences" / "08" / "image_2"
BACKENDS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
            ("openvino", "fp32"), ("openvino", "bf16")]


def source_images() -> tuple[list[np.ndarray], str]:
    from PIL import Image

    paths = [p for p in (KITTI_IMAGES / "000000.png", KITTI_IMAGES / "000005.png") if p.is_file()] or [DEMO_IMAGE]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths], ", ".join(str(p) for p in paths)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(dtype, seconds: float = 2.5) -> tuple[float, int]:
    """GFLOPS (2 n^3 per product) of the largest square matmul up to 2048 whose product takes < ``seconds``."""
    import torch

    n = 256
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        t = best_time(lambda: a @ b, 3)
        if n >= 2048 or t * 8 > seconds:  # the next size costs 8x
            return 2 * n ** 3 / t / 1e9, n
        n *= 2


def vision_gflop_per_crop(vision_config, projection_dim: int) -> float:
    """Multiply-adds x 2 of the vision tower for one crop (patch embedding, 12 blocks, projection)."""
    d, m, layers = vision_config.hidden_size, vision_config.intermediate_size, vision_config.num_hidden_layers
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    tokens = patches + 1
    patch_embed = patches * 3 * vision_config.patch_size ** 2 * d
    block = tokens * (4 * d * d + 2 * d * m) + 2 * tokens * tokens * d
    return 2 * (patch_embed + layers * block + d * projection_dim) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime / OpenVINO threads (0 = torch default)")
    ap.add_argument("--processor", default=str(SHARED / "models" / "clip-tokenizer"))
    args = ap.parse_args()

    import torch
    from transformers import CLIPConfig, CLIPModel

    from partlift_ros.clip_backends import installed, native_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"native bf16 {native_bf16()}, threads {torch.get_num_threads()}, load average at start "
          f"{os.getloadavg()[0]:.1f} (the machine is shared: compare ratios, not absolute numbers)")

    images, origin = source_images()
    per_image = -(-args.crops // len(images))
    boxes = [kitti_crop_boxes(per_image, im.shape[1], im.shape[0], seed=i) for i, im in enumerate(images, 1)]
    crops = shifted_crops(images, boxes)
    clip_cfg = CLIPConfig()
    gflop = vision_gflop_per_crop(clip_cfg.vision_config, clip_cfg.projection_dim)
    fp32_gflops, n32 = matmul_gflops(torch.float32)
    bf16_gflops, n16 = matmul_gflops(torch.bfloat16)
    print(f"matmul fp32 {fp32_gflops:7.1f} GFLOPS (n={n32}) -> ceiling {fp32_gflops / gflop:6.1f} crops/s")
    print(f"matmul bf16 {bf16_gflops:7.1f} GFLOPS (n={n16}) -> ceiling {bf16_gflops / gflop:6.1f} crops/s"
          f"  (ViT-B/32 vision tower: {gflop:.2f} GFLOP per crop, 2 per multiply-add)")

    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(clip_cfg).eval()
    processor = ClipProcessor.load(args.processor)
    print(f"model: ViT-B/32 from CLIPConfig() defaults, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M "
          f"params, random init {time.perf_counter() - t0:.1f} s; crops: {len(crops)} from {origin}, 30-300 x 30-200 px")

    export_dir = tempfile.mkdtemp(prefix="bench-clip-exports-")
    base = ClipLabeler(ClipConfig(device=args.device, backend="torch", precision="fp32", batch_size=args.batch,
                                  export_dir=export_dir), model, processor)
    preprocess_report(base, crops)
    t0 = time.perf_counter()
    text = base.text_embeddings(SEMANTIC_KITTI_CLASSES).numpy()
    print(f"text embeddings  : {len(SEMANTIC_KITTI_CLASSES)} classes x {len(base.cfg.templates)} templates in "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms (cached afterwards)")
    scale = float(base.model.logit_scale.detach().exp())

    labelers = {"torch fp32": base}
    for backend, precision in BACKENDS[1:]:
        name = f"{backend} {precision}"
        if not installed(backend):
            print(f"{name:17s}: skipped, not installed")
            continue
        if precision == "bf16" and not native_bf16():
            print(f"{name:17s}: skipped, no native bf16 on this CPU (emulated bf16 matmul: {bf16_gflops:.1f} GFLOPS)")
            continue
        t0 = time.perf_counter()
        labelers[name] = ClipLabeler(ClipConfig(device=args.device, backend=backend, precision=precision,
                                                batch_size=args.batch, export_dir=export_dir), model, processor)
        print(f"{name:17s}: ready in {time.perf_counter() - t0:5.1f} s (export, probe and load; cached afterwards)")

    for lab in labelers.values():
        lab.encode_crops(crops[:2])  # warm-up: allocators, kernel selection
    best = {name: float("inf") for name in labelers}
    cpu = {name: float("inf") for name in labelers}
    for _ in range(args.rounds):
        for name, lab in labelers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            lab.encode_crops(crops)
            best[name] = min(best[name], time.perf_counter() - t0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    reference = base.encode_crops(crops)
    decided = decided_crops(base.encode_crops, images, boxes, text)
    margin = fidelity(reference, reference, text, scale, decided)["margins"]
    pairwise = (text @ text.T)[~np.eye(len(text), dtype=bool)]
    print(f"\nbatch {args.batch}, best of {args.rounds} interleaved rounds. Random weights: the 19 class text "
          f"embeddings are {pairwise.min():.3f}-{pairwise.max():.3f} cosine apart, fp32 top-1 margins (logits, scale "
          f"{scale:.1f}) min {margin.min():.4f}, p10 {np.percentile(margin, 10):.4f}, median {np.median(margin):.4f}; "
          f"{decided.sum()}/{len(crops)} crops are decided (class kept when the box moves by {JITTER} px)")
    print("crops/s: wall clock; crops/cpu-s: per second of this process's CPU time (less sensitive to other jobs,\n"
          "but counts threads that spin while waiting); %ceil: wall crops/s against the matmul ceiling")
    print(f"{'backend':17s} {'crops/s':>8s} {'x fp32':>7s} {'crops/cpu-s':>11s} {'x fp32':>7s} {'%ceil':>6s} "
          f"{'cos min':>8s} {'cos med':>8s} {'argmax':>7s} {'decided':>7s}  gate: cos >= {MIN_COSINE}, "
          f"argmax kept on >= 99 % of decided crops")
    for name, lab in labelers.items():
        rate = len(crops) / best[name]
        gate = fidelity(lab.encode_crops(crops), reference, text, scale, decided)
        ceiling = None if "int8" in name else bf16_gflops if "bf16" in name else fp32_gflops
        share = f"{100 * rate * gflop / ceiling:5.0f}%" if ceiling else "     -"  # no int8 ceiling measured
        print(f"{name:17s} {rate:8.2f} {best['torch fp32'] / best[name]:6.2f}x {len(crops) / cpu[name]:11.2f} "
              f"{cpu['torch fp32'] / cpu[name]:6.2f}x {share} {gate['cos_min']:8.5f} {gate['cos_median']:8.5f} "
              f"{100 * gate['agree_all']:6.1f}% {100 * gate['agree_decided']:6.1f}%  "
              f"{'pass' if passes(gate, len(crops), MIN_COSINE) else 'FAIL'}")

    auto = ClipLabeler(ClipConfig(device=args.device, export_dir=export_dir), model, processor)
    notes = "; ".join(auto.encoder.notes) or "first choice taken"
    print(f"\nclip.backend=auto picks: {auto.backend} ({notes})")
    rates = {}
    for bs in (1, 8, 32):
        auto.cfg.batch_size = bs
        rates[bs] = len(crops) / best_time(lambda: auto.encode_crops(crops), 2)
    print("auto by batch size: " + ", ".join(f"bs={bs} {r:.2f} crops/s" for bs, r in rates.items()))
    print(f"load average at end {os.getloadavg()[0]:.1f}")


def preprocess_report(labeler: ClipLabeler, crops: list) -> None:
    """The torch preprocessing against CLIPImageProcessor (PIL backend), same crops, same run."""
    import torch

    ours = best_time(lambda: labeler.preprocess(crops, labeler.device, labeler.dtype), 4)
    ref = best_time(lambda: labeler.image_processor(crops, return_tensors="pt")["pixel_values"], 4)
    diff = (labeler.preprocess(crops, torch.device("cpu"), torch.float32)
            - labeler.image_processor(crops, return_tensors="pt")["pixel_values"]).abs()
    print(f"preprocess torch : {len(crops) / ours:9.1f} crops/s; PIL (CLIPImageProcessor) {len(crops) / ref:.1f} "
          f"crops/s; {ref / ours:.2f}x faster; max |diff| {diff.max():.4f}, mean {diff.mean():.2e}")


if __name__ == "__main__":
    main()
