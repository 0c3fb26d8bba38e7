"""Initial pieces: 3D components over touching voxels, cut along image borders, depth jumps and roughness.

Non-ground points are joined into 3D connected components over touching voxels (``voxel_size``). Every non-ground
piece is then cut along image superpixel borders, which follow colour edges such as a pole in front of a wall; the
ground pieces are cut along graph image regions instead (``image_regions``), which stay large on uniform asphalt
and follow kerbs, markings and grass edges. Points no camera sees are cut by a coarse voxel grid instead. Pieces
are also cut where the range image has a strong depth jump (``scan.smooth_parts``: a person in front of a bush
touches it in voxels but not in depth), and non-ground pieces between rough and smooth points (``scan.rough_points``:
fences and walls against the hedges that touch them and often share their colour).
"""

from __future__ import annotations

import numpy as np

from ..calibration import Projection
from ..config import ClusteringConfig
from ..types import IGNORE


def relabel_contiguous(labels: np.ndarray, min_points: int) -> np.ndarray:
    """Renumber ids to 0..M-1 in order of first id; ids with < ``min_points`` points become IGNORE."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(labels.shape[0], IGNORE, dtype=np.int32)
    valid = labels >= 0
    if not valid.any():
        return out
    ids, inverse, counts = np.unique(labels[valid], return_inverse=True, return_counts=True)
    keep = counts >= min_points
    new_ids = np.full(ids.shape[0], IGNORE, dtype=np.int64)
    new_ids[keep] = np.arange(int(keep.sum()))
    out[valid] = new_ids[inverse]
    return out


_NEIGHBOUR_OFFSETS = np.array(
    [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1) if (dx, dy, dz) > (0, 0, 0)]
)


def voxel_components(xyz: np.ndarray, voxel_size: float) -> np.ndarray:
    """(N,) component id: points are connected when their voxels touch (26-neighbourhood)."""
    from scipy import sparse
    from scipy.sparse.csgraph import connected_components

    key = np.floor(xyz / voxel_size).astype(np.int64)
    key -= key.min(axis=0) - 1  # one empty voxel of margin so neighbour keys never wrap
    dims = key.max(axis=0) + 2
    linear = (key[:, 0] * dims[1] + key[:, 1]) * dims[2] + key[:, 2]
    voxels, inverse = np.unique(linear, return_inverse=True)
    steps = (_NEIGHBOUR_OFFSETS[:, 0] * dims[1] + _NEIGHBOUR_OFFSETS[:, 1]) * dims[2] + _NEIGHBOUR_OFFSETS[:, 2]
    query = voxels[None, :] + steps[:, None]
    pos = np.minimum(np.searchsorted(voxels, query), voxels.shape[0] - 1)
    hit = voxels[pos] == query
    rows = np.broadcast_to(np.arange(voxels.shape[0]), query.shape)[hit]
    graph = sparse.coo_matrix(
        (np.ones(rows.shape[0], dtype=np.int8), (rows, pos[hit])), shape=(voxels.shape[0], voxels.shape[0])
    )
    return connected_components(graph, directed=False)[1][inverse]


def superpixel_of_points(idx: np.ndarray, views: list[tuple[Projection, np.ndarray]]) -> np.ndarray:
    """(len(idx),) superpixel id of points ``idx``, unique across cameras (offset per view), first camera wins;
    -1 = unseen."""
    out = np.full(idx.shape[0], -1, dtype=np.int64)
    offset = 0
    for proj, sp_map in views:
        sp_map = np.asarray(sp_map)
        todo = np.flatnonzero(proj.in_image[idx] & (out < 0))
        px = np.floor(proj.uv[idx[todo]]).astype(np.int64)  # as proj.pixels, for these points only
        h, w = sp_map.shape
        u, v = np.clip(px[:, 0], 0, w - 1), np.clip(px[:, 1], 0, h - 1)
        out[todo] = sp_map[v, u].astype(np.int64) + offset
        offset += int(sp_map.max()) + 1 if sp_map.size else 0
    return out


def initial_pieces(
    xyz: np.ndarray,
    ground: np.ndarray,
    raised: np.ndarray,
    superpixel: np.ndarray,
    cfg: ClusteringConfig,
    smooth_parts: np.ndarray | None = None,
    rough: np.ndarray | None = None,
) -> np.ndarray:
    """(n,) piece id: road-level ground / raised ground / 3D component, cut by image superpixel
    (or by a coarse grid where no camera sees the point), by ``smooth_parts`` (ids of the parts
    of the range image between strong depth jumps) and by ``rough`` (bool, foliage-rough points)
    when given."""
    component = raised.astype(np.int64)  # 0 = road-level ground, 1 = raised ground
    if (~ground).any():
        component[~ground] = voxel_components(xyz[~ground], cfg.voxel_size) + 2
    if cfg.image_weight <= 0:
        superpixel = np.full_like(superpixel, -1)
    unseen = superpixel < 0
    cut = superpixel.copy()
    if unseen.any():
        cells = np.floor(xyz[unseen] / (8 * cfg.voxel_size)).astype(np.int64)
        _, cell_id = np.unique(cells, axis=0, return_inverse=True)
        cut[unseen] = int(superpixel.max(initial=-1)) + 1 + cell_id.reshape(-1)
    if raised.any():  # raised ground too small for a superpoint in its cut is road noise, not a sidewalk
        _, group, size = np.unique(cut[raised], return_inverse=True, return_counts=True)
        component[np.flatnonzero(raised)[size[group.reshape(-1)] < cfg.min_points]] = 0
    _, piece = np.unique(component * (int(cut.max()) + 1) + cut, return_inverse=True)
    if smooth_parts is not None:
        _, piece = np.unique(piece.reshape(-1) * (int(smooth_parts.max()) + 1) + smooth_parts, return_inverse=True)
    if rough is not None:
        _, piece = np.unique(piece.reshape(-1) * 2 + rough, return_inverse=True)
    return piece.reshape(-1)


