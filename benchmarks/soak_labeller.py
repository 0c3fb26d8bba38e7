"""Soak test: real SemanticKITTI frames at 10 Hz through the labeller node, in-process, for N minutes.

    python benchmarks/soak_labeller.py [--minutes 10] [--rate 10] [--clip tiny|base] [--sequence PATH]

Publishes seq08's scans, images and CameraInfo (cycled, stamped with the current time) on the node's
inputs and prints, every minute and at the end: resident memory (start/end, to spot leaks),
frames published / labelled / dropped while busy / rejected, processing-time and end-to-end latency
percentiles from the node's debug topics, and where a frame's time goes: the node's per-stage times
(decode, pairing, queue wait, the pipeline's stages, encode, markers, overlay, publish; the same
figures /diagnostics reports) and the processing time without the CLIP stage.

No CLIP weights ship with the project, so the labeller is a randomly initialised CLIP of the
chosen size with the real tokenizer: ``tiny`` (2-layer, for plumbing and memory) or ``base``
(ViT-B/32 sized, the cost of the real model).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PARTLIFT_SHARED", REPO.parent / "shared"))


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def clip_config(size: str):
    from transformers import CLIPConfig

    if size == "base":
        return CLIPConfig()  # ViT-B/32 text and vision towers, as openai/clip-vit-base-patch32
    return CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=32),
        projection_dim=32,
    )


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = np.asarray(values)
    return " ".join(f"p{q}={np.percentile(v, q):.0f}" for q in (50, 90, 99)) + f" max={v.max():.0f} (n={v.size})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=10.0, help="Hz of published frames")
    ap.add_argument("--clip", choices=("tiny", "base"), default="tiny")
    ap.add_argument("--sequence", type=Path, default=SHARED / "data/semantickitti-mini/sequences/08")
    ap.add_argument("--tokenizer", type=Path, default=SHARED / "models/clip-tokenizer")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="extra node parameter (YAML value), e.g. compute_threads=0; repeatable")
    args = ap.parse_args()

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    from std_msgs.msg import Float64

    from partlift_ros.calibration import parse_kitti_calib
    from partlift_ros.clip_labeling import ClipLabeler
    from partlift_ros.config import PipelineConfig
    from partlift_ros.io.kitti import KittiSequenceReader
    from partlift_ros.ros import conversions as conv
    from partlift_ros.ros.labeller_node import LabellerNode

    calib = parse_kitti_calib(args.sequence / "calib.txt")
    reader = KittiSequenceReader(args.sequence)
    frames = [reader.read(i) for i in range(len(reader))]
    header = conv.make_header("", conv.sec_to_stamp(0.0))
    # Messages are built once; only the stamps change per publish (the soak measures the node).
    clouds, images = [], []
    for f in frames:
        arr = np.zeros(len(f.points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
        for i, name in enumerate(arr.dtype.names):
            arr[name] = f.points[:, i]
        clouds.append(conv.pointcloud2_msg(arr, conv.make_header(f.frame_id, header.stamp)))
        images.append(conv.image_msg(f.camera.image, conv.make_header(f.camera.frame_id, header.stamp)))
    h, w = frames[0].camera.image.shape[:2]
    info = CameraInfo(width=w, height=h, distortion_model="plumb_bob")
    info.header.frame_id = frames[0].camera.frame_id
    info.k = calib.K.reshape(-1).tolist()
    info.d = [0.0] * 5

    labeler = ClipLabeler.from_config(clip_config(args.clip), args.tokenizer, PipelineConfig().clip)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=1 + os.getpid() % 200)
    import yaml

    extra = [Parameter(k, value=yaml.safe_load(v)) for k, v in (p.split("=", 1) for p in args.param)]
    node = LabellerNode(labeler=labeler, namespace="/soak", context=ctx, parameter_overrides=[
        Parameter("T_cam_lidar", value=calib.T_cam_lidar.reshape(-1).tolist()),
        Parameter("log_throttle", value=30.0), *extra,
    ])
    player = Node("player", namespace="/soak", context=ctx)
    pubs = {k: player.create_publisher(t, k, qos_profile_sensor_data)
            for k, t in (("points", PointCloud2), ("image", Image), ("camera_info", CameraInfo))}
    proc_ms: list[float] = []
    latency_ms: list[float] = []
    received = [0]
    player.create_subscription(Float64, "debug/processing_time_ms", lambda m: proc_ms.append(m.data), QoSProfile(depth=50))
    player.create_subscription(Float64, "debug/pipeline_latency_ms", lambda m: latency_ms.append(m.data),
                               QoSProfile(depth=50))
    player.create_subscription(PointCloud2, "labelled_points", lambda m: received.__setitem__(0, received[0] + 1),
                               QoSProfile(depth=5))
    published = [0]

    def tick() -> None:
        k = published[0] % len(frames)
        stamp = player.get_clock().now().to_msg()
        for msg in (info, images[k], clouds[k]):
            msg.header.stamp = stamp
        pubs["camera_info"].publish(info)
        pubs["image"].publish(images[k])
        pubs["points"].publish(clouds[k])
        published[0] += 1

    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    executor.add_node(node)
    executor.add_node(player)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    time.sleep(1.0)  # discovery
    rss_start = rss_mib()
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other processes share them)")
    print(f"soak: {args.minutes} min at {args.rate} Hz, params {args.param or 'default'}, {len(frames)} real frames of {args.sequence.name} "
          f"({frames[0].points.shape[0]} pts, {w}x{h}), CLIP {args.clip} (random init); RSS at start {rss_start:.0f} MiB")
    timer = player.create_timer(1.0 / args.rate, tick)
    t_start = time.monotonic()
    end = t_start + args.minutes * 60
    next_report = t_start + 60
    while time.monotonic() < end:
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        if time.monotonic() >= next_report:
            next_report += 60
            s = node.stats()
            print(f"  t={time.monotonic() - t_start:5.0f} s  RSS {rss_mib():.0f} MiB  published {published[0]}  "
                  f"labelled {s['labelled']}  dropped {s['dropped']}  rejected {s['rejected']}", flush=True)
    timer.cancel()
    time.sleep(2.0)  # let the last frame finish
    stats = node.stats()
    rss_end = rss_mib()
    executor.shutdown(timeout_sec=5)
    node.destroy_node()
    player.destroy_node()
    rclpy.shutdown(context=ctx)
    elapsed = time.monotonic() - t_start
    print(f"frames published {published[0]} ({published[0] / elapsed:.1f} Hz), paired {stats['paired']}, "
          f"labelled {stats['labelled']} ({stats['labelled'] / elapsed:.2f} Hz), labelled_points received {received[0]}")
    print(f"dropped while busy {stats['dropped']}, rejected {stats['rejected']} {node.rejected_counts()}")
    print(f"processing ms: {percentiles(proc_ms)}")
    print(f"processing without the clip stage ms: {percentiles(stats['processing_without_clip_ms'])}")
    print("stage p50 ms (per labelled frame; queue = waiting for the worker, not counted in processing):")
    print("  " + "  ".join(f"{k} {np.percentile(v, 50):.1f}" for k, v in stats["stages_ms"].items() if v))
    print(f"latency ms (now - cloud stamp): {percentiles(latency_ms)}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"RSS start {rss_start:.0f} MiB, end {rss_end:.0f} MiB, growth {rss_end - rss_start:+.0f} MiB")


if __name__ == "__main__":
    main()
