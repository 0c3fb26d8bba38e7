"""Geometry stages on the real SemanticKITTI frames: superpoint quality (instance ceiling) and speed.

    python benchmarks/bench_geometry.py [--root ../shared/data/semantickitti-mini] [--frames N]

Per frame and in total: instance-ceiling mIoU on front-view points (every superpoint takes its majority
GT class, so this measures the geometry alone) for the supervoxel method, for the previous release (no
rough cut), for the method without its geometric cues (no kerb cut or kerb step, no plane/line shape terms, no scan
roughness or rough cut, no depth-jump cut or boundary term), for the method without only its range-image depth-jump
cut and boundary term and for the naive baseline (RANSAC ground + DBSCAN eps 0.5 m), superpoints per frame,
and the time of the geometry stages (projection + superpixels and ground image regions + superpoints + visibility)
beside sklearn DBSCAN on the full scan measured in the same run. Then superpixel method timings and
scatter-min (torch vs numpy) timings.

To tell the loss of the merge from the loss of the initial pieces it also reports two diagnostics
that use the ground truth (never part of the method): the ceiling of the unmerged initial pieces, and
an oracle merge of those pieces down to the same budget (neighbouring pieces joined greedily, the pair
that loses the fewest majority-class points first).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np

from partlift_ros.calibration import parse_kitti_calib, project_points
from partlift_ros.clustering import _candidate_pairs, _sum_by, _unique_pairs, relabel_contiguous, scan_neighbours, segment_superpoints
from partlift_ros.config import SEMANTIC_KITTI_CLASSES, ClusteringConfig, VisibilityConfig
from partlift_ros.image_regions import graph_regions, segment_image
from partlift_ros.metrics import ConfusionAccumulator, confusion_matrix, instance_ceiling, mean_iou
from partlift_ros.semantickitti import read_label_file
from partlift_ros.visibility import compute_superpixels, superpixel_min_depth, visible_mask

C = len(SEMANTIC_KITTI_CLASSES)


def frames(root: Path, limit: int | None):
    for seq_dir in sorted((root / "sequences").iterdir()):
        calib = parse_kitti_calib(seq_dir / "calib.txt")
        for i, scan in enumerate(sorted((seq_dir / "velodyne").glob("*.bin"))):
            if limit is not None and i >= limit:
                break
            points = np.fromfile(scan, dtype=np.float32).reshape(-1, 4)
            labels = read_label_file(seq_dir / "labels" / f"{scan.stem}.label", len(points))
            image = cv2.cvtColor(cv2.imread(str(seq_dir / "image_2" / f"{scan.stem}.png")), cv2.COLOR_BGR2RGB)
            yield f"{seq_dir.name}/{scan.stem}", points, labels, image, calib


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
    s1 = _sum_by(piece, xyz, num)
    pairs = _unique_pairs(np.r_[touching, _candidate_pairs(s1 / count[:, None], 6)], num)
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
        count, hist, s1 = np.bincount(new_id, count, m), _sum_by(new_id, hist, m), _sum_by(new_id, s1, m)
        merged, pairs = new_id[merged], _unique_pairs(new_id[pairs], m)
    out[keep] = merged[piece]
    return out


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=here.parent / "shared" / "data" / "semantickitti-mini")
    ap.add_argument("--frames", type=int, default=None, help="frames per sequence (default: all)")
    args = ap.parse_args()
    import torch
    from sklearn.cluster import DBSCAN

    try:
        from skimage.segmentation import felzenszwalb
    except ImportError:  # optional (the "slic" extra): its timing is reported as nan
        felzenszwalb = None

    sv_cfg, vis_cfg = ClusteringConfig(), VisibilityConfig()
    base_cfg = ClusteringConfig(method="dbscan", eps=0.5, remove_ground=True)
    plain_cfg = dataclasses.replace(
        sv_cfg, plane_weight=0.0, line_weight=0.0, roughness_weight=0.0, kerb_height=0.0, kerb_step_weight=0.0,
        boundary_weight=0.0, jump_cut=0.0, rough_cut=0.0,
    )
    no_boundary_cfg = dataclasses.replace(sv_cfg, boundary_weight=0.0, jump_cut=0.0)
    # The previous release did not cut the objects' pieces between rough and smooth points.
    previous_cfg = dataclasses.replace(sv_cfg, rough_cut=0.0)
    acc_no_boundary, acc_pieces, acc_oracle = ConfusionAccumulator(C), ConfusionAccumulator(C), ConfusionAccumulator(C)
    acc_previous, previous_times = ConfusionAccumulator(C), []
    # No budget and no size floor: the initial pieces themselves, single points included.
    unmerged_cfg = dataclasses.replace(sv_cfg, max_superpoints=np.iinfo(np.int32).max, min_points=1)
    piece_counts = []
    acc_sv, acc_base, acc_plain = ConfusionAccumulator(C), ConfusionAccumulator(C), ConfusionAccumulator(C)
    plain_counts, plain_times = [], []
    rows, sp_times, sp_counts = [], {"seeds": [], "slico": [], "slic": []}, []
    stage = {k: [] for k in ("projection", "superpixels", "superpoints", "visibility", "total", "dbscan_full")}
    scatter = {"torch": [], "numpy": []}
    region_times = {"opencv": [], "scikit-image": []}
    data = list(frames(args.root, args.frames))
    # Timing pass: the geometry stages as the pipeline runs them, frame after frame, with no other library work
    # in between (OpenMP threads that sklearn's DBSCAN leaves spinning slowed the next stages by up to ~15 ms).
    geometry = []
    for name, points, labels, image, calib in data:
        t0 = time.perf_counter()
        proj = project_points(points[:, :3], calib.K, calib.T_cam_lidar, (image.shape[1], image.shape[0]))
        t_proj = ms(t0)
        t1 = time.perf_counter()
        superpixels, regions = segment_image(image, proj, vis_cfg, sv_cfg)  # SEEDS + the ground's graph regions
        t_spx = ms(t1)
        t2 = time.perf_counter()
        sp = segment_superpoints(points, sv_cfg, proj.in_image, [(proj, superpixels)], [regions])
        t_sp = ms(t2)
        t3 = time.perf_counter()
        visible_mask(proj, superpixels, vis_cfg.depth_threshold)
        t_vis = ms(t3)
        total = ms(t0)
        for key, val in zip(stage, (t_proj, t_spx, t_sp, t_vis, total)):
            stage[key].append(val)
        # The previous release's geometry: the same stages without the rough cut.
        t6 = time.perf_counter()
        previous = segment_superpoints(points, previous_cfg, proj.in_image, [(proj, superpixels)], [regions])
        previous_times.append(ms(t6) + t_proj + t_spx + t_vis)
        t5 = time.perf_counter()
        plain = segment_superpoints(points, plain_cfg, proj.in_image, [(proj, superpixels)], [regions])
        plain_times.append(ms(t5))
        geometry.append((proj, superpixels, regions, sp, previous, plain))
    for name, points, *_ in data:
        t4 = time.perf_counter()
        DBSCAN(eps=0.5, min_samples=5).fit_predict(points[:, :3])
        stage["dbscan_full"].append(ms(t4))

    print(f"{'frame':10s} {'sv mIoU':>8s} {'base mIoU':>9s} {'#sp':>5s} {'geom ms':>8s} {'DBSCAN full ms':>14s}")
    for k, ((name, points, labels, image, calib), (proj, superpixels, regions, sp, previous, plain)) in enumerate(
        zip(data, geometry)
    ):
        front = proj.in_image
        gt = labels[front]
        pred_sv = instance_ceiling(sp[front], gt, C)
        base = segment_superpoints(points, base_cfg, front)
        pred_base = instance_ceiling(base[front], gt, C)
        acc_sv.add(pred_sv, gt)
        acc_base.add(pred_base, gt)
        acc_plain.add(instance_ceiling(plain[front], gt, C), gt)
        plain_counts.append(int(plain.max()) + 1)
        no_boundary = segment_superpoints(points, no_boundary_cfg, front, [(proj, superpixels)], [regions])
        acc_no_boundary.add(instance_ceiling(no_boundary[front], gt, C), gt)
        acc_previous.add(instance_ceiling(previous[front], gt, C), gt)
        pieces = segment_superpoints(points, unmerged_cfg, front, [(proj, superpixels)], [regions])[front]
        piece_counts.append(int(pieces.max()) + 1)
        acc_pieces.add(instance_ceiling(pieces, gt, C), gt)
        xyz_front = points[front, :3].astype(np.float64)
        oracle = oracle_merge(pieces, gt, scan_neighbours(points, np.flatnonzero(front)), xyz_front, sv_cfg.max_superpoints,
                              sv_cfg.min_points)
        acc_oracle.add(instance_ceiling(relabel_contiguous(oracle, sv_cfg.min_points), gt, C), gt)
        n_sp = int(sp.max()) + 1
        sp_counts.append(n_sp)
        m_sv = mean_iou(confusion_matrix(pred_sv, gt, C))
        m_base = mean_iou(confusion_matrix(pred_base, gt, C))
        rows.append((m_sv, m_base))
        print(f"{name:10s} {100 * m_sv:8.1f} {100 * m_base:9.1f} {n_sp:5d} {stage['total'][k]:8.1f} "
              f"{stage['dbscan_full'][k]:14.1f}")

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

    med = {k: float(np.median(v)) for k, v in stage.items()}
    best = {k: float(np.min(v)) for k, v in stage.items()}
    med_sp = float(np.median(stage["superpoints"]))
    print("\n== summary over", len(rows), "frames (confusions summed over frames) ==")
    print(f"instance ceiling mIoU, front view: supervoxel {100 * acc_sv.miou():.1f} | "
          f"RANSAC+DBSCAN(0.5) baseline {100 * acc_base.miou():.1f} | "
          f"mean of per-frame: {100 * np.mean([r[0] for r in rows]):.1f} vs {100 * np.mean([r[1] for r in rows]):.1f}")
    print(f"  previous release (no rough cut): "
          f"{100 * acc_previous.miou():.1f}; its geometry stages {np.median(previous_times):.1f} ms median per frame "
          f"vs {float(np.median(stage['total'])):.1f} ms with the rough cut, same pass "
          f"({float(np.median(stage['total'])) / np.median(previous_times):.2f}x)")
    print(f"  supervoxel without the range-image depth-jump cut and boundary term: {100 * acc_no_boundary.miou():.1f}")
    print(f"  supervoxel without kerb / shape / roughness / boundary cues: {100 * acc_plain.miou():.1f}, "
          f"median {np.median(plain_counts):.0f} superpoints, superpoints stage median {np.median(plain_times):.1f} ms "
          f"vs {med_sp:.1f} ms with the cues ({med_sp / np.median(plain_times):.2f}x)")
    print(f"  diagnostics with GT: unmerged initial pieces (single points kept) {100 * acc_pieces.miou():.1f} "
          f"(median {np.median(piece_counts):.0f} pieces) | oracle merge of them to {sv_cfg.max_superpoints}: "
          f"{100 * acc_oracle.miou():.1f} (the merge itself gives {100 * acc_sv.miou():.1f})")
    print(f"superpoints per frame: median {np.median(sp_counts):.0f}, max {np.max(sp_counts)} (cap {sv_cfg.max_superpoints})")
    for label, acc in (("supervoxel", acc_sv), ("previous", acc_previous), ("no boundary", acc_no_boundary),
                       ("no cues", acc_plain), ("baseline", acc_base),
                       ("pieces", acc_pieces), ("oracle", acc_oracle)):
        iou = acc.iou()
        print(f"  {label:10s} " + " ".join(f"{n}:{100 * v:.0f}" for n, v in zip(SEMANTIC_KITTI_CLASSES, iou) if not np.isnan(v)))
    print("geometry stages ms, median (best-of-run as a quiet-machine estimate):")
    for key in stage:
        print(f"  {key:12s} {med[key]:7.1f}  ({best[key]:.1f})")
    print(f"geometry total / sklearn DBSCAN on the full scan: {med['total'] / med['dbscan_full']:.2f}x")
    print("superpixels ms, median: " + ", ".join(f"{k} {np.nanmedian(v) if np.isfinite(v).any() else float('nan'):.1f}"
                                             for k, v in sp_times.items()))
    print("ground image regions (graph segmentation) ms, median: " + ", ".join(
        f"{k} {np.median(v):.1f}" for k, v in region_times.items())
        + " (OpenCV used; part of the superpixels stage)")
    print(f"per-superpixel min depth ms, median: numpy minimum.at (used) {np.median(scatter['numpy']):.2f}, "
          f"torch scatter_reduce {np.median(scatter['torch']):.2f}")


if __name__ == "__main__":
    main()
