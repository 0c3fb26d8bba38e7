"""SPVCNN-style student: a sparse voxel U-Net fused with a per-point branch, open-vocabulary head.

Following SPVCNN (Tang et al., 2020): voxels carry context through a sparse conv U-Net, points keep
full resolution through a light MLP branch, and the two meet at every stage (voxel -> point by
trilinear/nearest interpolation, point -> voxel by averaging). The head does not predict a fixed
class list: it projects point features into the CLIP text space and scores them against frozen,
replaceable class embeddings (cosine similarity times a learnable CLIP-style temperature), so the
class list stays open after training.

Batches follow Pointcept: points of all scans are concatenated and ``offset`` holds cumulative
point counts, so nothing is padded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from partlift_ros.student.sparse import (
    SparseConv3d, SparseVoxels, key_step, keys_are_linear, pack_keys, unpack_keys,
)
from partlift_ros.types import InputError

# Channel multipliers of SPVCNN (cr = width / 32): stem, 4 encoder stages, 4 decoder stages.
SPVCNN_MULTIPLIERS = (1, 1, 2, 4, 8, 8, 4, 3, 3)
MAX_LOGIT_SCALE = 100.0  # as CLIP: keeps the temperature from blowing up early in training


def _bn(x: SparseVoxels, bn: nn.BatchNorm1d, relu: bool = True) -> SparseVoxels:
    out = bn(x.feats)
    return x.replace(F.relu(out) if relu else out)


def _foldable(bn: nn.BatchNorm1d) -> bool:
    """An eval-mode BatchNorm outside autograd is a fixed per-channel affine map: fold it into the layer
    before it (no pass of its own over the features, and in-place ReLUs)."""
    return not bn.training and not torch.is_grad_enabled()


def _bn_affine(bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """(scale, shift) with bn(y) == y * scale + shift in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """bn(linear(x)) with the BatchNorm folded into the weights (only where ``_foldable``)."""
    scale, shift = _bn_affine(bn)
    if linear.bias is not None:
        shift = shift + linear.bias * scale
    return F.linear(x, linear.weight * scale[:, None], shift)


class ConvBNReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, transposed: bool = False,
                 backend: str = "auto"):
        super().__init__()
        self.conv = SparseConv3d(c_in, c_out, kernel_size, stride, transposed=transposed, backend=backend)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        if _foldable(self.bn):
            y = self.conv(x, *_bn_affine(self.bn))
            return y.replace(y.feats.relu_())
        return _bn(self.conv(x), self.bn)


class ResidualBlock(nn.Module):
    """Two submanifold 3x3x3 convs with a (projected) identity shortcut."""

    def __init__(self, c_in: int, c_out: int, backend: str = "auto"):
        super().__init__()
        self.conv1 = SparseConv3d(c_in, c_out, 3, backend=backend)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = SparseConv3d(c_out, c_out, 3, backend=backend)
        self.bn2 = nn.BatchNorm1d(c_out)
        # A 1x1x1 conv is a per-voxel linear map; no kernel map needed.
        self.shortcut = nn.Identity() if c_in == c_out else nn.Sequential(
            nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out)
        )

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        if _foldable(self.bn1):
            y = self.conv1(x, *_bn_affine(self.bn1))
            y = self.conv2(y.replace(y.feats.relu_()), *_bn_affine(self.bn2))
            identity = x.feats if isinstance(self.shortcut, nn.Identity) else _linear_bn(*self.shortcut, x.feats)
            return y.replace(y.feats.add_(identity).relu_())
        y = _bn(self.conv1(x), self.bn1)
        y = _bn(self.conv2(y), self.bn2, relu=False)
        return y.replace(F.relu(y.feats + self.shortcut(x.feats)))


def _point_mlp(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True))


def _run_point_mlp(mlp: nn.Sequential, z: Tensor) -> Tensor:
    linear, bn, _ = mlp
    return _linear_bn(linear, bn, z).relu_() if _foldable(bn) else mlp(z)


class PointLevels:
    """Per-point geometry of one batch: which voxel holds each point, and where inside it."""

    def __init__(self, coord: Tensor, grid_coord: Tensor, batch_index: Tensor, voxel_size: float):
        self.batch_index = batch_index
        self.grid_coord = grid_coord.long()
        # Continuous position in fine-voxel units. grid_coord is floor((coord - origin) / size) with a
        # per-scan origin we are not told; min over the scan of (coord/size - grid) recovers it: exactly
        # for Pointcept's origin = min(coord), and up to the smallest in-voxel offset of any point (tiny
        # for a real scan) for floor(coord/size) - min(floor(...)). Then frac = pos - grid is in [0, 1).
        scaled = coord.double() / voxel_size
        shift = torch.zeros(int(batch_index.max()) + 1, 3, dtype=scaled.dtype, device=coord.device)
        shift = shift.scatter_reduce(0, batch_index[:, None].expand(-1, 3), scaled - self.grid_coord,
                                     reduce="amin", include_self=False)
        frac = scaled - shift[batch_index] - self.grid_coord
        if bool((frac > 1.0 + 1e-3).any()):
            raise InputError(f"grid_coord does not match voxel_size={voxel_size} m: points lie outside their voxels")
        self.position = (self.grid_coord + frac.clamp(0.0, 1.0 - 1e-6)).float()
        self._rows: dict[int, Tensor] = {}
        self._corners: dict[int, tuple[Tensor, Tensor]] = {}  # stride -> trilinear (rows, weights), both (N, 8)

    def remember_rows(self, stride: int, rows: Tensor) -> None:
        """Record point -> voxel rows already known (e.g. from voxelisation) to skip a lookup."""
        self._rows[stride] = rows

    def coords_at(self, stride: int, xyz: Tensor | None = None) -> Tensor:
        """(N, 4) [b, x, y, z] sites at ``stride`` (floor division, as the strided convs do)."""
        xyz = torch.div(self.grid_coord, stride, rounding_mode="floor") if xyz is None else xyz
        return torch.cat([self.batch_index[:, None], xyz], dim=1)

    def voxel_rows(self, voxels: SparseVoxels) -> Tensor:
        """Row of the voxel holding each point at the voxels' stride (every point has one)."""
        return self._rows_at(voxels.context, voxels.stride)

    def _rows_at(self, context, stride: int) -> Tensor:
        if stride not in self._rows:
            parent = context.parents.get((stride // 2, 2)) if stride % 2 == 0 else None
            if parent is not None:  # the coarse voxel of the point's finer voxel: a gather, no search
                self._rows[stride] = parent[self._rows_at(context, stride // 2)]
                return self._rows[stride]
            rows = context.index(stride).lookup(self.coords_at(stride))
            if bool((rows < 0).any()):
                raise InputError(f"{int((rows < 0).sum())} points have no voxel at stride {stride}")
            self._rows[stride] = rows
        return self._rows[stride]

    def corners(self, voxels: SparseVoxels) -> tuple[Tensor, Tensor]:
        """Trilinear taps at the voxels' stride: rows of the 8 surrounding voxel centres (absent -> 0) and
        their weights (absent -> 0, renormalised), (N, 8) each; computed once per stride."""
        s = voxels.stride
        if s not in self._corners:
            q = self.position / s - 0.5  # voxel centres sit at integer q
            base = torch.floor(q)
            frac = q - base
            base = base.long()
            index = voxels.context.index(s)
            bits = [((c >> 2) & 1, (c >> 1) & 1, c & 1) for c in range(8)]
            base_coords = self.coords_at(s, base)
            linear = keys_are_linear(base_coords, 0, 1)
            base_keys = pack_keys(base_coords) if linear else None
            rows, weights = [], []
            for b in bits:  # the 8 corners of the interpolation cell, each a vectorised lookup
                corner = torch.tensor(b, device=q.device)
                r = (index.lookup_keys(base_keys + key_step(b)) if linear
                     else index.lookup(self.coords_at(s, base + corner)))
                weights.append(torch.where(corner.bool(), frac, 1.0 - frac).prod(dim=1) * (r >= 0))
                rows.append(r.clamp(min=0))
            weights = torch.stack(weights, dim=1)
            self._corners[s] = (torch.stack(rows, dim=1), weights / weights.sum(dim=1, keepdim=True))
        return self._corners[s]


def voxelize(point_feats: Tensor, rows: Tensor, num_voxels: int) -> Tensor:
    """Mean of the point features in each voxel (point -> voxel)."""
    index = rows[:, None].expand_as(point_feats)
    out = point_feats.new_zeros(num_voxels, point_feats.shape[1])
    return out.scatter_reduce(0, index, point_feats, reduce="mean", include_self=False)


def devoxelize(voxels: SparseVoxels, levels: PointLevels, trilinear: bool = True) -> Tensor:
    """Voxel -> point features: trilinear over the 8 surrounding voxel centres, or the point's own voxel.

    Absent neighbours get zero weight and the rest are renormalised, as in SPVCNN; the point's own
    voxel always has weight >= 1/8, so the denominator never vanishes.
    """
    if not trilinear:
        return voxels.feats.index_select(0, levels.voxel_rows(voxels))
    rows, weights = levels.corners(voxels)
    # One fused weighted gather-sum (no (N, 8, C) intermediate); differentiable w.r.t. the voxel features.
    return F.embedding_bag(rows, voxels.feats, per_sample_weights=weights.to(voxels.feats), mode="sum")


class SPVCNN(nn.Module):
    """Sparse point-voxel CNN with an open-vocabulary (text-embedding) classifier.

    Args:
        in_channels: per-point input features (e.g. 4 for x, y, z, intensity).
        class_embeddings: (C, D) text embeddings of the class names; normalised and frozen here.
        width: channel scale (SPVCNN's full model is 32); channels are ``width * channel_multipliers``.
        voxel_size: metres per fine voxel; must be the grid size that made ``grid_coord`` (it places points
            inside their voxels for trilinear interpolation; a mismatch raises InputError).
        channel_multipliers: stem, ``n`` encoder stages, ``n`` decoder stages (odd length).
        blocks: residual blocks per stage.
        trilinear: voxel -> point interpolation (False: nearest voxel, cheaper).
        backend: sparse conv backend, "auto" | "torch" | "spconv" (see sparse.py).
        recompute: in training, keep only each U-Net stage's inputs and recompute its activations in the
            backward pass (one more forward pass per step; a 142k-point batch of two real scans peaked at
            2.4 GB instead of 4.5 GB); same gradients and BatchNorm statistics.
    """

    def __init__(
        self,
        in_channels: int,
        class_embeddings: Tensor,
        width: int = 32,
        voxel_size: float = 0.05,
        channel_multipliers: tuple[int, ...] = SPVCNN_MULTIPLIERS,
        blocks: int = 1,
        trilinear: bool = True,
        backend: str = "auto",
        recompute: bool = False,
    ):
        super().__init__()
        if len(channel_multipliers) < 3 or len(channel_multipliers) % 2 == 0:
            raise ValueError("channel_multipliers: stem + n encoder + n decoder stages (odd length >= 3)")
        ch = [max(1, int(round(width * m))) for m in channel_multipliers]
        n = (len(ch) - 1) // 2
        self.voxel_size, self.trilinear, self.num_stages = float(voxel_size), trilinear, n
        self.recompute = recompute
        self.stem = nn.Sequential(ConvBNReLU(in_channels, ch[0], backend=backend),
                                  ConvBNReLU(ch[0], ch[0], backend=backend))
        self.encoder = nn.ModuleList()
        for i in range(n):  # downsample by 2, then residual blocks
            layers = [ConvBNReLU(ch[i], ch[i], kernel_size=2, stride=2, backend=backend)]
            layers += [ResidualBlock(ch[i] if b == 0 else ch[i + 1], ch[i + 1], backend) for b in range(blocks)]
            self.encoder.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        prev = ch[n]
        for j in range(n):  # upsample by 2, concatenate the skip at that stride, residual blocks
            c_out, c_skip = ch[n + 1 + j], ch[n - 1 - j]
            self.up.append(ConvBNReLU(prev, c_out, kernel_size=2, stride=2, transposed=True, backend=backend))
            self.decoder.append(nn.Sequential(
                *[ResidualBlock(c_out + c_skip if b == 0 else c_out, c_out, backend) for b in range(blocks)]
            ))
            prev = c_out
        # Point branch: fused at the bottleneck and after every decoder stage.
        point_ch = [ch[0], ch[n]] + ch[n + 1:]
        self.point_mlps = nn.ModuleList(_point_mlp(a, b) for a, b in zip(point_ch[:-1], point_ch[1:]))
        self.feature_dim = ch[-1]
        embed_dim = class_embeddings.shape[1]
        self.head = nn.Linear(self.feature_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("class_embeddings", self._normalised(class_embeddings, embed_dim))

    @staticmethod
    def _normalised(embeddings: Tensor, embed_dim: int) -> Tensor:
        if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] != embed_dim:
            raise InputError(f"class_embeddings: expected (C >= 1, {embed_dim}), got {tuple(embeddings.shape)}")
        if not bool(torch.isfinite(embeddings).all()):
            raise InputError("class_embeddings: contains NaN or inf")
        return F.normalize(embeddings.detach().float(), dim=1)

    def set_class_embeddings(self, embeddings: Tensor) -> None:
        """Swap the class list: (C', D) text embeddings; the network weights are unchanged."""
        new = self._normalised(embeddings, self.class_embeddings.shape[1])
        self.class_embeddings = new.to(self.class_embeddings.device)

    @property
    def embed_dim(self) -> int:
        return int(self.class_embeddings.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def forward(self, batch: dict, embeddings: bool = True) -> dict:
        """{"coord" (N,3), "feat" (N,Cin), "grid_coord" (N,3) int, "offset" (B,)} ->
        {"logits" (N, C), "point_features" (N, F), "embeddings" (N, D) unit vectors}.

        ``embeddings=False`` (inference) leaves out the (N, D) embeddings and scores the classes without them
        (``class_logits``), which costs a fraction of the head's projection to D dimensions."""
        coord, feat, grid, batch_index = _check_batch(batch)
        levels = PointLevels(coord, grid, batch_index, self.voxel_size)

        keys, rows = torch.unique(pack_keys(levels.coords_at(1)), return_inverse=True)
        x = SparseVoxels(voxelize(feat, rows, keys.shape[0]), unpack_keys(keys), stride=1)
        levels.remember_rows(1, rows)

        def stem(x):
            x = self.stem(x)
            return x, devoxelize(x, levels, self.trilinear)

        x, z = self._stage(self.stem, stem, x)
        skips = [x]
        for stage in self.encoder:
            x = self._stage(stage, stage, x)
            skips.append(x)
        z = self._stage(self.point_mlps[0], lambda x, z: self._fuse(x, z, levels, 0), x, z)
        x = x.replace(voxelize(z, levels.voxel_rows(x), x.coords.shape[0]))
        for j, (up, block) in enumerate(zip(self.up, self.decoder)):
            def decode(x, z, skip=skips[-2 - j], up=up, block=block, j=j):
                x = up(x)
                x = block(x.replace(torch.cat([x.feats, skip.feats], dim=1)))
                return x, self._fuse(x, z, levels, j + 1)

            x, z = self._stage(nn.ModuleList([up, block, self.point_mlps[j + 1]]), decode, x, z)
            if j + 1 < self.num_stages:
                x = x.replace(voxelize(z, levels.voxel_rows(x), x.coords.shape[0]))

        if not embeddings:
            return {"logits": self.class_logits(z), "point_features": z}
        logits, unit = self.classify(z)
        return {"logits": logits, "point_features": z, "embeddings": unit}

    def classify(self, point_features: Tensor) -> tuple[Tensor, Tensor]:
        """(N, F) features -> (logits (N, C), unit embeddings (N, D)): cosine to the classes x temperature.

        Public so a fused (2D + 3D) branch with the same feature width is scored by the same head.
        """
        embeddings = F.normalize(self.head(point_features), dim=1)
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return scale * embeddings @ self.class_embeddings.t().to(embeddings.dtype), embeddings

    def _stage(self, modules: nn.Module, fn, *args):
        """``fn(*args)``; with ``recompute`` in training, its activations are recomputed in the backward pass."""
        if not (self.recompute and self.training and torch.is_grad_enabled()):
            return fn(*args)
        from torch.utils.checkpoint import checkpoint

        return checkpoint(_StatsFrozenOnRepeat(modules, fn), *args, use_reentrant=False)

    def class_logits(self, point_features: Tensor) -> Tensor:
        """The logits of ``classify`` without forming the (N, D) embeddings.

        With head h = W z + b and class embeddings E: h·Eᵀ = z (E W)ᵀ + E b and ‖h‖² = zᵀ(WᵀW)z + 2 (Wᵀb)·z + b·b,
        so every product is F x C or F x F (F = 96, C = 19 at the default width) instead of F x D (D = 512).
        """
        with torch.autocast(point_features.device.type, enabled=False):  # small products: float32 throughout
            z = point_features.float()
            w, b, classes = self.head.weight.float(), self.head.bias.float(), self.class_embeddings.float()
            cosine_num = torch.addmm(classes @ b, z, (classes @ w).t())
            squared = torch.addmv(b @ b, z, 2.0 * (w.t() @ b)) + ((z @ (w.t() @ w)) * z).sum(dim=1)
            norm = squared.clamp_min(0.0).sqrt().clamp_min(1e-12)  # F.normalize's floor
            scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
            return scale * cosine_num / norm[:, None]

    def _fuse(self, x: SparseVoxels, z: Tensor, levels: PointLevels, i: int) -> Tensor:
        """New point features = interpolated voxel features + MLP of the previous point features."""
        return devoxelize(x, levels, self.trilinear) + _run_point_mlp(self.point_mlps[i], z)


class _StatsFrozenOnRepeat:
    """``fn`` whose second and later calls (the recomputation in backward) leave BatchNorm running statistics
    as the first call left them: recomputing must not count the batch twice."""

    def __init__(self, modules: nn.Module, fn):
        self.bns = [m for m in modules.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls == 1:
            return self.fn(*args)
        saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in self.bns]
        for bn in self.bns:
            bn.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        try:
            return self.fn(*args)
        finally:
            for bn, (momentum, tracked) in zip(self.bns, saved):
                bn.momentum = momentum
                bn.num_batches_tracked.copy_(tracked)


def _check_batch(batch: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    missing = [k for k in ("coord", "feat", "grid_coord", "offset") if k not in batch]
    if missing:
        raise InputError(f"SPVCNN batch: missing keys {missing}")
    coord, feat, grid, offset = (batch[k] for k in ("coord", "feat", "grid_coord", "offset"))
    n = coord.shape[0]
    if n == 0:
        raise InputError("SPVCNN batch: no points")
    if coord.shape != (n, 3) or grid.shape != (n, 3) or feat.ndim != 2 or feat.shape[0] != n:
        raise InputError(
            f"SPVCNN batch: coord {tuple(coord.shape)}, grid_coord {tuple(grid.shape)} and feat "
            f"{tuple(feat.shape)} must be (N,3), (N,3), (N,C) with the same N"
        )
    if grid.dtype.is_floating_point:
        raise InputError(f"SPVCNN batch: grid_coord must be integer, got {grid.dtype}")
    offset = offset.long().reshape(-1)
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    if offset.numel() == 0 or int(offset[-1]) != n or bool((counts <= 0).any()):
        raise InputError(
            f"SPVCNN batch: offset {offset.tolist()[:8]} must be increasing cumulative counts ending at N={n}"
        )
    batch_index = torch.repeat_interleave(torch.arange(offset.numel(), device=coord.device), counts.to(coord.device))
    return coord, feat, grid, batch_index
