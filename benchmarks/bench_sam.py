"""Cost of the SAM-refined instances stage: LabelPipeline ms per frame with and without SAM.

    python benchmarks/bench_sam.py [--frames 2] [--model-type vit_b] [--device cpu] [--threads N]

Both runs use full-size random-weight models (random weights cost the same time as real ones): CLIP
ViT-B/32 from ``CLIPConfig()`` and SAM from segment_anything's registry (``--model-type``). Frames are
real SemanticKITTI frames of sequence 08 from ../shared. Affinity is off so every frame comes out at
once and the numbers are per-frame latencies. Prints per-stage times, the SAM stage split into image
encoding and box decoding, and the ratio with / without SAM.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.clip_labeling import ClipLabeler  # noqa: E402
from partlift_ros.config import PipelineConfig, apply_overrides  # noqa: E402
from partlift_ros.pipeline import LabelPipeline  # noqa: E402
from partlift_ros.sam_refine import BoxMasker, build_segment_anything  # noqa: E402
from partlift_ros.types import IGNORE  # noqa: E402

SHARED = REPO.parent / "shared"
SEQ08 = SHARED / "data" / "semantickitti-mini" / "sequences" / "08"


class TimedMasker(BoxMasker):
    """Splits the SAM stage into image encoding and box decoding."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encode_s: list[float] = []
        self.decode_s: list[float] = []
        self.boxes: list[int] = []

    def embed(self, image):
        t0 = time.perf_counter()
        out = super().embed(image)
        self.encode_s.append(time.perf_counter() - t0)
        return out

    def masks_for(self, embedding, boxes):
        t0 = time.perf_counter()
        out = super().masks_for(embedding, boxes)
        self.decode_s.append(time.perf_counter() - t0)
        self.boxes.append(len(boxes))
        return out


def run(pipe: LabelPipeline, frames) -> list:
    return [pipe.process(f)[0] for f in frames]


def mean_stages(results) -> dict[str, float]:
    keys = sorted({k for r in results for k in r.timings_ms})
    return {k: float(np.mean([r.timings_ms.get(k, 0.0) for r in results])) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--model-type", default="vit_b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--box-batch-size", type=int, default=16)
    ap.add_argument("--processor", default=str(SHARED / "models" / "clip-tokenizer"))
    args = ap.parse_args()

    import torch
    from transformers import CLIPConfig

    from partlift_ros.io.kitti import KittiSequenceReader

    if not SEQ08.is_dir():
        sys.exit(f"needs the real SemanticKITTI frames in {SEQ08}")
    if args.threads:
        torch.set_num_threads(args.threads)
    reader = KittiSequenceReader(SEQ08)
    frames = [reader.read(i) for i in reader.frame_indices[: args.frames]]

    base_cfg = apply_overrides(PipelineConfig(), {"affinity.enabled": False, "clip.device": args.device})
    sam_cfg = apply_overrides(base_cfg, {"sam.enabled": True, "sam.box_batch_size": args.box_batch_size})
    labeler = ClipLabeler.from_config(CLIPConfig(), args.processor, base_cfg.clip)
    t0 = time.perf_counter()
    sam_model = build_segment_anything(args.model_type)
    build_s = time.perf_counter() - t0
    masker = TimedMasker.from_segment_anything(sam_model, args.device, args.box_batch_size)
    params = sum(p.numel() for p in sam_model.parameters()) / 1e6
    print(f"SAM {args.model_type}: {params:.1f} M params, random init {build_s:.1f} s, device {masker.device}, "
          f"torch threads {torch.get_num_threads()}; CLIP ViT-B/32 random init")
    print(f"frames: {len(frames)} of {SEQ08} ({frames[0].camera.size[0]}x{frames[0].camera.size[1]})")

    plain = LabelPipeline(base_cfg, labeler=labeler)
    run(plain, frames[:1])  # warm-up: text embeddings, thread pools, first-call allocations
    t0 = time.perf_counter()
    without = run(plain, frames)
    without_ms = (time.perf_counter() - t0) * 1e3 / len(frames)
    t0 = time.perf_counter()
    with_sam = run(LabelPipeline(sam_cfg, labeler=labeler, sam=masker), frames)
    with_ms = (time.perf_counter() - t0) * 1e3 / len(frames)

    for name, results in (("without SAM", without), ("with SAM", with_sam)):
        stages = mean_stages(results)
        print(f"{name:12s}: " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items() if k != "total") + " (ms)")
    labelled = [int((r.label != IGNORE).sum()) for r in without]
    kept = [int((r.label != IGNORE).sum()) for r in with_sam]
    print(f"SAM stage   : encode {np.mean(masker.encode_s) * 1e3:.0f} ms/image, decode "
          f"{np.mean(masker.decode_s) * 1e3:.0f} ms for {np.mean(masker.boxes):.0f} boxes "
          f"({np.sum(masker.decode_s) / max(np.sum(masker.boxes), 1) * 1e3:.1f} ms/box)")
    print(f"labelled points: {np.mean(labelled):.0f} without, {np.mean(kept):.0f} with SAM "
          "(random SAM weights: the dropped share says nothing about real masks)")
    print(f"ms per frame: without SAM {without_ms:.0f}, with SAM {with_ms:.0f}, ratio {with_ms / without_ms:.2f}x")


if __name__ == "__main__":
    main()
