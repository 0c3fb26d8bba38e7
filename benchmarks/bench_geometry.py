"""Geometry stages on the real SemanticKITTI frames: superpoint quality (instance ceiling) and speed, per sequence.

    python benchmarks/bench_geometry.py [--root ../shared/data/semantickitti-mini] [--frames N] [--repeat 3]
                                        [--previous 93779bd]

Sequence 00 is where the defaults are tuned, sequence 08 is held out: every figure is printed per sequence (and
pooled). Per frame and per sequence: instance-ceiling mIoU on front-view points (every superpoint takes its majority
GT class, so this measures the geometry alone) for the supervoxel method, for the previous release (the package as
of git ``--previous``, imported beside this one and run in the same pass), for the method without its geometric cues
(no kerb cut or kerb step, no plane/line shape terms, no scan roughness or rough cut, no depth-jump cut or boundary
term), for the method without only its range-image depth-jump cut and boundary term and for the naive baseline
(RANSAC ground + DBSCAN eps 0.5 m), superpoints per frame, and the time of the geometry stages (projection +
superpixels and ground image regions + superpoints + visibility): CPU time (process time) beside wall time, best of
``--repeat`` passes per frame, the previous release's in the same passes, and CPU ms per 10k points in view (the
cost must grow no faster than the points); then ``LabelPipeline.geometry`` as the labeller runs it, with
``geometry_threads`` 2 (the default: the image is segmented beside the scan cues) and 1, same passes. Then sklearn DBSCAN on the full scan, superpixel method timings and
scatter-min (torch vs numpy) timings.

To tell the loss of the merge from the loss of the initial pieces it also reports two diagnostics
that use the ground truth (never part of the method): the ceiling of the unmerged initial pieces, and
an oracle merge of those pieces down to the same budget (neighbouring pieces joined greedily, the pair
that loses the fewest majority-class points first).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from partlift_ros.calibration import parse_kitti_calib, project_points
from partlift_ros.config import SEMANTIC_KITTI_CLASSES, ClusteringConfig, PipelineConfig, VisibilityConfig
from partlift_ros.image_regions import graph_regions, segment_image
from partlift_ros.pipeline import LabelPipeline
from partlift_ros.metrics import ConfusionAccumulator, confusion_matrix, instance_ceiling, mean_iou
from partlift_ros.semantickitti import read_train_ids
from partlift_ros.superpoints import segment_superpoints
from partlift_ros.superpoints.budget import superpoint_budget
from partlift_ros.superpoints.merge import candidate_pairs, sum_by, unique_pairs
from partlift_ros.superpoints.pieces import relabel_contiguous
from partlift_ros.superpoints.scan import scan_neighbours
from partlift_ros.testing.previous import load_previous_release
from partlift_ros.types import CameraView, Frame
from partlift_ros.visibility import compute_superpixels, superpixel_min_depth, visible_mask

C = len(SEMANTIC_KITTI_CLASSES)


def frames(root: Path, limit: int | None):
    for seq_dir in sorted((root / "sequences").iterdir()):
        calib = parse_kitti_calib(seq_dir / "calib.txt")
        for i, scan in enumerate(sorted((seq_dir / "velodyne").glob("*.bin"))):
            if limit is not None and i >= limit:
                break
            points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
            labels = read_train_ids(seq_dir / "labels" / f"{scan.stem}.label", len(points))
            image = cv2.cvtColor(cv2.imread(str(seq_dir / "image_2" / f"{scan.stem}.png")), cv2.COLOR_BGR2RGB)
            yield seq_dir.name, f"{seq_dir.name}/{scan.stem}", points, labels, image, calib


def oracle_merge(
    piece: np.ndarray, gt: np.ndarray, pairs: np.ndarray, xyz: np.ndarray, target: int, min_size: int
) -> np.ndarray:
    """GT-guided merge of pieces (ids 0..P-1, IGNORE allowed) to at most ``target`` pieces of >= ``min_size``
    points (smaller ones do not count, as in the real merge): rounds of mutual cheapest pairs among scan
    neighbours and nearest centroids, cost = majority-class points lost (ties: nearer centroids first)."""
    out = np.full(piece.shape[0], -1, dtype=np.int64)
    keep = piece >= 0
    touching = piece[pairs].astype(np.int64)
    touching = touching[np.all(touching >= 0, axis=1)]
    piece, gt, xyz = piece[keep].astype(np.int64), gt[keep], xyz[keep]
    num = int(piece.max()) + 1
    voting = (gt >= 0) & (gt < C)
    hist = np.bincount(piece[voting] * C + gt[voting], minlength=num * C).reshape(num, C).astype(np.float64)
    count = np.bincount(piece, minlength=num).astype(np.float64)
    s1 = sum_by(piece, xyz, num)
    pairs = unique_pairs(np.r_[touching, candidate_pairs(s1 / count[:, None], 6)], num)
    merged = np.arange(num)
    while (excess := int((count >= min_size).sum()) - target) > 0 and pairs.shape[0]:
        a, b = pairs[:, 0], pairs[:, 1]
        cost = hist[a].max(1) + hist[b].max(1) - (hist[a] + hist[b]).max(1)
        cost += 1e-3 * np.linalg.norm(s1[a] / count[a, None] - s1[b] / count[b, None], axis=1)
        src, dst, both = np.r_[a, b], np.r_[b, a], np.r_[cost, cost]
        order = np.lexsort((both, src))
        src, dst, both = src[order], dst[order], both[order]
        first = np.r_[True, src[1:] != src[:-1]]
        best, best_cost = np.full(count.shape[0], -1), np.full(count.shape[0], np.inf)
        best[src[first]], best_cost[src[first]] = dst[first], both[first]
        has = np.flatnonzero(best >= 0)
        winners = has[(best[best[has]] == has) & (has < best[has])]
        winners = winners[np.argsort(best_cost[winners], kind="stable")[:excess]]
        new_id = np.arange(count.shape[0])
        new_id[best[winners]] = winners
        _, new_id = np.unique(new_id, return_inverse=True)
        m = int(new_id.max()) + 1
        count, hist, s1 = np.bincount(new_id, count, m), sum_by(new_id, hist, m), sum_by(new_id, s1, m)
        merged, pairs = new_id[merged], unique_pairs(new_id[pairs], m)
    out[keep] = merged[piece]
    return out


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


class Clock:
    """CPU (process time) and wall time since the last lap, in ms."""

    def __init__(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def lap(self) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = ((cpu - self.cpu) * 1e3, (wall - self.wall) * 1e3)
        self.cpu, self.wall = cpu, wall
        return out


STAGES = ("projection", "superpixels", "superpoints", "visibility", "total", "previous_superpoints", "previous_total",
          "pipeline_1_thread", "pipeline_2_threads")


def timing_pass(data, sv_cfg, vis_cfg, previous, previous_cfg) -> tuple[dict, list]:
    """Per frame: the geometry stages one after the other, the previous release's superpoints on the same
    projection and superpixels, and ``LabelPipeline.geometry`` itself with ``geometry_threads`` 1 and 2 (2, the
    default, segments the image beside the scan cues), with no other library work in between (OpenMP threads that
    sklearn's DBSCAN leaves spinning slowed the next stages by up to ~15 ms). Returns {stage: [(cpu, wall)]} and
    the per-frame outputs."""
    times, outputs = defaultdict(list), []
    pipelines = {key: LabelPipeline(PipelineConfig(clustering=sv_cfg, visibility=vis_cfg, geometry_threads=threads))
                 for key, threads in (("pipeline_1_thread", 1), ("pipeline_2_threads", 2))}
    for seq, name, points, labels, image, calib in data:
        frame = Frame(points, [CameraView(image, calib.K, calib.T_cam_lidar)])
        clock = Clock()
        piped = {}
        for key, pipeline in pipelines.items():
            piped[key] = pipeline.geometry(frame).instance
            times[key].append(clock.lap())
        if any(not np.array_equal(instance, piped["pipeline_1_thread"]) for instance in piped.values()):
            raise SystemExit(f"{name}: the geometry threads changed the superpoints")
        proj = project_points(points[:, :3], calib.K, calib.T_cam_lidar, (image.shape[1], image.shape[0]))
        t_proj = clock.lap()
        superpixels, regions = segment_image(image, proj, vis_cfg, sv_cfg)  # SEEDS + the ground's graph regions
        t_spx = clock.lap()
        sp = segment_superpoints(points, sv_cfg, proj.in_image, [(proj, superpixels)], [regions])
        t_sp = clock.lap()
        visible_mask(proj, superpixels, vis_cfg.depth_threshold)
        t_vis = clock.lap()
        prev = previous.segment_superpoints(points, previous_cfg, proj.in_image, [(proj, superpixels)], [regions])
        t_prev = clock.lap()
        shared = [sum(x) for x in zip(t_proj, t_spx, t_vis)]
        rows = (t_proj, t_spx, t_sp, t_vis, [a + b for a, b in zip(shared, t_sp)], t_prev,
                [a + b for a, b in zip(shared, t_prev)])
        for key, value in zip(STAGES, rows):
            times[key].append(tuple(value))
        outputs.append((proj, superpixels, regions, sp, prev))
    return times, outputs


def median_ms(values) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    return float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=here.parent / "shared" / "data" / "semantickitti-mini")
    ap.add_argument("--frames", type=int, default=None, help="frames per sequence (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="timing passes; each frame keeps its fastest")
    ap.add_argument("--previous", default="93779bd", help="git revision of the previous release")
    args = ap.parse_args()
    import torch
    from sklearn.cluster import DBSCAN

    try:
        from skimage.segmentation import felzenszwalb
    except ImportError:  # optional (the "slic" extra): its timing is reported as nan
        felzenszwalb = None

    load_previous_release(here, args.previous)
    previous = importlib.import_module("partlift_ros_previous.clustering")
    previous_cfg = importlib.import_module("partlift_ros_previous.config").ClusteringConfig()
    sv_cfg, vis_cfg = ClusteringConfig(), VisibilityConfig()
    base_cfg = ClusteringConfig(method="dbscan", eps=0.5, remove_ground=True)
    plain_cfg = dataclasses.replace(
        sv_cfg, plane_weight=0.0, line_weight=0.0, roughness_weight=0.0, kerb_height=0.0, kerb_step_weight=0.0,
        boundary_weight=0.0, jump_cut=0.0, rough_cut=0.0,
    )
    no_boundary_cfg = dataclasses.replace(sv_cfg, boundary_weight=0.0, jump_cut=0.0)
    # No budget and no size floor: the initial pieces themselves, single points included.
    unmerged_cfg = dataclasses.replace(sv_cfg, max_superpoints=np.iinfo(np.int32).max, min_points=1)
    methods = ("supervoxel", "previous", "no boundary", "no cues", "baseline", "pieces", "oracle")
    acc = {seq: {m: ConfusionAccumulator(C) for m in methods} for seq in ("00", "08", "all")}
    counts = defaultdict(list)
    sp_times, scatter = {"seeds": [], "slico": [], "slic": []}, {"torch": [], "numpy": []}
    region_times = {"opencv": [], "scikit-image": []}
    data = list(frames(args.root, args.frames))
    segment_superpoints(data[0][2], sv_cfg)  # warm-up: imports stay out of the first frame's time

    best, outputs = None, None
    for _ in range(max(1, args.repeat)):
        times, outputs = timing_pass(data, sv_cfg, vis_cfg, previous, previous_cfg)
        best = times if best is None else {k: [tuple(min(a, b) for a, b in zip(x, y)) for x, y in zip(best[k], v)]
                                           for k, v in times.items()}
    full_dbscan = []
    for *_, points, _, _, _ in data:
        clock = Clock()
        DBSCAN(eps=0.5, min_samples=5).fit_predict(points[:, :3])
        full_dbscan.append(clock.lap())

    print("Machine shared with other jobs while this ran: times are CPU (process time) and wall ms, best of "
          f"{args.repeat} passes per frame; compare them as same-run ratios.")
    print(f"{'frame':10s} {'sv':>5s} {'prev':>5s} {'base':>5s} {'#sp':>4s} {'budget':>6s} {'in view':>7s} "
          f"{'geom cpu':>8s} {'geom wall':>9s} {'sp cpu':>6s} {'sp/10k':>6s} {'prev sp cpu':>11s}")
    per10k = defaultdict(list)
    for k, ((seq, name, points, labels, image, calib), (proj, superpixels, regions, sp, prev)) in enumerate(
        zip(data, outputs)
    ):
        front = proj.in_image
        gt = labels[front]
        views = [(proj, superpixels)]
        preds = {
            "supervoxel": instance_ceiling(sp[front], gt, C),
            "previous": instance_ceiling(prev[front], gt, C),
            "baseline": instance_ceiling(segment_superpoints(points, base_cfg, front)[front], gt, C),
            "no cues": instance_ceiling(segment_superpoints(points, plain_cfg, front, views, [regions])[front], gt, C),
            "no boundary": instance_ceiling(
                segment_superpoints(points, no_boundary_cfg, front, views, [regions])[front], gt, C),
        }
        pieces = segment_superpoints(points, unmerged_cfg, front, views, [regions])[front]
        budget = superpoint_budget(points[front, :3], sv_cfg)
        oracle = oracle_merge(pieces, gt, scan_neighbours(points, np.flatnonzero(front)),
                              points[front, :3].astype(np.float64), budget, sv_cfg.min_points)
        preds["pieces"] = instance_ceiling(pieces, gt, C)
        preds["oracle"] = instance_ceiling(relabel_contiguous(oracle, sv_cfg.min_points), gt, C)
        for group in (seq, "all"):
            for m, pred in preds.items():
                acc[group][m].add(pred, gt)
            counts[group, "sp"].append(int(sp.max()) + 1)
            counts[group, "pieces"].append(int(pieces.max()) + 1)
            per10k[group].append(best["superpoints"][k][0] / front.sum() * 1e4)
        m_sv, m_prev, m_base = (mean_iou(confusion_matrix(preds[m], gt, C)) for m in ("supervoxel", "previous", "baseline"))
        print(f"{name:10s} {100 * m_sv:5.1f} {100 * m_prev:5.1f} {100 * m_base:5.1f} {int(sp.max()) + 1:4d} "
              f"{budget:6d} {int(front.sum()):7d} {best['total'][k][0]:8.1f} {best['total'][k][1]:9.1f} "
              f"{best['superpoints'][k][0]:6.1f} {per10k[seq][-1]:6.1f} {best['previous_superpoints'][k][0]:11.1f}")

        if k % 5 == 0:  # superpixel methods and scatter-min on a subset (SLIC is slow)
            for method in sp_times:
                try:
                    t = time.perf_counter()
                    compute_superpixels(image, VisibilityConfig(superpixel_method=method))
                    sp_times[method].append(ms(t))
                except Exception as exc:  # a missing optional library: report and go on
                    sp_times[method].append(float("nan"))
                    print(f"  {method}: {exc}")
            # Graph image regions of the ground cut: OpenCV (used) vs scikit-image, same scale and rows.
            top = int(proj.pixels[front, 1].min())
            t = time.perf_counter()
            graph_regions(image, sv_cfg.ground_region_scale, sv_cfg.ground_region_sigma, sv_cfg.ground_region_k,
                          sv_cfg.ground_region_min_size, top)
            region_times["opencv"].append(ms(t))
            t = time.perf_counter()
            if felzenszwalb is not None:
                small = cv2.resize(image[top:], None, fx=sv_cfg.ground_region_scale, fy=sv_cfg.ground_region_scale,
                                   interpolation=cv2.INTER_AREA)
                felzenszwalb(small, scale=sv_cfg.ground_region_k, sigma=sv_cfg.ground_region_sigma,
                             min_size=sv_cfg.ground_region_min_size)
            region_times["scikit-image"].append(ms(t) if felzenszwalb is not None else float("nan"))
            px, d = proj.pixels, proj.depth
            t = time.perf_counter()
            superpixel_min_depth(px, d, front, superpixels)  # numpy minimum.at
            scatter["numpy"].append(ms(t))
            t = time.perf_counter()
            out = torch.full((int(superpixels.max()) + 1,), float("inf"))
            index = torch.from_numpy(superpixels[px[front, 1], px[front, 0]].astype(np.int64))
            out.scatter_reduce_(0, index, torch.from_numpy(d[front]), reduce="amin")
            scatter["torch"].append(ms(t))

    seqs = [s for s in ("00", "08") if counts[s, "sp"]]
    rows = {s: [k for k, item in enumerate(data) if item[0] == s] for s in seqs}
    rows["all"] = list(range(len(data)))
    slowest = max(seqs, key=lambda s: median_ms([best["pipeline_2_threads"][k] for k in rows[s]])[1])
    for group in seqs + ["all"]:
        a = acc[group]
        tuned = {"00": "tuned on (the defaults were historically tuned on all 35 frames of 00 + 08)",
                 "08": "held out", "all": "pooled"}[group]
        print(f"\n== sequence {group} ({len(rows[group])} frames, {tuned}; confusions summed over frames) ==")
        print(f"instance ceiling mIoU, front view: supervoxel {100 * a['supervoxel'].miou():.1f} | previous release "
              f"({args.previous}) {100 * a['previous'].miou():.1f} | RANSAC+DBSCAN(0.5) {100 * a['baseline'].miou():.1f}")
        print(f"  without the depth-jump cut and boundary term {100 * a['no boundary'].miou():.1f}; without kerb / shape "
              f"/ roughness / boundary cues {100 * a['no cues'].miou():.1f}")
        print(f"  diagnostics with GT: unmerged initial pieces {100 * a['pieces'].miou():.1f} (median "
              f"{np.median(counts[group, 'pieces']):.0f} pieces) | oracle merge to the same budget "
              f"{100 * a['oracle'].miou():.1f}")
        print(f"  superpoints per frame: median {np.median(counts[group, 'sp']):.0f}, max {np.max(counts[group, 'sp'])}")
        for label in ("supervoxel", "previous", "baseline"):
            iou = a[label].iou()
            print(f"  {label:10s} " + " ".join(f"{n}:{100 * v:.0f}" for n, v in zip(SEMANTIC_KITTI_CLASSES, iou)
                                             if not np.isnan(v)))
        print("  geometry stages, median per frame (best of the passes): CPU ms / wall ms")
        for key in STAGES:
            cpu, wall = median_ms([best[key][k] for k in rows[group]])
            print(f"    {key:22s} {cpu:7.1f} / {wall:7.1f}")
        cpu, _ = median_ms([best["total"][k] for k in rows[group]])
        prev_cpu, _ = median_ms([best["previous_total"][k] for k in rows[group]])
        print(f"  geometry vs the previous release, same passes: {cpu / prev_cpu:.2f}x CPU; superpoints CPU per 10k "
              f"points in view: median {np.median(per10k[group]):.1f} ms, max {np.max(per10k[group]):.1f} ms")
        one = median_ms([best["pipeline_1_thread"][k] for k in rows[group]])[1]
        two = median_ms([best["pipeline_2_threads"][k] for k in rows[group]])[1]
        prev_wall = median_ms([best["previous_total"][k] for k in rows[group]])[1]
        print(f"  LabelPipeline.geometry wall ms: 2 threads (default) {two:.1f}, 1 thread {one:.1f} ({one / two:.2f}x); "
              f"previous release {prev_wall:.1f} ({prev_wall / two:.2f}x)")
    print(f"\nslowest sequence by median geometry wall time (LabelPipeline.geometry, default threads): {slowest}")
    dbscan_cpu, _ = median_ms(full_dbscan)
    total_cpu, _ = median_ms(best["total"])
    print(f"geometry total / sklearn DBSCAN on the full scan (CPU): {total_cpu / dbscan_cpu:.2f}x "
          f"({total_cpu:.1f} vs {dbscan_cpu:.1f} ms)")
    print("superpixels ms, median: " + ", ".join(f"{k} {np.nanmedian(v) if np.isfinite(v).any() else float('nan'):.1f}"
                                             for k, v in sp_times.items()))
    print("ground image regions (graph segmentation) ms, median: " + ", ".join(
        f"{k} {np.median(v):.1f}" for k, v in region_times.items())
        + " (OpenCV used; part of the superpixels stage)")
    print(f"per-superpixel min depth ms, median: numpy minimum.at (used) {np.median(scatter['numpy']):.2f}, "
          f"torch scatter_reduce {np.median(scatter['torch']):.2f}")


if __name__ == "__main__":
    main()
