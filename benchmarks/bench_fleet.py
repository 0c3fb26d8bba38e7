"""Fleet labelling throughput: one process against Ray with 1 and 2 workers and a simulated 2-node cluster.

    python benchmarks/bench_fleet.py [--frames 6] [--chunk-frames 3] [--clip tiny|full] [--skip-cluster]

Labels frames 0..F-1 of the real sequences 00 and 08 (2 sources) with the same config in every mode and
prints, beside the single-process run of the same frames in the same run: frames/s (labelling only, and
end to end with Ray's start-up), the scaling efficiency, peak memory per geometry worker and per CLIP actor,
Ray's start-up overhead (``ray.init`` and the CLIP actors loading), and whether every .label and .npz array
equals the single-process bytes. ``--clip tiny`` is the tests' small random CLIP (the geometry dominates);
``--clip full`` a random ViT-B/32 (CLIP dominates; slow on a CPU). Needs the ray extra.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from partlift_ros.config import load_config  # noqa: E402
from partlift_ros.fleet import label_fleet, plan_fleet, start_fleet  # noqa: E402
from partlift_ros.label_job import detect_source  # noqa: E402
from partlift_ros.pipeline import LabelPipeline  # noqa: E402

SHARED = REPO.parent / "shared"
SEQUENCES = SHARED / "data" / "semantickitti-mini" / "sequences"
TOKENIZER = SHARED / "models" / "clip-tokenizer"


def run_bytes(out: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/labels/*.label"))}
    for p in sorted(out.glob("*/frames/*.npz")):
        with np.load(p) as data:
            files.update({f"{p.relative_to(out)}:{k}": data[k].tobytes() for k in data.files})
    return files


def prepared(cfg, out: Path, frames: int):
    """The fleet of both sources, checked and started (CLIP loaded in this process for the metadata)."""
    fleet = plan_fleet(cfg, [SEQUENCES / "00", SEQUENCES / "08"], out, detect_source, slice(0, frames))
    pipeline = LabelPipeline(cfg)
    start_fleet(pipeline, fleet)
    return fleet, pipeline


def one_process(cfg, out: Path, frames: int) -> dict:
    fleet, pipeline = prepared(cfg, out, frames)
    t0 = time.perf_counter()
    label_fleet(pipeline, fleet)
    seconds = time.perf_counter() - t0
    return {"frames": fleet.frames_total, "seconds": seconds, "total_s": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def on_ray(cfg, out: Path, frames: int, workers: int, address: str | None, init_s: float) -> dict:
    from partlift_ros.fleet_ray import run_on_ray

    fleet, _ = prepared(cfg, out, frames)
    t0 = time.perf_counter()
    stats = run_on_ray(fleet, workers, address, 0.0, None, lambda: None)
    total = time.perf_counter() - t0
    startup = init_s + stats["startup_s"]
    return {"frames": fleet.frames_total, "seconds": total - stats["startup_s"], "total_s": total + init_s,
            "startup_s": startup, "init_s": init_s, "actors_s": stats["startup_s"],
            "peak_mb": stats["worker_peak_rss_mb"], "clip_mb": stats["clip_peak_rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=6, help="frames per sequence (0..F-1)")
    ap.add_argument("--chunk-frames", type=int, default=3)
    ap.add_argument("--clip", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--skip-cluster", action="store_true", help="skip the simulated 2-node cluster")
    args = ap.parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from partlift_ros.testing.tiny_clip import save_random_clip

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # Ray's workers
    scratch = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    try:
        config = None
        if args.clip == "full":
            from transformers import CLIPConfig

            config = CLIPConfig()
        clip_dir = save_random_clip(scratch / "clip", TOKENIZER, config)
        overrides = {"clip.model": str(clip_dir), "job.chunk_frames": args.chunk_frames}
        cfg = load_config(None, overrides)
        print(f"machine: {os.cpu_count()} CPU cores, shared with other jobs (load average at start "
              f"{os.getloadavg()[0]:.1f}); frames 0..{args.frames - 1} of sequences 00 and 08; "
              f"chunk_frames {args.chunk_frames}; CLIP {args.clip} (random weights)")
        rows = {"one process (--workers 1)": one_process(cfg, scratch / "single", args.frames)}
        reference = run_bytes(scratch / "single")
        for workers in (1, 2):
            t0 = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            init_s = time.perf_counter() - t0
            out = scratch / f"ray{workers}"
            rows[f"Ray, local, {workers} worker{'s' * (workers > 1)}"] = on_ray(cfg, out, args.frames, workers, None,
                                                                                 init_s)
            ray.shutdown()
            rows[f"Ray, local, {workers} worker{'s' * (workers > 1)}"]["same"] = run_bytes(out) == reference
        if not args.skip_cluster:
            t0 = time.perf_counter()
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            init_s = time.perf_counter() - t0
            try:
                row = on_ray(cfg, scratch / "cluster", args.frames, 2, cluster.address, init_s)
            finally:
                ray.shutdown()
                cluster.shutdown()
            row["same"] = run_bytes(scratch / "cluster") == reference
            rows["Ray, 2-node cluster (1 CPU each), 2 workers"] = row
        base = rows["one process (--workers 1)"]
        base_fps = base["frames"] / base["seconds"]
        ray1 = rows["Ray, local, 1 worker"]
        ray1_fps = ray1["frames"] / ray1["seconds"]
        print(f"\n| mode | frames/s labelling | × one process | frames/s with start-up | start-up s (init + CLIP "
              "actors) | peak MiB per worker / CLIP actor | bytes = one process |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            fps = r["frames"] / r["seconds"]
            startup = f"{r['startup_s']:.1f} ({r['init_s']:.1f} + {r['actors_s']:.1f})" if "startup_s" in r else "-"
            memory = f"{r['peak_mb']:.0f} / {r['clip_mb']:.0f}" if "clip_mb" in r else f"{r['peak_mb']:.0f} (whole process)"
            same = "-" if "same" not in r else ("yes" if r["same"] else "**NO**")
            print(f"| {name} | {fps:.3f} | {fps / base_fps:.2f} | {r['frames'] / r['total_s']:.3f} | {startup} | "
                  f"{memory} | {same} |")
        for name, r in rows.items():
            if "2 workers" in name:
                fps = r["frames"] / r["seconds"]
                print(f"scaling efficiency, {name}: {fps / (2 * ray1_fps):.2f} against Ray with 1 worker, "
                      f"{fps / (2 * base_fps):.2f} against one process")
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
