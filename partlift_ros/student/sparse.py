"""A minimal sparse voxel tensor and sparse 3D convolution in plain PyTorch.

Why our own: the student must train and run on a CPU-only machine (and in CI) where spconv /
torchsparse may be missing, yet use the same weights on a GPU where spconv is fast.

- ``SparseVoxels`` holds active voxel features ``(V, C)``, their integer coordinates ``(V, 4)``
  ``[batch, x, y, z]`` in units of ``stride`` fine voxels, and a ``SparseContext`` shared by every
  tensor derived from the same input, which caches coordinates and kernel maps for one forward pass.
- Kernel maps come from sorting packed int64 keys and ``torch.searchsorted`` (no loops over voxels,
  only over the k^3 kernel offsets).
- ``SparseConv3d`` is gather -> matmul -> ``index_add_`` per kernel offset. Three modes:
  submanifold (stride 1, output sites = input sites), strided (output sites =
  ``unique(floor(coords / stride))``) and transposed (back to the finer sites stored in the context).
  In all modes output site ``o`` sums ``W[d] @ in[s*o + d - p]`` over offsets ``d`` in ``[0, k)^3``
  with ``p = (k - 1) // 2`` (transposed: the same pairs, read the other way), i.e. exactly
  ``F.conv3d`` / ``F.conv_transpose3d`` evaluated at the active sites only.
- Weights are stored as ``(k^3, C_in, C_out)`` with offset index ``(a*k + b)*k + c`` for offset
  ``(a, b, c)`` along (x, y, z); ``to_spconv_weight`` / ``from_spconv_weight`` convert to spconv's
  KRSC layout ``(C_out, k, k, k, C_in)`` so checkpoints move between backends.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor, nn

from partlift_ros.types import InputError

# Packed key layout: 18 bits per spatial axis (coordinates in [-2^17, 2^17), i.e. +-6.5 km at 5 cm)
# and the remaining 9 bits for the batch index (up to 512 scans per batch).
_AXIS_BITS = 18
_AXIS_RANGE = 1 << _AXIS_BITS
_AXIS_SHIFT = _AXIS_RANGE // 2
_MAX_BATCH = 1 << (63 - 3 * _AXIS_BITS)

BACKENDS = ("auto", "torch", "spconv")


def pack_keys(coords: Tensor) -> Tensor:
    """(V, 4) integer [b, x, y, z] -> (V,) int64 keys whose order is lexicographic in (b, x, y, z)."""
    c = coords.long()
    key = c[:, 0]
    for axis in (1, 2, 3):
        key = key * _AXIS_RANGE + (c[:, axis] + _AXIS_SHIFT)
    return key


def unpack_keys(keys: Tensor) -> Tensor:
    """Inverse of ``pack_keys``: (V,) int64 -> (V, 4) int32."""
    out = torch.empty(keys.shape[0], 4, dtype=torch.int64, device=keys.device)
    rest = keys
    for axis in (3, 2, 1):
        out[:, axis] = rest % _AXIS_RANGE - _AXIS_SHIFT
        rest = torch.div(rest, _AXIS_RANGE, rounding_mode="floor")
    out[:, 0] = rest
    return out.int()


def _in_key_range(coords: Tensor) -> Tensor:
    """Mask of rows whose spatial coordinates fit the packed key layout."""
    xyz = coords[:, 1:]
    return ((xyz >= -_AXIS_SHIFT) & (xyz < _AXIS_SHIFT)).all(dim=1)


def check_coords(coords: Tensor, where: str = "coords") -> None:
    """Raise InputError unless ``coords`` is a (V, 4) integer tensor the key packing can represent."""
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise InputError(f"{where}: expected shape (V, 4) [batch, x, y, z], got {tuple(coords.shape)}")
    if coords.dtype not in (torch.int32, torch.int64):
        raise InputError(f"{where}: expected int32/int64 coordinates, got {coords.dtype}")
    if coords.shape[0] == 0:
        return
    if int(coords[:, 0].min()) < 0 or int(coords[:, 0].max()) >= _MAX_BATCH:
        raise InputError(f"{where}: batch index must be in [0, {_MAX_BATCH})")
    if not bool(_in_key_range(coords).all()):
        raise InputError(f"{where}: spatial coordinates must lie in [{-_AXIS_SHIFT}, {_AXIS_SHIFT})")


class KeyIndex:
    """Sorted packed keys of one coordinate set, for O(log V) lookups of many query sites."""

    def __init__(self, coords: Tensor):
        self.sorted_keys, self.order = torch.sort(pack_keys(coords))

    def lookup(self, query: Tensor) -> Tensor:
        """(M, 4) query coords -> (M,) row index into the indexed coords, -1 where absent."""
        valid = _in_key_range(query)
        keys = pack_keys(query)
        if self.sorted_keys.numel() == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.sorted_keys.numel() - 1)
        found = valid & (self.sorted_keys[pos] == keys)
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))


@dataclass
class KernelMap:
    """Input/output row pairs per kernel offset; ``pairs[i] = (offset_index, in_rows, out_rows)``."""

    pairs: list[tuple[int, Tensor, Tensor]]
    identity_offset: int | None = None  # submanifold centre tap: in_rows == out_rows == arange(V)

    def swapped(self) -> KernelMap:
        """The same taps read from output to input (used by transposed convolution)."""
        return KernelMap([(k, o, i) for k, i, o in self.pairs], self.identity_offset)


@dataclass
class SparseContext:
    """State shared by all tensors of one forward pass: coordinates per stride and cached kernel maps."""

    coords: dict[int, Tensor] = field(default_factory=dict)
    indices: dict[int, KeyIndex] = field(default_factory=dict)
    kernel_maps: dict[tuple[int, int, int], KernelMap] = field(default_factory=dict)
    # spconv backend: its indice pairs (shared by key) and spatial shape per stride.
    spconv_indice_dict: dict = field(default_factory=dict)
    spatial_shapes: dict[int, list[int]] = field(default_factory=dict)

    def register(self, stride: int, coords: Tensor) -> None:
        known = self.coords.get(stride)
        if known is None:
            self.coords[stride] = coords
        elif known is not coords and not torch.equal(known, coords):
            raise ValueError(f"coordinates at stride {stride} differ from those already in this context")

    def index(self, stride: int) -> KeyIndex:
        if stride not in self.indices:
            self.indices[stride] = KeyIndex(self.coords[stride])
        return self.indices[stride]

    def downsampled(self, stride: int, factor: int) -> Tensor:
        """Coordinates at ``stride * factor``: unique(floor(coords / factor)), computed once."""
        coarse = stride * factor
        if coarse not in self.coords:
            fine = self.coords[stride]
            scaled = fine.clone()
            scaled[:, 1:] = torch.div(fine[:, 1:], factor, rounding_mode="floor")
            self.coords[coarse] = unpack_keys(torch.unique(pack_keys(scaled)))
        return self.coords[coarse]

    def kernel_map(self, stride: int, kernel_size: int, conv_stride: int) -> KernelMap:
        """Taps from the sites at ``stride`` (input) to those at ``stride * conv_stride`` (output)."""
        key = (stride, kernel_size, conv_stride)
        if key not in self.kernel_maps:
            out_coords = self.coords[stride] if conv_stride == 1 else self.downsampled(stride, conv_stride)
            self.kernel_maps[key] = _build_kernel_map(
                self.index(stride), out_coords, kernel_size, conv_stride
            )
        return self.kernel_maps[key]


def kernel_offsets(kernel_size: int, device: torch.device | str = "cpu") -> Tensor:
    """(k^3, 3) offsets (a, b, c) in [0, k)^3, row (a*k + b)*k + c (same order as conv3d weights)."""
    r = torch.arange(kernel_size, device=device)
    return torch.cartesian_prod(r, r, r).reshape(-1, 3)


def _build_kernel_map(in_index: KeyIndex, out_coords: Tensor, kernel_size: int, conv_stride: int) -> KernelMap:
    pad = (kernel_size - 1) // 2
    base = out_coords.long().clone()
    base[:, 1:] = base[:, 1:] * conv_stride - pad
    out_rows_all = torch.arange(out_coords.shape[0], device=out_coords.device)
    offsets = kernel_offsets(kernel_size, out_coords.device)
    submanifold = conv_stride == 1 and kernel_size % 2 == 1
    centre = (kernel_size**3) // 2 if submanifold else None
    pairs = []
    for k, offset in enumerate(offsets):  # loop over k^3 taps only; each tap is one vectorised lookup
        if submanifold and k >= centre:
            break  # the rest mirror the first half (below)
        query = base.clone()
        query[:, 1:] += offset
        in_rows = in_index.lookup(query)
        hit = in_rows >= 0
        if bool(hit.any()):
            pairs.append((k, in_rows[hit], out_rows_all[hit]))
    if submanifold:
        # Same sites in and out: "i is o's neighbour at offset d" means "o is i's neighbour at -d",
        # and offset -d has index k^3 - 1 - k, so the second half costs no lookups.
        pairs += [(kernel_size**3 - 1 - k, o, i) for k, i, o in reversed(pairs)]
    return KernelMap(pairs, centre)


class SparseVoxels:
    """Features ``(V, C)`` at integer sites ``(V, 4)`` [batch, x, y, z] in units of ``stride`` voxels."""

    def __init__(self, feats: Tensor, coords: Tensor, stride: int = 1, context: SparseContext | None = None):
        if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
            raise InputError(
                f"SparseVoxels: feats {tuple(feats.shape)} must be (V, C) with V = {coords.shape[0]} coords rows"
            )
        if context is None:  # a new input: validate once, derived tensors reuse checked coords
            check_coords(coords, "SparseVoxels.coords")
        self.feats = feats
        self.coords = coords.int() if coords.dtype != torch.int32 else coords
        self.stride = int(stride)
        self.context = context if context is not None else SparseContext()
        self.context.register(self.stride, self.coords)

    def replace(self, feats: Tensor) -> SparseVoxels:
        """Same sites and context, new features (for BatchNorm, ReLU, residual sums)."""
        return SparseVoxels(feats, self.coords, self.stride, self.context)

    @property
    def batch_size(self) -> int:
        return int(self.coords[:, 0].max()) + 1 if self.coords.shape[0] else 0

    def __repr__(self) -> str:
        return f"SparseVoxels(V={self.coords.shape[0]}, C={self.feats.shape[1]}, stride={self.stride})"


@lru_cache(maxsize=1)
def spconv_available() -> bool:
    """True when ``spconv.pytorch`` imports (it is optional; ``pip install spconv-cu1xx`` on GPU hosts)."""
    if importlib.util.find_spec("spconv") is None:
        return False
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:  # a broken CUDA build raises many kinds of errors at import; treat all as absent
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' picks spconv only when it is installed and the tensors are on CUDA."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "spconv" if device.type == "cuda" and spconv_available() else "torch"
    if backend == "spconv" and not spconv_available():
        raise ImportError("backend='spconv' needs spconv (pip install spconv or spconv-cu12x)")
    return backend


def to_spconv_weight(weight: Tensor, kernel_size: int) -> Tensor:
    """(k^3, C_in, C_out) -> spconv KRSC (C_out, k, k, k, C_in)."""
    k = kernel_size
    return weight.reshape(k, k, k, weight.shape[1], weight.shape[2]).permute(4, 0, 1, 2, 3)


def from_spconv_weight(weight: Tensor) -> Tensor:
    """spconv KRSC (C_out, k, k, k, C_in) -> (k^3, C_in, C_out)."""
    c_out, k = weight.shape[0], weight.shape[1]
    return weight.permute(1, 2, 3, 4, 0).reshape(k**3, weight.shape[4], c_out)


class SparseConv3d(nn.Module):
    """Sparse 3D convolution on ``SparseVoxels``; see the module docstring for the exact semantics."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        transposed: bool = False,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if stride == 1 and kernel_size % 2 == 0:
            raise ValueError("submanifold (stride 1) convolution needs an odd kernel_size")
        if stride > 1 and kernel_size < stride:
            raise ValueError(f"kernel_size {kernel_size} < stride {stride} would skip input voxels")
        if transposed and stride == 1:
            raise ValueError("transposed convolution needs stride > 1 (stride 1 is submanifold already)")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.transposed = kernel_size, stride, transposed
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # Same fan-in scaling as nn.Conv3d's default init.
        bound = 1.0 / math.sqrt(in_channels * kernel_size**3)
        nn.init.uniform_(self.weight, -bound, bound)
        self._spconv_op = None  # built lazily; a plain attribute so its own weight is never trained

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"transposed={self.transposed}, backend={self.backend!r}"
        )

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        if x.feats.shape[1] != self.in_channels:
            raise InputError(f"{self}: got {x.feats.shape[1]} input channels")
        if resolve_backend(self.backend, x.feats.device) == "spconv":
            return _spconv_forward(self, x)
        return self._torch_forward(x)

    def _torch_forward(self, x: SparseVoxels) -> SparseVoxels:
        ctx = x.context
        if self.transposed:
            if x.stride % self.stride:
                raise InputError(f"transposed conv: stride {x.stride} is not a multiple of {self.stride}")
            out_stride = x.stride // self.stride
            if out_stride not in ctx.coords:
                raise InputError(f"transposed conv: no finer coordinates at stride {out_stride} in the context")
            kmap = ctx.kernel_map(out_stride, self.kernel_size, self.stride).swapped()
        else:
            out_stride = x.stride * self.stride
            kmap = ctx.kernel_map(x.stride, self.kernel_size, self.stride)
        out_coords = ctx.coords[out_stride]
        feats = x.feats
        weight = self.weight.to(feats.dtype)
        out = None
        if kmap.identity_offset is not None:  # centre tap of a submanifold conv: a plain matmul
            out = feats @ weight[kmap.identity_offset]
        for k, in_rows, out_rows in kmap.pairs:
            partial = feats[in_rows] @ weight[k]
            if out is None:  # dtype of the matmul, which autocast may lower
                out = partial.new_zeros(out_coords.shape[0], self.out_channels)
            out.index_add_(0, out_rows, partial.to(out.dtype))  # in place: no (V, C) copy per tap
        if out is None:  # no input site reaches any output site
            out = (feats[:0] @ weight[0]).new_zeros(out_coords.shape[0], self.out_channels)
        if self.bias is not None:
            out = out + self.bias
        return SparseVoxels(out, out_coords, out_stride, ctx)


def _spconv_op(conv: SparseConv3d, fine_stride: int) -> nn.Module:
    """The spconv module matching ``conv``; its indice_key shares pairs like our kernel-map cache."""
    import spconv.pytorch as spconv

    k, s = conv.kernel_size, conv.stride
    # The key depends on the input stride, which is only known per call, so it is set each time.
    key = f"subm{fine_stride}k{k}" if s == 1 else f"down{fine_stride}k{k}s{s}"
    if conv._spconv_op is None:
        c_in, c_out = conv.in_channels, conv.out_channels
        if s == 1:
            op = spconv.SubMConv3d(c_in, c_out, k, bias=False, indice_key=key)
        elif conv.transposed:
            op = spconv.SparseInverseConv3d(c_in, c_out, k, indice_key=key, bias=False)
        else:
            op = spconv.SparseConv3d(c_in, c_out, k, stride=s, bias=False, indice_key=key)
        # Bypass nn.Module.__setattr__: registering it would add its unused weight to the state dict.
        object.__setattr__(conv, "_spconv_op", op)
    conv._spconv_op.indice_key = key
    return conv._spconv_op


def _spconv_forward(conv: SparseConv3d, x: SparseVoxels) -> SparseVoxels:
    import spconv.pytorch as spconv

    if conv.stride > 1 and conv.kernel_size != conv.stride:
        # spconv's strided conv activates every site its window touches; only k == s gives
        # exactly unique(floor(coords / s)), which the torch backend and the model rely on.
        raise ValueError("the spconv backend supports strided convolution only with kernel_size == stride")
    if not x.feats.is_cuda and torch.is_grad_enabled() and (x.feats.requires_grad or conv.weight.requires_grad):
        # spconv's CPU build computes forward only (its backward asks for a CUDA stream).
        raise RuntimeError("spconv has no CPU backward: train on CPU with backend='torch' (or run under no_grad)")
    ctx = x.context
    fine_stride = x.stride // conv.stride if conv.transposed else x.stride
    op = _spconv_op(conv, fine_stride)
    if conv.transposed and op.indice_key not in ctx.spconv_indice_dict:
        raise InputError(f"spconv transposed conv: no strided conv from stride {fine_stride} ran in this context")
    if x.stride not in ctx.spatial_shapes:
        # Only the finest level is given from outside; spconv needs non-negative sites.
        if x.coords.shape[0] and int(x.coords[:, 1:].min()) < 0:
            raise InputError("the spconv backend needs non-negative voxel coordinates")
        ctx.spatial_shapes[x.stride] = (x.coords[:, 1:].amax(0) + 1).tolist() if x.coords.shape[0] else [1, 1, 1]
    shape = ctx.spatial_shapes[x.stride]
    if conv.stride > 1 and not conv.transposed:
        # spconv drops the last row of an odd extent (floor((D - k) / s) + 1 outputs); pad it to a multiple.
        shape = [-(-d // conv.stride) * conv.stride for d in shape]
    tensor = spconv.SparseConvTensor(
        x.feats.contiguous(), x.coords.contiguous(), shape, max(x.batch_size, 1),
        indice_dict=ctx.spconv_indice_dict,
    )
    weight = to_spconv_weight(conv.weight.to(x.feats.dtype), conv.kernel_size).contiguous()
    if x.feats.is_cuda:
        out = op._conv_forward(conv.training, tensor, weight, None)
    else:
        # spconv's CPU pair generation races under torch's intra-op threads and silently drops taps
        # (spconv issue #679; seen here with 2 threads), so CPU calls run single-threaded.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out = op._conv_forward(conv.training, tensor, weight, None)
        finally:
            torch.set_num_threads(threads)
    ctx.spconv_indice_dict.update(out.indice_dict)
    out_stride = x.stride // conv.stride if conv.transposed else x.stride * conv.stride
    ctx.spatial_shapes.setdefault(out_stride, list(out.spatial_shape))
    feats = out.features if conv.bias is None else out.features + conv.bias
    return SparseVoxels(feats, out.indices, out_stride, ctx)
