"""PointCloud2 codec speed: numpy structured views vs a per-point struct.pack/unpack baseline.

    python benchmarks/bench_codec.py [--points 120000] [--repeats 5]

Both sides encode a cloud to PointCloud2 bytes and decode it back to an (N, 4) float32 array, for
the xyzi layout (16 bytes) and the labelled layout the node publishes (32 bytes, 8 fields). The
baseline is measured in the same run; the ratio is baseline time / codec time.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from partlift_ros.io.pointcloud2 import LABELLED_DTYPE, cloud_to_points, decode_pointcloud2, encode_pointcloud2

KITTI_SCAN = Path(__file__).resolve().parents[1].parent / "shared/data/semantickitti-mini/sequences/08/velodyne/000000.bin"


def load_points(n: int) -> tuple[np.ndarray, str]:
    """A real KITTI scan tiled/cut to n points when available, else a seeded synthetic one."""
    if KITTI_SCAN.is_file():
        scan = np.fromfile(KITTI_SCAN, dtype=np.float32).reshape(-1, 4)
        return np.resize(scan, (n, 4)).astype(np.float32), f"KITTI seq08 scan 000000 ({scan.shape[0]} pts) resized"
    rng = np.random.default_rng(0)
    return rng.normal(scale=20, size=(n, 4)).astype(np.float32), "synthetic normal(0, 20)"


def as_msg(d: dict) -> SimpleNamespace:
    fields = [SimpleNamespace(name=n, offset=o, datatype=t, count=c) for n, o, t, c in d["fields"]]
    return SimpleNamespace(**{**d, "fields": fields})


def codec_xyzi(points: np.ndarray) -> np.ndarray:
    arr = np.empty(points.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    for i, name in enumerate(arr.dtype.names):
        arr[name] = points[:, i]
    return cloud_to_points(as_msg(encode_pointcloud2(arr)))


def codec_labelled(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    arr = np.zeros(points.shape[0], dtype=LABELLED_DTYPE)
    for i, name in enumerate(("x", "y", "z", "intensity")):
        arr[name] = points[:, i]
    arr["label"] = labels
    cloud = decode_pointcloud2(as_msg(encode_pointcloud2(arr)))
    return np.stack([cloud["x"], cloud["y"], cloud["z"], cloud["intensity"]], axis=1)


def baseline_xyzi(points: np.ndarray) -> np.ndarray:
    data = b"".join(struct.pack("<ffff", *p) for p in points.tolist())
    out = [struct.unpack_from("<ffff", data, 16 * i) for i in range(len(data) // 16)]
    return np.asarray(out, dtype=np.float32)


def baseline_labelled(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    fmt = "<ffffifif"
    data = b"".join(struct.pack(fmt, *p, int(lab), 0.0, -1, 0.0) for p, lab in zip(points.tolist(), labels.tolist()))
    out = [struct.unpack_from(fmt, data, 32 * i)[:4] for i in range(len(data) // 32)]
    return np.asarray(out, dtype=np.float32)


def best_of(fn, repeats: int) -> tuple[float, np.ndarray, float]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=120_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    points, source = load_points(args.points)
    labels = (np.arange(args.points) % 20 - 1).astype(np.int32)
    print(f"cloud: {args.points} points from {source}; best of {args.repeats} (median in brackets)")
    for name, fast, slow in [
        ("xyzi (16 B/pt)", lambda: codec_xyzi(points), lambda: baseline_xyzi(points)),
        ("labelled (32 B/pt)", lambda: codec_labelled(points, labels), lambda: baseline_labelled(points, labels)),
    ]:
        t_fast, out_fast, med_fast = best_of(fast, args.repeats)
        t_slow, out_slow, med_slow = best_of(slow, max(1, args.repeats // 2))
        np.testing.assert_array_equal(out_fast, points)
        np.testing.assert_array_equal(out_slow, points)
        print(f"{name:20s} codec {t_fast * 1e3:8.2f} ms ({med_fast * 1e3:.2f})   "
              f"struct baseline {t_slow * 1e3:9.1f} ms ({med_slow * 1e3:.1f})   speed-up x{t_slow / t_fast:7.1f}")


if __name__ == "__main__":
    main()
