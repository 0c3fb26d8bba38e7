"""A minimal sparse voxel tensor and sparse 3D convolution in plain PyTorch.

Why our own: the student must train and run on a CPU-only machine (and in CI) where spconv /
torchsparse may be missing, yet use the same weights on a GPU where spconv is fast.

- ``SparseVoxels`` holds active voxel features ``(V, C)``, their integer coordinates ``(V, 4)``
  ``[batch, x, y, z]`` in units of ``stride`` fine voxels, and a ``SparseContext`` shared by every
  tensor derived from the same input, which caches coordinates and kernel maps for one forward pass.
- Kernel maps come from sorting packed int64 keys and ``torch.searchsorted`` (no loops over voxels,
  only over the k^3 kernel offsets). Packed keys are linear in the coordinates, so a neighbour's key is
  the site's key plus a constant per offset; a k == s == 2 strided map needs no search at all (each
  fine site lies in exactly one coarse window). Maps are cached per (stride, kernel, conv stride), so
  every layer at one stride reuses one map.
- ``SparseConv3d`` is gather -> matmul -> ``index_add_`` per kernel offset, inside one autograd
  Function that saves only its input features and the map (the backward pass is the same
  gather-matmul-scatter with the pairs swapped), so training memory does not hold a gathered copy of
  the input per offset. Gathers and products reuse one buffer per call. Three modes:
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
        return self.lookup_keys(pack_keys(query), _in_key_range(query))

    def lookup_keys(self, keys: Tensor, valid: Tensor | None = None) -> Tensor:
        """(M,) packed keys -> (M,) row index, -1 where absent (or where ``valid`` is False)."""
        if self.sorted_keys.numel() == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self.sorted_keys, keys).clamp_(max=self.sorted_keys.numel() - 1)
        found = self.sorted_keys[pos] == keys
        if valid is not None:
            found &= valid
        return torch.where(found, self.order[pos], torch.full_like(pos, -1))


def key_step(offset) -> int:
    """Change of the packed key when a site moves by ``offset`` (dx, dy, dz), as long as no axis leaves
    the packed range (``keys_are_linear``)."""
    dx, dy, dz = (int(v) for v in offset)
    return (dx * _AXIS_RANGE + dy) * _AXIS_RANGE + dz


def keys_are_linear(coords: Tensor, low: int, high: int) -> bool:
    """True when every site moved by offsets in [low, high] per axis stays inside the packed range, so
    ``pack_keys(c + d) == pack_keys(c) + key_step(d)`` holds for all of them."""
    if coords.shape[0] == 0:
        return True
    xyz = coords[:, 1:]
    return int(xyz.min()) + low >= -_AXIS_SHIFT and int(xyz.max()) + high < _AXIS_SHIFT


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
    parents: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (stride, factor) -> coarse row per site
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
            keys, parent = torch.unique(pack_keys(scaled), return_inverse=True)
            self.coords[coarse] = unpack_keys(keys)
            self.parents[(stride, factor)] = parent
        return self.coords[coarse]

    def kernel_map(self, stride: int, kernel_size: int, conv_stride: int) -> KernelMap:
        """Taps from the sites at ``stride`` (input) to those at ``stride * conv_stride`` (output)."""
        key = (stride, kernel_size, conv_stride)
        if key not in self.kernel_maps:
            if conv_stride == 1:
                self.kernel_maps[key] = _build_kernel_map(self.index(stride), self.coords[stride], kernel_size, 1)
            else:
                out_coords = self.downsampled(stride, conv_stride)
                parent = self.parents.get((stride, conv_stride))
                if kernel_size == conv_stride == 2 and parent is not None:
                    self.kernel_maps[key] = _window_kernel_map(self.coords[stride], parent, kernel_size)
                else:
                    self.kernel_maps[key] = _build_kernel_map(self.index(stride), out_coords, kernel_size,
                                                              conv_stride)
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
    offsets = kernel_offsets(kernel_size, "cpu").tolist()
    submanifold = conv_stride == 1 and kernel_size % 2 == 1
    centre = (kernel_size**3) // 2 if submanifold else None
    # Keys are linear in the coordinates away from the edges of the packed range: one add per offset.
    linear = keys_are_linear(base, 0, kernel_size - 1)
    base_keys = pack_keys(base) if linear else None
    pairs = []
    for k, offset in enumerate(offsets):  # loop over k^3 taps only; each tap is one vectorised lookup
        if submanifold and k >= centre:
            break  # the rest mirror the first half (below)
        if linear:
            in_rows = in_index.lookup_keys(base_keys + key_step(offset))
        else:
            query = base.clone()
            query[:, 1:] += torch.tensor(offset, device=base.device)
            in_rows = in_index.lookup(query)
        hit = torch.nonzero(in_rows >= 0, as_tuple=True)[0]
        if hit.numel():
            pairs.append((k, in_rows.index_select(0, hit), out_rows_all.index_select(0, hit)))
    if submanifold:
        # Same sites in and out: "i is o's neighbour at offset d" means "o is i's neighbour at -d",
        # and offset -d has index k^3 - 1 - k, so the second half costs no lookups.
        pairs += [(kernel_size**3 - 1 - k, o, i) for k, i, o in reversed(pairs)]
    return KernelMap(pairs, centre)


def _window_kernel_map(in_coords: Tensor, parent: Tensor, kernel_size: int) -> KernelMap:
    """k == s == 2 (no padding): each fine site lies in exactly one coarse window, ``parent`` gives it, and
    its offset in the window is its coordinate modulo 2; no search needed."""
    rem = torch.remainder(in_coords[:, 1:].long(), kernel_size)
    tap = (rem[:, 0] * kernel_size + rem[:, 1]) * kernel_size + rem[:, 2]
    order = torch.argsort(tap, stable=True)
    counts = torch.bincount(tap, minlength=kernel_size**3).tolist()
    in_rows, out_rows = order.split(counts), parent.index_select(0, order).split(counts)
    return KernelMap([(k, i, o) for k, (i, o, n) in enumerate(zip(in_rows, out_rows, counts)) if n])


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

    def forward(self, x: SparseVoxels, scale: Tensor | None = None, shift: Tensor | None = None) -> SparseVoxels:
        """``scale`` / ``shift`` (per output channel): return ``conv(x) * scale + shift``, folded into the
        weights (how an inference-time BatchNorm costs no extra pass over the features)."""
        if x.feats.shape[1] != self.in_channels:
            raise InputError(f"{self}: got {x.feats.shape[1]} input channels")
        if resolve_backend(self.backend, x.feats.device) == "spconv":
            out = _spconv_forward(self, x)
            if scale is None and shift is None:
                return out
            feats = out.feats * scale if scale is not None else out.feats
            return out.replace(feats + shift if shift is not None else feats)
        return self._torch_forward(x, scale, shift)

    def _torch_forward(self, x: SparseVoxels, scale: Tensor | None = None,
                       shift: Tensor | None = None) -> SparseVoxels:
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
        device = x.feats.device
        # Autocast lowers the products only; sums over the taps stay in (at least) float32.
        compute = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x.feats.dtype
        weight = self.weight if scale is None else self.weight * scale.to(self.weight.dtype)
        feats = _GatherMatmulScatter.apply(x.feats.to(compute), weight.to(compute), kmap, out_coords.shape[0])
        bias = self.bias if self.bias is None or scale is None else self.bias * scale
        if shift is not None:
            bias = shift if bias is None else bias + shift
        if bias is not None:
            bias = bias.to(feats.dtype)
            feats = feats.add_(bias) if not torch.is_grad_enabled() else feats + bias
        return SparseVoxels(feats, out_coords, out_stride, ctx)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def gather_matmul_scatter(feats: Tensor, weight: Tensor, kmap: KernelMap, num_out: int) -> Tensor:
    """``out[o] = sum over taps (k, i, o) of feats[i] @ weight[k]`` (no autograd), summed in >= float32.

    One gather buffer and one product buffer serve every tap, so large layers do not allocate (and
    page-fault) a fresh pair of tensors per offset.
    """
    acc = _accumulation_dtype(feats.dtype)
    if kmap.identity_offset is not None:  # centre tap of a submanifold conv: a plain matmul
        out = (feats @ weight[kmap.identity_offset]).to(acc)
    else:
        out = torch.zeros(num_out, weight.shape[2], dtype=acc, device=feats.device)
    most = max((len(i) for _, i, _ in kmap.pairs), default=0)
    gathered = feats.new_empty(most, feats.shape[1])
    product = feats.new_empty(most, weight.shape[2])
    for k, in_rows, out_rows in kmap.pairs:
        n = in_rows.shape[0]
        rows = torch.index_select(feats, 0, in_rows, out=gathered[:n])
        part = torch.mm(rows, weight[k], out=product[:n])
        out.index_add_(0, out_rows, part if part.dtype == acc else part.to(acc))
    return out


class _GatherMatmulScatter(torch.autograd.Function):
    """Sparse conv as one autograd node: saves the input features and the map, not a gathered copy per tap."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, kmap: KernelMap, num_out: int) -> Tensor:
        ctx.kmap = kmap
        ctx.save_for_backward(feats, weight)
        with torch.autocast(feats.device.type, enabled=False):
            return gather_matmul_scatter(feats, weight, kmap, num_out)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        feats, weight = ctx.saved_tensors
        kmap = ctx.kmap
        grad_out = grad_out.to(feats.dtype).contiguous()
        grad_feats = grad_weight = None
        with torch.autocast(feats.device.type, enabled=False):
            if ctx.needs_input_grad[0]:  # the same taps read backwards, with each W[k] transposed
                grad_feats = gather_matmul_scatter(grad_out, weight.transpose(1, 2), kmap.swapped(), feats.shape[0])
                grad_feats = grad_feats.to(feats.dtype)
            if ctx.needs_input_grad[1]:
                grad_weight = torch.zeros_like(weight)
                if kmap.identity_offset is not None:
                    grad_weight[kmap.identity_offset] = feats.t() @ grad_out
                for k, in_rows, out_rows in kmap.pairs:
                    grad_weight[k] += feats.index_select(0, in_rows).t() @ grad_out.index_select(0, out_rows)
        return grad_feats, grad_weight, None, None


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
