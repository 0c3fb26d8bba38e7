"""Student training: data transforms, batching, the pseudo-label dataset, the loop, resume, backward distillation,
and the 2D branch's KL term."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from partlift_ros.student.data import (
    AugmentConfig, PseudoLabelDataset, add_features, augment, collate, grid_sample, make_sample,
    random_downsample,
)
from partlift_ros.testing.student_runs import write_gt_pseudo_label_run, write_thinned_sequence
from partlift_ros.types import IGNORE, InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_sample(n=500, seed=0, image=None):
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.uniform(-5, 5, (n, 3)), rng.random((n, 1))], axis=1).astype(np.float32)
    return make_sample(points, segment=rng.integers(-1, 3, n), weight=rng.random(n),
                       pixel=rng.integers(0, 8, (n, 2)), image=image, name=f"s{seed}")


# ----------------------------------------------------------------------------------------- transforms
def test_grid_sample_keeps_one_point_per_voxel_and_inverse_maps_back():
    sample = random_sample(2000)
    voxel = 0.7
    cells = np.floor(sample["coord"] / voxel).astype(np.int64)
    cells -= cells.min(axis=0)
    for keep in ("first", "random"):
        out = grid_sample(sample, voxel, keep=keep, rng=np.random.default_rng(1))
        kept = out["grid_coord"]
        assert len(np.unique(kept, axis=0)) == len(kept) == len(np.unique(cells, axis=0))
        # Round trip: every input point's voxel is the voxel of the kept point it maps to ...
        np.testing.assert_array_equal(kept[out["inverse"]], cells)
        # ... and the kept rows are real input points with their own annotations.
        src = out["point_index"]
        np.testing.assert_array_equal(out["coord"], sample["coord"][src])
        np.testing.assert_array_equal(out["segment"], sample["segment"][src])
        np.testing.assert_array_equal(out["pixel"], sample["pixel"][src])
    assert "grid_coord" not in sample  # pure transform: the input is untouched


def test_grid_sample_random_choice_is_seeded_and_all_keeps_every_point():
    sample = random_sample(2000)
    a = grid_sample(sample, 1.0, keep="random", rng=np.random.default_rng(5))
    b = grid_sample(sample, 1.0, keep="random", rng=np.random.default_rng(5))
    c = grid_sample(sample, 1.0, keep="random", rng=np.random.default_rng(6))
    np.testing.assert_array_equal(a["point_index"], b["point_index"])
    assert not np.array_equal(a["point_index"], c["point_index"])
    full = grid_sample(sample, 1.0, keep="all")
    np.testing.assert_array_equal(full["inverse"], np.arange(2000))
    with pytest.raises(ValueError, match="rng"):
        grid_sample(sample, 1.0, keep="random")


def test_collate_concatenates_with_offsets_shifts_inverse_and_pads_images():
    samples = [
        add_features(grid_sample(random_sample(300, seed=s, image=np.full((h, w, 3), 10 * (s + 1), np.uint8)), 1.0))
        for s, (h, w) in enumerate([(4, 6), (5, 3)])
    ]
    batch = collate(samples)
    counts = [len(s["coord"]) for s in samples]
    assert batch["offset"].tolist() == [counts[0], counts[0] + counts[1]]
    assert batch["feat"].shape == (sum(counts), 4)
    np.testing.assert_array_equal(batch["feat"][:, :3].numpy(), np.concatenate([s["coord"] for s in samples]))
    assert batch["inverse_offset"].tolist() == [300, 600]
    # inverse of sample 1 points into sample 1's rows of the batch.
    np.testing.assert_array_equal(batch["inverse"][300:].numpy(), samples[1]["inverse"] + counts[0])
    assert batch["image"].shape == (2, 3, 5, 6)
    assert batch["image_size"].tolist() == [[6, 4], [3, 5]]
    assert torch.allclose(batch["image"][1, :, :5, :3], torch.full((3, 5, 3), 20 / 255))
    assert float(batch["image"][1, :, :, 3:].abs().sum()) == 0.0  # padding


def test_augmentation_stays_in_its_ranges():
    # Origin, x and z unit vectors reveal translation, scale and that rotation is about z only.
    base = np.array([[0, 0, 0, 0.5], [1, 0, 0, 0.5], [0, 0, 1, 0.5]], np.float32)
    scales, angles = [], []
    for seed in range(200):
        out = augment(make_sample(base), np.random.default_rng(seed), AugmentConfig(keep_ratio=1.0))
        c = out["coord"].astype(np.float64)
        t = c[0]
        assert np.all(np.abs(t) <= 0.5 + 1e-6)
        z_axis = c[2] - t
        assert np.allclose(z_axis[:2], 0, atol=1e-5)  # z stays vertical
        scales.append(z_axis[2])
        x_axis = c[1] - t
        assert np.isclose(np.linalg.norm(x_axis), z_axis[2], rtol=1e-5)  # isotropic
        angles.append(np.arctan2(x_axis[1], x_axis[0]))
        np.testing.assert_array_equal(out["strength"], base[:, 3:])
    assert 0.95 <= min(scales) and max(scales) <= 1.05 and max(scales) - min(scales) > 0.08
    assert np.ptp(angles) > 5.5  # the full circle is used


def test_random_downsampling_keeps_seventy_percent():
    sample = random_sample(1000)
    out = random_downsample(sample, 0.7, np.random.default_rng(0))
    assert len(out["coord"]) == 700
    assert np.all(np.diff(out["point_index"]) > 0)
    np.testing.assert_array_equal(out["weight"], sample["weight"][out["point_index"]])
    out = augment(sample, np.random.default_rng(0))
    assert len(out["coord"]) == 700


# ----------------------------------------------------------------------------------------- the real data
@pytest.fixture(scope="module")
def thin_seq(tmp_path_factory, seq08):
    """Frames 0 and 1 of sequence 08 with every 4th point."""
    return write_thinned_sequence(seq08, tmp_path_factory.mktemp("seq") / "08", [0, 1], step=4)


@pytest.fixture(scope="module")
def gt_run(tmp_path_factory, thin_seq):
    return write_gt_pseudo_label_run(tmp_path_factory.mktemp("label_run"), thin_seq, [0, 1])


def test_dataset_reads_pseudo_labels_confidence_and_pixels(gt_run, seq08):
    from partlift_ros.semantickitti import raw_to_train_ids

    ds = PseudoLabelDataset([gt_run], load_images=True)
    assert len(ds) == 2 and ds.class_names[0] == "car" and ds.text_embeddings.shape == (19, 16)
    s = ds[1]
    gt = raw_to_train_ids(np.fromfile(seq08 / "labels" / "000001.label", np.uint32))[::4]
    np.testing.assert_array_equal(s["segment"], gt)
    assert np.allclose(s["weight"], np.where(gt >= 0, 0.9, 0.0))
    assert s["image"].shape == (370, 1226, 3)
    vis = s["visible"]
    assert vis.sum() > 2500
    assert np.all((s["pixel"][vis] >= 0) & (s["pixel"][vis] < [1226, 370]))
    counts = ds.class_counts()
    assert counts.sum() == sum(int((ds[i]["segment"] >= 0).sum()) for i in range(2))
    # unit scores scale the weights of their unit's points only
    scores = np.ones(s["unit"].max() + 1, np.float32)
    scores[0] = 0.25
    ds.set_unit_scores(1, scores)
    w = ds[1]["weight"]
    in0 = s["unit"] == 0
    assert np.allclose(w[in0], 0.9 * 0.25) and np.allclose(w[~in0], s["weight"][~in0])


def test_dataset_reads_a_bag_source_from_its_spill_folder_and_keeps_no_sample_in_memory(gt_run, thin_seq, tmp_path):
    from partlift_ros.io.kitti2bag import kitti_to_bag

    bag = tmp_path / "seq.mcap"
    kitti_to_bag(thin_seq, bag)
    from_kitti = PseudoLabelDataset([gt_run], load_images=True)
    from_bag = PseudoLabelDataset([gt_run], sources=[bag], load_images=True)
    for i in (1, 0, 1):  # the bag is read once; later reads come from the spill folder
        a, b = from_kitti[i], from_bag[i]
        for key in ("coord", "strength", "segment", "weight", "visible", "pixel", "unit", "image"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    spilled = sorted(p.name for p in Path(from_bag._spill.name).rglob("*.npz"))
    assert spilled == ["000000.npz", "000001.npz"]
    assert not from_kitti._raw and not from_bag._raw  # nothing grows with the number of frames


def test_dataset_rejects_runs_with_different_class_lists(gt_run, tmp_path):
    import shutil

    import yaml

    other = tmp_path / "other"
    shutil.copytree(gt_run, other)
    data = yaml.safe_load((other / "classes.yaml").read_text())
    data["classes"][0] = "automobile"
    (other / "classes.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="differs"):
        PseudoLabelDataset([gt_run, other])


# ----------------------------------------------------------------------------------------- training


def tiny_config(**overrides):
    from partlift_ros.student.train import TrainConfig

    base = dict(epochs=2, batch_size=2, width=8, voxel_size=0.5, max_points=1500, lr=1e-2, image_channels=8,
                backend="torch", seed=3)
    base.update(overrides)
    return TrainConfig(**base)


def test_short_training_on_real_frames_lowers_the_loss_and_logs_metrics(gt_run, thin_seq, tmp_path):
    from partlift_ros.student.infer import load_student, predict
    from partlift_ros.student.train import train

    events = []
    summary = train([gt_run], tmp_path / "out", tiny_config(epochs=5, eval_every=4, eval_max_frames=1),
                    gt_sequence=thin_seq, progress=events.append)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(5))
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-2:]) < 0.8 * losses[0], losses
    assert all(r["loss_kl"] >= 0 and r["loss_fused"] > 0 for r in rows)  # the 2D branch took part
    assert [("miou" in r) for r in rows] == [False, False, False, True, True]  # every 4th epoch and the last
    assert 0.0 <= rows[-1]["miou"] <= 1.0 and summary["final_miou"] == rows[-1]["miou"]
    assert sum(e["kind"] == "step" for e in events) == 5
    model, names = load_student(summary["checkpoint"])
    assert names == PseudoLabelDataset([gt_run]).class_names and model.voxel_size == 0.5
    points = np.fromfile(thin_seq / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
    labels, conf = predict(model, points)
    assert labels.shape == (len(points),) and np.all((conf > 0) & (conf <= 1))


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_takes_the_same_steps_as_an_uninterrupted_run(gt_run, tmp_path):
    """Two rounds (backward distillation between them), interrupted at the end of round 1."""
    from partlift_ros.student.checkpoint import read_checkpoint
    from partlift_ros.student.train import CHECKPOINT_DIR, LAST, train

    cfg = tiny_config(rounds=2, epochs=2, use_2d=False)
    full = train([gt_run], tmp_path / "full", cfg)

    def crash_after_round_one(event):
        if event["kind"] == "epoch" and (event["round"], event["epoch"]) == (0, 1):
            raise Crash

    with pytest.raises(Crash):
        train([gt_run], tmp_path / "resumed", cfg, progress=crash_after_round_one)
    with pytest.raises(InputError, match="already holds"):
        train([gt_run], tmp_path / "resumed", cfg)
    resumed = train([gt_run], tmp_path / "resumed", cfg, resume=True)
    assert resumed["resumed_from"] == {"round": 0, "epoch": 1} and resumed["epochs_run"] == 2
    assert len(resumed["unit_agreement_per_round"]) == 1
    assert resumed["unit_agreement_per_round"] == full["unit_agreement_per_round"]

    a, b = (read_checkpoint(tmp_path / run / CHECKPOINT_DIR / LAST) for run in ("full", "resumed"))
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["unit_scores"], b["unit_scores"]):
        np.testing.assert_array_equal(sa, sb)
    assert any(s is not None and (s < 1).any() for s in a["unit_scores"])  # round 2 used re-scored units
    rows_a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in rows_a] == [json.loads(r)["loss"] for r in rows_b]


def test_resume_refuses_a_different_architecture(gt_run, tmp_path):
    from partlift_ros.student.train import train

    train([gt_run], tmp_path / "o", tiny_config(epochs=1, use_2d=False))
    with pytest.raises(InputError, match="width was 8, now 16"):
        train([gt_run], tmp_path / "o", tiny_config(epochs=2, use_2d=False, width=16), resume=True)


# ----------------------------------------------------------------------------------------- backward distillation
def test_unit_agreement_is_the_share_of_agreeing_pseudo_labelled_points():
    from partlift_ros.student.train import unit_agreement

    segment = np.array([0, 0, 0, 0, 1, 1, IGNORE, 2, 2, 1])
    unit = np.array([0, 0, 0, 0, 1, 1, 1, IGNORE, 3, 3])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 2, 0, 1])
    scores = unit_agreement(pred, segment, unit)
    # unit 0: 3 of 4; unit 1: 1 of 2 (the ignored point does not count); unit 2: no points -> 1;
    # unit 3: 1 of 2. The point without a unit is not scored.
    np.testing.assert_allclose(scores, [0.75, 0.5, 1.0, 0.5])
    assert unit_agreement(pred, segment, unit, num_units=6).shape == (6,)


# ----------------------------------------------------------------------------------------- 2D branch
def test_2d_branch_fuses_and_distils_on_visible_points_only():
    from partlift_ros.student.fusion2d import Fusion2D, text_classifier
    from partlift_ros.student.checkpoint import build_model
    from partlift_ros.student.losses import kl_on_visible

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 400
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    visible = rng.random(n) < 0.5
    pixel = np.where(visible[:, None], rng.integers(0, [60, 40], (n, 2)), -1)
    sample = make_sample(np.concatenate([rng.uniform(-8, 8, (n, 3)), rng.random((n, 1))], 1),
                         visible=visible, pixel=pixel, image=image)
    batch = collate([add_features(grid_sample(sample, 0.5, keep="all"))])
    emb = torch.nn.functional.normalize(torch.randn(5, 12), dim=1)
    model = build_model({"in_channels": 4, "width": 8, "voxel_size": 0.5, "backend": "torch"}, emb.numpy())
    fusion = Fusion2D(model.feature_dim, image_channels=8)
    model.train(), fusion.train()
    out = model(batch)
    classify = text_classifier(model)
    assert torch.allclose(classify(out["point_features"]), out["logits"], atol=1e-5)

    fused = fusion(batch, out["point_features"], classify, out["logits"])
    vis = torch.from_numpy(visible)
    assert torch.equal(fused[~vis], out["logits"][~vis])
    assert not torch.allclose(fused[vis], out["logits"][vis])
    # A different image changes the fused logits of visible points only.
    other = dict(batch, image=torch.rand_like(batch["image"]))
    fused_other = fusion(other, out["point_features"], classify, out["logits"])
    assert torch.equal(fused_other[~vis], fused[~vis]) and not torch.allclose(fused_other[vis], fused[vis])

    logits_3d = out["logits"].detach().requires_grad_(True)
    kl = kl_on_visible(logits_3d, fused, vis)
    kl.backward()
    assert float(kl.detach()) > 0
    assert float(logits_3d.grad[~vis].abs().max()) == 0.0
    assert float(logits_3d.grad[vis].abs().max()) > 0.0


def test_pixel_features_are_bilinear_samples_at_pixel_centres():
    from partlift_ros.student.fusion2d import sample_pixel_features

    # Feature map at 1/4 of a 16 x 24 image; channel 0 ramps along x, channel 1 along y, sample 1 is offset by 10.
    h, w, stride = 4, 6, 4
    ramp_x = torch.arange(w, dtype=torch.float32).expand(h, w)
    ramp_y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    fmap = torch.stack([torch.stack([ramp_x, ramp_y]), torch.stack([ramp_x, ramp_y]) + 10])
    pixel = torch.tensor([[6, 10], [9, 5], [13, 2], [2, 13]])
    sample_of_point = torch.tensor([0, 0, 1, 1])
    out = sample_pixel_features(fmap, pixel, sample_of_point, (16, 24))
    expected = ((pixel.float() + 0.5) / stride - 0.5).clamp(min=0) + 10 * sample_of_point[:, None]
    assert torch.allclose(out, expected, atol=1e-5)


def test_cli_commands_train_then_evaluate_a_student(gt_run, thin_seq, tmp_path):
    import typer
    from typer.testing import CliRunner

    from partlift_ros.cli import student_commands

    app = typer.Typer()
    app.command("train")(student_commands.train)
    app.command("noop")(lambda: None)  # two commands: typer keeps the "train" name
    result = CliRunner().invoke(app, [
        "train", str(gt_run), "--out", str(tmp_path / "s"), "--epochs", "1", "--width", "8", "--voxel-size", "0.5",
        "--max-points", "1500", "--no-2d",
    ])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s" / "student.pt").is_file() and "epochs run now" in result.output
    from partlift_ros.student.checkpoint import read_checkpoint

    lean, last = read_checkpoint(tmp_path / "s" / "student.pt"), read_checkpoint(tmp_path / "s" / "checkpoints" / "last.pt")
    assert "optimizer" not in lean and "fusion" not in lean and "optimizer" in last  # only last.pt resumes
    again = CliRunner().invoke(app, ["train", str(gt_run), "--out", str(tmp_path / "s"), "--epochs", "1"])
    assert again.exit_code == 2 and "already holds" in again.output

    from partlift_ros.cli import app as partlift
    from partlift_ros.io.writers import read_run_labels

    evaluated = CliRunner().invoke(partlift, [
        "eval", str(tmp_path / "pred"), str(thin_seq), "--student", str(tmp_path / "s" / "student.pt"),
        "--tta", "1", "--json", str(tmp_path / "eval.json"),
    ])
    assert evaluated.exit_code == 0, evaluated.output
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["frames"] == 2 and 0 <= saved["miou_all"] <= 1
    assert saved["ceiling_miou_front"] is None  # a student has no superpoints
    # The student labels every point from the LiDAR alone.
    labels, superpoints = read_run_labels(tmp_path / "pred", 0)
    assert (labels >= 0).all() and (superpoints == -1).all()


def test_sphere_crop_keeps_the_nearest_points_to_a_scan_point():
    from partlift_ros.student.data import sphere_crop

    sample = random_sample(1000)
    out = sphere_crop(sample, 100, np.random.default_rng(4))
    assert len(out["coord"]) == 100
    kept = np.zeros(1000, bool)
    kept[out["point_index"]] = True
    # Some centre among the scan's points has every kept point closer than every dropped one.
    d = np.linalg.norm(sample["coord"][:, None] - sample["coord"][None], axis=2)
    assert any(d[c, kept].max() <= d[c, ~kept].min() for c in np.flatnonzero(kept))
    assert sphere_crop(sample, 5000, np.random.default_rng(4)) is sample


# ----------------------------------------------------------------------------------------- checkpoints
def test_student_pt_at_the_default_width_is_under_20_mb_and_holds_only_what_inference_needs():
    import io

    from partlift_ros.student.checkpoint import (
        QUANTISED_KEY, REQUIRED_KEYS, build_model, model_weights, student_state,
    )
    from partlift_ros.student.train import TrainConfig

    cfg = TrainConfig()
    args = {"in_channels": 4, "width": cfg.width, "voxel_size": cfg.voxel_size, "backend": "torch"}
    model = build_model(args, np.eye(19, 512, dtype=np.float32))
    state = student_state(model, args, [f"c{i}" for i in range(19)], np.eye(19, 512, dtype=np.float32), cfg)
    buf = io.BytesIO()
    torch.save(state, buf)
    assert sum(p.numel() for p in model.parameters()) > 11_000_000  # 47 MB in float32
    assert buf.tell() <= 20 * 2**20, buf.tell()
    assert set(state) == {*REQUIRED_KEYS, QUANTISED_KEY}
    # Every weight comes back: int8 ones within half a quantisation step, the rest exactly.
    restored = model_weights(state)
    for name, value in model.state_dict().items():
        if name in state[QUANTISED_KEY]:
            step = state[QUANTISED_KEY][name]["scale"][:, None, :]
            assert bool(((restored[name] - value).abs() <= step / 2 + 1e-7).all()), name
        else:
            assert torch.equal(restored[name], value), name


def random_student(width=8):
    """A seeded random student with non-trivial BatchNorm statistics (predictions vary over a scan)."""
    from partlift_ros.student.checkpoint import build_model
    from partlift_ros.student.train import TrainConfig

    torch.manual_seed(0)
    cfg = TrainConfig(width=width)
    args = {"in_channels": 4, "width": width, "voxel_size": cfg.voxel_size, "backend": "torch"}
    emb = torch.nn.functional.normalize(torch.randn(19, 16), dim=1).numpy()
    model = build_model(args, emb)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.2)
    return model.eval(), args, emb, cfg


def test_int8_student_pt_labels_a_real_scan_like_the_float32_weights(seq08):
    from partlift_ros.io.kitti import read_scan
    from partlift_ros.student.checkpoint import model_from_checkpoint, student_state
    from partlift_ros.student.infer import predict

    model, args, emb, cfg = random_student()
    stored = model_from_checkpoint(student_state(model, args, [str(i) for i in range(19)], emb, cfg)).eval()
    points = read_scan(seq08 / "velodyne" / "000000.bin")[::3]
    full, _ = predict(model, points)
    lean, _ = predict(stored, points)
    assert np.bincount(full).max() < 0.9 * len(full)  # not one class everywhere: the agreement means something
    assert (full == lean).mean() >= 0.995


def test_predict_keeps_non_finite_points_at_their_index_unlabelled(seq08):
    # The one non-finite policy (points.py) for every caller of predict: node, predict-run, eval, rescoring.
    from partlift_ros.io.kitti import read_scan
    from partlift_ros.student.infer import predict

    model = random_student()[0]
    points = read_scan(seq08 / "velodyne" / "000000.bin")[::6]
    holes = np.array([0, 10, 11, 500])
    holed = np.insert(points, holes - np.arange(len(holes)), np.nan, axis=0)
    holed[holes, 3] = 0.0
    label, confidence = predict(model, holed)
    expected_label, expected_confidence = predict(model, points)
    keep = np.ones(len(holed), bool)
    keep[holes] = False
    assert (label[holes] == IGNORE).all() and (confidence[holes] == 0).all()
    np.testing.assert_array_equal(label[keep], expected_label)
    np.testing.assert_array_equal(confidence[keep], expected_confidence)
    with pytest.raises(InputError, match="finite"):
        predict(model, np.full((5, 4), np.nan, np.float32))


def test_dataset_leaves_out_non_finite_points_of_its_source(thin_seq, tmp_path):
    import shutil

    seq = shutil.copytree(thin_seq, tmp_path / "seq")
    run = write_gt_pseudo_label_run(tmp_path / "run", seq, [0])
    scan_file = seq / "velodyne" / "000000.bin"
    points = np.fromfile(scan_file, np.float32).reshape(-1, 4)
    clean = PseudoLabelDataset([run])[0]
    points[[3, 7], :3] = np.nan  # the source now has two no-return rows (kept at their index by the reader)
    points.tofile(scan_file)
    sample = PseudoLabelDataset([run])[0]
    keep = np.ones(len(points), bool)
    keep[[3, 7]] = False
    assert np.isfinite(sample["coord"]).all() and len(sample["coord"]) == len(points) - 2
    for key in ("coord", "segment", "weight", "unit", "pixel", "visible"):
        np.testing.assert_array_equal(sample[key], clean[key][keep], err_msg=key)


def test_a_float32_checkpoint_with_an_optimiser_still_loads_for_inference(tmp_path):
    """last.pt, and student.pt files written before the lean format, hold float32 weights and training state."""
    from partlift_ros.student.checkpoint import build_model, save_checkpoint, student_state
    from partlift_ros.student.infer import load_student
    from partlift_ros.student.train import TrainConfig

    args = {"in_channels": 4, "width": 4, "voxel_size": 0.5, "backend": "torch"}
    emb = np.eye(3, 8, dtype=np.float32)
    model = build_model(args, emb)
    old = {**student_state(model, args, ["a", "b", "c"], emb, TrainConfig(), quantise=False),
           "optimizer": torch.optim.AdamW(model.parameters()).state_dict()}
    save_checkpoint(tmp_path / "old.pt", old)
    loaded, names = load_student(tmp_path / "old.pt")
    assert names == ["a", "b", "c"] and not loaded.training
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
