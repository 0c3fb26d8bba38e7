"""The image-free half of the supervoxel method: canonical point order, ground, scan lines and their cues.

None of it needs the camera image, so ``LabelPipeline.geometry`` computes it while the image is segmented, and
the ground fit runs on the given executor beside the scan lines. Each part is deterministic on its own (the
RANSAC draws come from a fixed seed), so the superpoints are the same in one thread or several.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from ..config import ClusteringConfig
from .ground import TYPICAL_KERB, local_road_height, remove_ground_ransac
from .rings import ScanLines, scan_lines
from .scan import depth_jump, rough_points, scan_roughness, smooth_parts


@dataclass(frozen=True)
class ScanCues:
    """Per eligible point, in the canonical order ``idx``: what the supervoxel method knows without an image."""

    num_points: int  # points of the whole frame (``idx`` indexes them)
    idx: np.ndarray  # (n,) the eligible points, ordered by x, then y, then z
    xyz: np.ndarray  # (n, 3) float64 their coordinates
    ground: np.ndarray  # (n,) bool on the RANSAC ground plane
    raised: np.ndarray  # (n,) bool ground above the kerb height (sidewalks, grass)
    height: np.ndarray  # (n,) m, ground points above the local road surface (0 elsewhere)
    lines: ScanLines
    neighbours: np.ndarray  # (E, 2) scan-neighbour pairs (``lines.pairs``)
    jump: np.ndarray  # (E,) depth-jump weight in [0, 1] of each pair
    parts: np.ndarray | None  # (n,) ids of the range-image parts between strong depth jumps (jump cut on)
    roughness: np.ndarray | None  # (n,) scan roughness (roughness merge term or cut on)
    rough: np.ndarray | None  # (n,) bool foliage-rough object points (rough cut on)


def scan_cues(
    points: np.ndarray,
    cfg: ClusteringConfig,
    eligible: np.ndarray,
    ring: np.ndarray | None = None,
    executor: Executor | None = None,
) -> ScanCues:
    """The cues of the eligible points of checked, finite ``points`` (N, >= 3); the ground fit runs on
    ``executor`` when one is given (else here, before the scan lines)."""
    idx = np.flatnonzero(eligible)
    # One canonical order (by x, then y, then z): RANSAC samples and tie breaks then never depend on the order a
    # driver or a voxel filter stored the points in.
    points_xyz = np.asarray(points[idx, :3])
    order = np.lexsort((points_xyz[:, 2], points_xyz[:, 1], points_xyz[:, 0]))
    idx, xyz = idx[order], points_xyz[order].astype(np.float64)
    if executor is None or idx.size == 0:  # no points: nothing worth a thread
        ground, raised, height = _ground_cues(xyz, cfg)
    else:
        ground_job = executor.submit(_ground_cues, xyz, cfg)
    lines = scan_lines(xyz, None if ring is None else np.asarray(ring)[idx])
    neighbours = lines.pairs
    jump = depth_jump(xyz, neighbours)
    use_cut = cfg.jump_cut > 0 and neighbours.shape[0] > 0
    parts = smooth_parts(idx.size, neighbours, jump, cfg.jump_cut) if use_cut else None
    roughness = scan_roughness(xyz, lines) if cfg.roughness_weight > 0 or cfg.rough_cut > 0 else None
    rough = None
    if cfg.rough_cut > 0 and lines.kind != "none":
        rough = rough_points(roughness, lines, cfg.rough_cut_window, cfg.rough_cut)
    if executor is not None and idx.size:
        ground, raised, height = ground_job.result()
    if rough is not None:
        # Objects only: on the ground roughness is mostly range noise at grazing angles (cutting there lost 0.1-0.8).
        rough = ~ground & rough
    return ScanCues(points.shape[0], idx, xyz, ground, raised, height, lines, neighbours, jump, parts, roughness, rough)


def _ground_cues(xyz: np.ndarray, cfg: ClusteringConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ground, raised ground, height of ground points above the local road surface)."""
    ground = remove_ground_ransac(xyz, cfg.ground_distance, cfg.ground_iterations, np.random.default_rng(0))
    raised = np.zeros_like(ground)
    height = np.zeros(xyz.shape[0])
    if cfg.kerb_height > 0 or cfg.kerb_step_weight > 0:
        band = (cfg.kerb_height if cfg.kerb_height > 0 else TYPICAL_KERB) / 2
        height = np.where(ground, local_road_height(xyz, ground, band, cfg.road_cell, cfg.road_smooth), 0.0)
    if cfg.kerb_height > 0:
        raised = ground & (height > cfg.kerb_height)
    return ground, raised, height
