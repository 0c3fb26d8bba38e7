"""Student network: sparse conv against dense conv3d, kernel maps against brute force, spconv parity,
SPVCNN forward/backward, and the distillation losses on hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partlift_ros.student.losses import (
    class_weights_from_counts,
    kl_on_visible,
    lovasz_softmax,
    pseudo_label_loss,
    weighted_cross_entropy,
)
from partlift_ros.student.model import SPVCNN, PointLevels, devoxelize, voxelize
from partlift_ros.student.sparse import (
    SparseContext,
    SparseConv3d,
    SparseVoxels,
    from_spconv_weight,
    pack_keys,
    spconv_available,
    to_spconv_weight,
    unpack_keys,
)
from partlift_ros.types import InputError

GRID = 8


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: thread hand-offs dominate (50x slower on a loaded 2-core box), so run on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_sites(n: int = 160, grid: int = GRID, batches: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.cat([torch.randint(0, batches, (n, 1), generator=g), torch.randint(0, grid, (n, 3), generator=g)], 1)
    return torch.unique(raw, dim=0).int()


def to_dense(feats: torch.Tensor, coords: torch.Tensor, grid: int, batches: int = 2) -> torch.Tensor:
    dense = torch.zeros(batches, feats.shape[1], grid, grid, grid, dtype=feats.dtype)
    c = coords.long()
    dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = feats
    return dense


def at_sites(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def conv3d_weight(conv: SparseConv3d) -> torch.Tensor:
    k = conv.kernel_size
    return conv.weight.reshape(k, k, k, conv.in_channels, conv.out_channels).permute(4, 3, 0, 1, 2)


def sorted_by_site(v: SparseVoxels) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(pack_keys(v.coords))
    return v.coords[order], v.feats[order]


# ---------------------------------------------------------------- keys and kernel maps


def test_pack_unpack_round_trip_including_negative_coordinates():
    coords = torch.tensor([[0, -5, 3, 0], [3, 100000, -131072, 131071], [511, 0, 0, -1]], dtype=torch.int32)
    assert torch.equal(unpack_keys(pack_keys(coords)), coords)
    # Keys sort lexicographically by (b, x, y, z), which the downsampling relies on.
    assert torch.equal(torch.argsort(pack_keys(coords)), torch.tensor([0, 1, 2]))


def test_out_of_range_coordinates_are_rejected():
    with pytest.raises(InputError, match="spatial coordinates"):
        SparseVoxels(torch.zeros(1, 2), torch.tensor([[0, 1 << 17, 0, 0]], dtype=torch.int32))
    with pytest.raises(InputError, match=r"\(V, 4\)"):
        SparseVoxels(torch.zeros(1, 2), torch.tensor([[0, 1, 0]], dtype=torch.int32))


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2), (3, 2)])
def test_kernel_map_matches_brute_force_neighbour_search(kernel_size, stride):
    coords = random_sites(200, grid=10)
    ctx = SparseContext()
    ctx.register(1, coords)
    kmap = ctx.kernel_map(1, kernel_size, stride)
    out_coords = ctx.coords[stride]
    got = set()
    for k, in_rows, out_rows in kmap.pairs:
        got.update(zip([k] * len(in_rows), in_rows.tolist(), out_rows.tolist()))
    if kmap.identity_offset is not None:
        got.update((kmap.identity_offset, i, i) for i in range(len(coords)))
    # Brute force over all (input, output) pairs: input = stride * output + offset - pad.
    pad = (kernel_size - 1) // 2
    d = coords[:, None, 1:].long() - (stride * out_coords[None, :, 1:].long() - pad)
    ok = (coords[:, None, 0] == out_coords[None, :, 0]) & ((d >= 0) & (d < kernel_size)).all(-1)
    i, o = torch.nonzero(ok, as_tuple=True)
    offs = d[i, o]
    flat = (offs[:, 0] * kernel_size + offs[:, 1]) * kernel_size + offs[:, 2]
    expected = set(zip(flat.tolist(), i.tolist(), o.tolist()))
    assert got == expected and len(expected) >= len(coords)  # every input feeds some output


def test_strided_output_sites_are_unique_floor_halves():
    coords = random_sites(200, grid=10)
    ctx = SparseContext()
    ctx.register(1, coords)
    expected = torch.unique(torch.cat([coords[:, :1], torch.div(coords[:, 1:], 2, rounding_mode="floor")], 1), dim=0)
    assert torch.equal(ctx.downsampled(1, 2), expected)
    ctx.kernel_map(1, 2, 2)
    ctx.kernel_map(1, 2, 2)
    assert list(ctx.kernel_maps) == [(1, 2, 2)]  # cached, built once


# ---------------------------------------------------------------- sparse conv == dense conv at active sites


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_submanifold_conv_equals_dense_conv3d_at_active_sites(kernel_size):
    torch.manual_seed(0)
    coords = random_sites()
    feats = torch.randn(len(coords), 3, dtype=torch.float64)
    conv = SparseConv3d(3, 4, kernel_size, bias=True, backend="torch").double()
    torch.nn.init.normal_(conv.bias)
    out = conv(SparseVoxels(feats, coords))
    assert torch.equal(out.coords, coords)
    dense = F.conv3d(to_dense(feats, coords, GRID), conv3d_weight(conv), conv.bias, padding=(kernel_size - 1) // 2)
    torch.testing.assert_close(out.feats, at_sites(dense, coords))


@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_strided_and_transposed_conv_equal_dense_conv(kernel_size):
    torch.manual_seed(1)
    coords = random_sites()
    feats = torch.randn(len(coords), 3, dtype=torch.float64)
    pad = (kernel_size - 1) // 2
    down = SparseConv3d(3, 4, kernel_size, stride=2, backend="torch").double()
    x = SparseVoxels(feats, coords)
    y = down(x)
    ref = F.conv3d(to_dense(feats, coords, GRID), conv3d_weight(down), stride=2, padding=pad)
    torch.testing.assert_close(y.feats, at_sites(ref, y.coords))

    up = SparseConv3d(4, 5, kernel_size, stride=2, transposed=True, backend="torch").double()
    coarse_feats = torch.randn(len(y.coords), 4, dtype=torch.float64)
    z = up(y.replace(coarse_feats))
    assert torch.equal(z.coords, coords)  # back to the stored finer sites
    size = (GRID // 2 - 1) * 2 - 2 * pad + kernel_size
    w = up.weight.reshape(*(kernel_size,) * 3, 4, 5).permute(3, 4, 0, 1, 2)
    ref = F.conv_transpose3d(to_dense(coarse_feats, y.coords, GRID // 2), w, stride=2, padding=pad,
                             output_padding=GRID - size)
    torch.testing.assert_close(z.feats, at_sites(ref, coords))


def test_sparse_conv_gradients_match_finite_differences():
    coords = random_sites(40, grid=4, batches=1)
    feats = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    convs = [SparseConv3d(2, 2, 3, backend="torch").double(), SparseConv3d(2, 2, 2, 2, backend="torch").double(),
             SparseConv3d(2, 2, 2, 2, transposed=True, backend="torch").double()]

    weights = [c.weight.detach().clone().requires_grad_(True) for c in convs]

    def functional(f, w0, w1, w2):  # the three convs as a function of input and weights
        saved = [c.weight for c in convs]
        try:
            for c, w in zip(convs, (w0, w1, w2)):
                del c.weight
                c.weight = w
            x = convs[2](convs[1](convs[0](SparseVoxels(f, coords))))
            return x.feats
        finally:
            for c, w in zip(convs, saved):
                del c.weight
                c.weight = w

    assert torch.autograd.gradcheck(functional, (feats, *weights), eps=1e-6, atol=1e-5, fast_mode=True)


# ---------------------------------------------------------------- spconv backend parity

needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv (spconv.pytorch) is not installed")


def test_weight_layout_round_trip():
    w = torch.randn(27, 3, 5)
    krsc = to_spconv_weight(w, 3)
    assert krsc.shape == (5, 3, 3, 3, 3)
    assert torch.equal(from_spconv_weight(krsc), w)


@needs_spconv
def test_spconv_backend_gives_same_outputs_for_same_weights():
    torch.manual_seed(2)
    coords = random_sites(300, grid=9)  # odd extent: spconv must not drop the last row when striding
    feats = torch.randn(len(coords), 3)
    outs = {}
    for backend in ("torch", "spconv"):
        torch.manual_seed(3)
        subm = SparseConv3d(3, 4, 3, backend=backend)
        down = SparseConv3d(4, 6, 2, stride=2, backend=backend)
        up = SparseConv3d(6, 5, 2, stride=2, transposed=True, backend=backend)
        with torch.no_grad():  # spconv's CPU build is forward-only
            x = subm(SparseVoxels(feats, coords))
            y = down(x)
            outs[backend] = (sorted_by_site(x), sorted_by_site(y), sorted_by_site(up(y)))
    for (tc, tf), (sc, sf) in zip(outs["torch"], outs["spconv"]):
        assert torch.equal(tc, sc)
        torch.testing.assert_close(tf, sf, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="backward"):
        subm(SparseVoxels(feats, coords))


@needs_spconv
def test_spconv_model_matches_torch_model():
    batch = synthetic_batch(n=800, seed=4)
    model = SPVCNN(4, torch.randn(3, 8), width=4, backend="torch").eval()
    twin = SPVCNN(4, torch.randn(3, 8), width=4, backend="spconv").eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], twin(batch)["logits"], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- SPVCNN


def synthetic_batch(n: int = 1500, scans: int = 2, voxel: float = 0.05, seed: int = 0) -> dict:
    """Scans of a ground plane plus a box, with Pointcept-style grid coords and offsets; label 1 = box."""
    g = torch.Generator().manual_seed(seed)
    parts = {"coord": [], "feat": [], "grid_coord": [], "segment": []}
    for _ in range(scans):
        ground = torch.rand(n // 2, 3, generator=g) * torch.tensor([3.0, 3.0, 0.02])
        box = torch.rand(n - n // 2, 3, generator=g) * 0.6 + torch.tensor([1.0, 1.0, 0.3])
        coord = torch.cat([ground, box])
        parts["coord"].append(coord)
        parts["feat"].append(torch.cat([coord, torch.rand(n, 1, generator=g)], 1))
        parts["grid_coord"].append(torch.floor((coord - coord.min(0).values) / voxel).int())
        parts["segment"].append(torch.cat([torch.zeros(n // 2), torch.ones(n - n // 2)]).long())
    batch = {k: torch.cat(v) for k, v in parts.items()}
    batch["offset"] = torch.arange(1, scans + 1) * n
    return batch


def test_spvcnn_forward_backward_shapes_and_finite_gradients_for_every_parameter():
    torch.manual_seed(0)
    batch = synthetic_batch()
    emb = torch.randn(5, 16)
    model = SPVCNN(4, emb, width=8, backend="torch")
    out = model(batch)
    n = batch["coord"].shape[0]
    assert out["logits"].shape == (n, 5)
    assert out["point_features"].shape == (n, model.feature_dim)
    # logits are a temperature times cosine similarities against the normalised class embeddings
    cos = out["embeddings"] @ F.normalize(emb, dim=1).t()
    torch.testing.assert_close(out["logits"], model.logit_scale.exp() * cos)
    loss = pseudo_label_loss(out["logits"], batch["segment"], class_weights_from_counts([1, 1, 1, 1, 1]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert not model.class_embeddings.requires_grad


def test_spvcnn_prediction_does_not_depend_on_point_order():
    batch = synthetic_batch(n=600, seed=1)
    model = SPVCNN(4, torch.randn(3, 8), width=4, backend="torch").eval()
    perm = torch.cat([torch.randperm(600), 600 + torch.randperm(600)])
    shuffled = {k: (v[perm] if k != "offset" else v) for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(shuffled)["logits"], model(batch)["logits"][perm], rtol=1e-4, atol=1e-4)


def test_class_embedding_swap_changes_the_class_count_not_the_weights():
    batch = synthetic_batch(n=400)
    model = SPVCNN(4, torch.randn(5, 8), width=4, backend="torch").eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if k != "class_embeddings"}
    model.set_class_embeddings(torch.randn(7, 8))
    with torch.no_grad():
        assert model(batch)["logits"].shape == (800, 7)
    assert model.num_classes == 7
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(InputError, match="class_embeddings"):
        model.set_class_embeddings(torch.randn(7, 9))


def test_spvcnn_overfits_a_tiny_scene():
    torch.manual_seed(0)
    batch = synthetic_batch(n=500, scans=1)
    model = SPVCNN(4, torch.eye(2), width=4, channel_multipliers=(1, 2, 4, 2, 1), backend="torch")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(15):
        opt.zero_grad()
        loss = pseudo_label_loss(model(batch)["logits"], batch["segment"])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(batch)["logits"].argmax(1) == batch["segment"]).float().mean()
    assert accuracy > 0.95


def kitti_crop_batch(seq08, half_size: float = 4.0) -> dict:
    """Points of real scan 08/000000 within a square around 8 m ahead, Pointcept-style grid at 5 cm."""
    points = np.fromfile(seq08 / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    crop = points[(np.abs(points[:, 0] - 8) < half_size) & (np.abs(points[:, 1]) < half_size)]
    coord = torch.from_numpy(crop[:, :3].copy())
    return {"coord": coord, "feat": torch.from_numpy(crop.copy()), "offset": torch.tensor([len(crop)]),
            "grid_coord": torch.floor((coord - coord.min(0).values) / 0.05).int()}


def test_spvcnn_runs_on_a_real_kitti_crop(seq08):
    batch = kitti_crop_batch(seq08)
    n = batch["coord"].shape[0]
    model = SPVCNN(4, torch.randn(19, 8), width=4, backend="torch").eval()
    with torch.no_grad():
        out = model(batch)
    assert n > 1000
    assert out["logits"].shape == (n, 19) and torch.isfinite(out["logits"]).all()
    assert out["point_features"].abs().sum(1).gt(0).float().mean() > 0.9  # features reach (almost) every point


@needs_spconv
def test_spconv_and_torch_backends_agree_on_a_real_kitti_crop(seq08):
    batch = kitti_crop_batch(seq08, half_size=3.0)
    model = SPVCNN(4, torch.randn(19, 8), width=4, backend="torch").eval()
    twin = SPVCNN(4, torch.randn(19, 8), width=4, backend="spconv").eval()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], twin(batch)["logits"], rtol=1e-4, atol=1e-4)


def test_bad_batches_raise_input_error():
    batch = synthetic_batch(n=100)
    model = SPVCNN(4, torch.randn(2, 8), width=4, backend="torch")
    with pytest.raises(InputError, match="offset"):
        model({**batch, "offset": torch.tensor([100, 150])})
    with pytest.raises(InputError, match="missing keys"):
        model({k: v for k, v in batch.items() if k != "grid_coord"})


# ---------------------------------------------------------------- losses


def test_lovasz_is_zero_for_a_perfect_prediction():
    labels = torch.tensor([0, 2, 1, 1, -1])
    probs = F.one_hot(labels.clamp(min=0), 3).float()
    assert lovasz_softmax(probs, labels).item() == 0.0


def test_lovasz_small_case_by_hand():
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 1])
    # class 0: errors sorted (0.6 fg, 0.3 bg, 0.2 fg), Jaccard steps 1/2, 2/3, 1 -> grads 1/2, 1/6, 1/3
    # class 1: errors sorted (0.6 bg, 0.3 fg, 0.2 bg), Jaccard steps 1/2, 1, 1 -> grads 1/2, 1/2, 0
    expected = ((0.6 / 2 + 0.3 / 6 + 0.2 / 3) + (0.6 / 2 + 0.3 / 2)) / 2
    assert lovasz_softmax(probs, labels).item() == pytest.approx(expected, abs=1e-6)


def test_lovasz_on_hard_predictions_equals_one_minus_iou():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0])
    ious = [((pred == c) & (labels == c)).sum() / ((pred == c) | (labels == c)).sum() for c in range(3)]
    expected = 1 - torch.stack(ious).float().mean()
    assert lovasz_softmax(F.one_hot(pred, 3).float(), labels).item() == pytest.approx(expected.item(), abs=1e-6)
    # "present" skips classes without labels; "all" counts them (IoU 0 for a predicted absent class)
    labels_no2 = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    assert lovasz_softmax(F.one_hot(pred, 3).float(), labels_no2, classes="all") > lovasz_softmax(
        F.one_hot(pred, 3).float(), labels_no2)


def test_class_weights_inverse_sqrt_frequency_normalised():
    w = class_weights_from_counts([900, 100, 0])
    assert w[1] / w[0] == pytest.approx(3.0)  # sqrt(900 / 100)
    assert (0.9 * w[0] + 0.1 * w[1]).item() == pytest.approx(1.0)
    assert w[2] == w[1]  # unseen class gets the largest weight, not zero
    with pytest.raises(InputError):
        class_weights_from_counts([1, -1])


def test_weighted_cross_entropy_matches_torch_and_honours_point_weights():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, -1, 1, 0])
    cw = torch.tensor([1.0, 2.0, 0.5])
    ref = F.cross_entropy(logits, labels, weight=cw, ignore_index=-1)
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, cw), ref)
    pw = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # zero-weight points behave as ignored
    ref = F.cross_entropy(logits, torch.tensor([0, -1, 2, -1, -1, 0]), weight=cw, ignore_index=-1)
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, cw, pw), ref)
    assert weighted_cross_entropy(logits, torch.full((6,), -1), cw).item() == 0.0


def test_pseudo_label_loss_combines_lovasz_and_ce():
    torch.manual_seed(1)
    logits, labels = torch.randn(10, 4), torch.randint(0, 4, (10,))
    expected = 2.0 * lovasz_softmax(F.softmax(logits, 1), labels) + F.cross_entropy(logits, labels)
    torch.testing.assert_close(pseudo_label_loss(logits, labels, alpha=2.0), expected)


def test_kl_on_visible_counts_only_visible_points():
    torch.manual_seed(0)
    a = torch.randn(5, 4, requires_grad=True)
    assert kl_on_visible(a, a.detach().clone(), torch.ones(5, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-7)
    fused = torch.randn(5, 4)
    mask = torch.tensor([True, False, True, False, False])
    value = kl_on_visible(a, fused, mask)
    p = F.softmax(fused[mask], 1)
    expected = (p * (p.log() - F.log_softmax(a[mask], 1))).sum(1).mean()
    torch.testing.assert_close(value, expected)
    # changing an invisible point changes nothing
    fused2 = fused.clone()
    fused2[1] += 10
    torch.testing.assert_close(kl_on_visible(a, fused2, mask), value)
    none = kl_on_visible(a, fused, torch.zeros(5, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0 and torch.equal(a.grad, torch.zeros_like(a))


def test_kernel_map_offsets_cover_the_cube_in_conv3d_order():
    # Guards the weight layout: offset index (a*k + b)*k + c for offset (a, b, c).
    ctx = SparseContext()
    centre = torch.tensor([[0, 5, 5, 5]], dtype=torch.int32)
    neighbours = torch.tensor([[0, 5 + a, 5 + b, 5 + c] for a, b, c in itertools.product((-1, 0, 1), repeat=3)],
                              dtype=torch.int32)
    ctx.register(1, torch.unique(torch.cat([centre, neighbours]), dim=0))
    coords = ctx.coords[1]
    kmap = ctx.kernel_map(1, 3, 1)
    centre_row = int(torch.nonzero((coords == centre).all(1))[0])
    for k, in_rows, out_rows in kmap.pairs:
        hit = in_rows[out_rows == centre_row]
        assert len(hit) == 1
        d = (coords[hit[0], 1:] - centre[0, 1:] + 1).tolist()
        assert (d[0] * 3 + d[1]) * 3 + d[2] == k


def test_voxel_size_that_does_not_match_grid_coord_is_rejected():
    batch = synthetic_batch(n=200, voxel=0.1)
    model = SPVCNN(4, torch.randn(2, 8), width=4, voxel_size=0.05, backend="torch")
    with pytest.raises(InputError, match="voxel_size"):
        model(batch)


@pytest.mark.parametrize("stride", [1, 2])
def test_trilinear_devoxelize_reproduces_a_linear_field(stride):
    """Voxel features = their centre position; interpolating inside the grid gives the point position back."""
    g = torch.Generator().manual_seed(0)
    coord = torch.cat([torch.zeros(1, 3), 1.0 + 4.0 * torch.rand(300, 3, generator=g)])  # a point at the origin
    levels = PointLevels(coord, torch.floor(coord).int(), torch.zeros(301, dtype=torch.long), voxel_size=1.0)
    side = 6 // stride
    sites = torch.cartesian_prod(*[torch.arange(side)] * 3)
    voxels = SparseVoxels(((sites + 0.5) * stride).float(), torch.cat([torch.zeros(len(sites), 1), sites], 1).int(),
                          stride=stride)
    torch.testing.assert_close(devoxelize(voxels, levels)[1:], coord[1:])
    # nearest: the centre of the voxel holding the point
    expected = (torch.div(torch.floor(coord), stride, rounding_mode="floor") + 0.5) * stride
    torch.testing.assert_close(devoxelize(voxels, levels, trilinear=False), expected)


def test_voxelize_averages_points_per_voxel():
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    out = voxelize(feats, torch.tensor([1, 1, 0]), 3)
    torch.testing.assert_close(out, torch.tensor([[10.0, 0.0], [2.0, 3.0], [0.0, 0.0]]))


@needs_spconv
def test_spconv_cpu_submanifold_is_exact_with_several_threads():
    """spconv's CPU pair generation races across threads (issue #679); the backend runs it on one thread."""
    batch = synthetic_batch(n=800, seed=4)
    ctx = SparseContext()
    ctx.register(1, unpack_keys(torch.unique(pack_keys(torch.cat(
        [torch.repeat_interleave(torch.arange(2), 800)[:, None], batch["grid_coord"]], 1)))))
    coords = ctx.downsampled(1, 2)  # a flat, dense layout where the race showed up
    feats = torch.randn(len(coords), 3)
    ours = SparseConv3d(3, 4, 3, backend="torch")
    theirs = SparseConv3d(3, 4, 3, backend="spconv")
    theirs.load_state_dict(ours.state_dict())
    torch.set_num_threads(2)  # the autouse fixture restores the count afterwards
    with torch.no_grad():
        expected = ours(SparseVoxels(feats, coords)).feats
        for _ in range(3):
            torch.testing.assert_close(theirs(SparseVoxels(feats, coords)).feats, expected, rtol=1e-5, atol=1e-5)
    assert torch.get_num_threads() == 2  # and the backend put the caller's thread count back


def test_inference_path_folds_batchnorm_and_scores_without_embeddings_to_the_same_logits():
    """Eval mode with autograd runs the training layers; inference mode the folded ones: same logits."""
    batch = synthetic_batch(n=700, seed=5)
    model = SPVCNN(4, torch.randn(4, 8), width=4, backend="torch").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)
    reference = model(batch)["logits"].detach()  # grad enabled: nothing folded
    with torch.inference_mode():
        fast = model(batch, embeddings=False)
        slow_head = model.classify(fast["point_features"])[0]
    assert "embeddings" not in fast
    torch.testing.assert_close(fast["logits"], reference, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast["logits"], slow_head, rtol=1e-4, atol=1e-4)


def test_sparse_conv_saves_only_its_input_and_weight_for_backward():
    """Training memory: the conv's autograd node keeps the input features, not a gathered copy per tap."""
    coords = random_sites(300, grid=8)
    feats = torch.randn(len(coords), 6, requires_grad=True)
    conv = SparseConv3d(6, 5, 3, backend="torch")
    x = SparseVoxels(feats, coords)
    x.context.kernel_map(1, 3, 1)  # built outside the hooks: the map is shared by every layer at this stride
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = conv(x)
    pairs = sum(len(i) for _, i, _ in x.context.kernel_maps[(1, 3, 1)].pairs)
    assert pairs > 3 * len(coords)  # a gathered copy per tap would save > 3x the input
    assert sum(saved) == feats.numel() + conv.weight.numel()
    out.feats.sum().backward()
    assert feats.grad is not None and conv.weight.grad is not None


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (2, 2), (3, 2)])
def test_kernel_map_at_the_edge_of_the_packed_key_range_matches_the_map_inside(kernel_size, stride):
    """Sites next to the edge of the key layout take the per-query lookup path; the map is the same."""
    coords = random_sites(200, grid=10)
    edge = coords.clone()
    edge[:, 1:] -= 1 << 17  # x, y, z in [-2^17, -2^17 + 10): neighbours fall outside the key range
    maps = []
    for sites in (coords, edge):
        ctx = SparseContext()
        ctx.register(1, sites)
        kmap = ctx.kernel_map(1, kernel_size, stride)
        maps.append({(k, i, o) for k, ins, outs in kmap.pairs for i, o in zip(ins.tolist(), outs.tolist())})
    assert maps[0] == maps[1] and len(maps[0]) > 0


def test_recomputing_activations_gives_the_same_gradients_and_batchnorm_statistics():
    torch.manual_seed(0)
    batch = synthetic_batch(n=600, seed=6)
    twins = []
    for recompute in (False, True):
        torch.manual_seed(1)
        model = SPVCNN(4, torch.randn(3, 8), width=4, backend="torch", recompute=recompute).train()
        loss = pseudo_label_loss(model(batch, embeddings=False)["logits"], batch["segment"])
        loss.backward()
        twins.append(model)
    plain, recomputed = twins
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, a), b in zip(plain.named_buffers(), recomputed.buffers()):
        assert torch.equal(a, b), name  # running statistics counted the batch once
