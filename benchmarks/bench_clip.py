"""CLIP crop-labelling throughput with a full-size ViT-B/32 (random weights cost the same as real ones).

    python benchmarks/bench_clip.py [--crops 64] [--device cpu] [--threads N]

Prints crops/s of ``encode_crops`` at batch sizes 1, 8 and 32, and the preprocessing speed of the
torch path against transformers' ``CLIPImageProcessor`` (PIL backend) on the same crops.
Crops come from a real SemanticKITTI image when ../shared is present, else from a synthetic one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.clip_labeling import ClipLabeler, crop_images  # noqa: E402
from partlift_ros.config import SEMANTIC_KITTI_CLASSES, ClipConfig  # noqa: E402

SHARED = REPO.parent / "shared"


def source_image() -> tuple[np.ndarray, str]:
    path = SHARED / "data" / "semantickitti-mini" / "sequences" / "08" / "image_2" / "000000.png"
    if path.is_file():
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB")), str(path)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:370, 0:1226]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.normal(0, 15, (370, 1226, 3))
    return np.clip(img, 0, 255).astype(np.uint8), "synthetic 1226x370"


def random_boxes(n: int, w: int, h: int, seed: int = 0) -> np.ndarray:
    """Crop boxes 30-300 px wide, 30-200 px high: the size range of instance crops in KITTI."""
    rng = np.random.default_rng(seed)
    bw = rng.integers(30, 300, n)
    bh = rng.integers(30, 200, n)
    u0 = rng.integers(0, w - bw)
    v0 = rng.integers(0, h - bh)
    return np.column_stack([u0, v0, u0 + bw, v0 + bh]).astype(np.int32)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--processor", default=str(SHARED / "models" / "clip-tokenizer"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import CLIPConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    image, origin = source_image()
    crops = crop_images(image, random_boxes(args.crops, image.shape[1], image.shape[0]), np.ones(args.crops, bool))

    t0 = time.perf_counter()
    labeler = ClipLabeler.from_config(CLIPConfig(), args.processor, ClipConfig(device=args.device))
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in labeler.model.parameters()) / 1e6
    print(f"model: ViT-B/32 from CLIPConfig() defaults, {params:.0f} M params, random init {build_s:.1f} s, "
          f"device {labeler.device} ({labeler.dtype}), torch threads {torch.get_num_threads()}")
    print(f"crops: {len(crops)} from {origin}, sizes 30-300 x 30-200 px")

    # Preprocessing alone: the torch path vs CLIPImageProcessor (PIL backend), same crops, same run.
    # Cheap, so always best of >= 3 runs after a warm-up run (thread pools, first-call allocations).
    ours = best_time(lambda: labeler.preprocess(crops, labeler.device, labeler.dtype), max(args.repeats, 3) + 1)
    ref = best_time(lambda: labeler.image_processor(crops, return_tensors="pt")["pixel_values"],
                    max(args.repeats, 3) + 1)
    diff = (labeler.preprocess(crops, torch.device("cpu"), torch.float32)
            - labeler.image_processor(crops, return_tensors="pt")["pixel_values"]).abs()
    print(f"preprocess torch : {len(crops) / ours:9.1f} crops/s")
    print(f"preprocess PIL   : {len(crops) / ref:9.1f} crops/s  (CLIPImageProcessor)")
    print(f"preprocess ratio : {ref / ours:9.2f}x faster; max |diff| {diff.max():.4f}, mean {diff.mean():.2e}")

    t0 = time.perf_counter()
    labeler.text_embeddings(SEMANTIC_KITTI_CLASSES)
    text_s = time.perf_counter() - t0
    print(f"text embeddings  : {len(SEMANTIC_KITTI_CLASSES)} classes x {len(labeler.cfg.templates)} templates "
          f"in {text_s * 1e3:.0f} ms (cached afterwards)")

    labeler.encode_crops(crops[:2])  # warm-up (allocator, kernels)
    base = None
    for bs in (1, 8, 32):
        labeler.cfg.batch_size = bs
        sec = best_time(lambda: labeler.encode_crops(crops), args.repeats)
        rate = len(crops) / sec
        base = base or rate
        print(f"encode_crops bs={bs:<3d}: {rate:9.1f} crops/s  ({sec / len(crops) * 1e3:6.1f} ms/crop, "
              f"{rate / base:4.2f}x bs=1)")


if __name__ == "__main__":
    main()
