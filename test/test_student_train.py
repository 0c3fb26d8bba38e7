"""Student training: data transforms, batching, the pseudo-label dataset, the loop, resume, backward distillation,
and the 2D branch's KL term."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from partlift_ros.student.data import (
    AugmentConfig, PseudoLabelDataset, add_features, augment, collate, grid_sample, make_sample,
    random_downsample,
)
from partlift_ros.types import IGNORE, InputError

from student_fixtures import write_gt_pseudo_label_run


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
def gt_run(tmp_path_factory, seq08):
    return write_gt_pseudo_label_run(tmp_path_factory.mktemp("label_run"), seq08, [0, 1])


def test_dataset_reads_pseudo_labels_confidence_and_pixels(gt_run, seq08):
    from partlift_ros.semantickitti import map_raw_labels

    ds = PseudoLabelDataset([gt_run], load_images=True)
    assert len(ds) == 2 and ds.class_names[0] == "car" and ds.text_embeddings.shape == (19, 16)
    s = ds[1]
    gt = map_raw_labels(np.fromfile(seq08 / "labels" / "000001.label", np.uint32))
    np.testing.assert_array_equal(s["segment"], gt)
    assert np.allclose(s["weight"], np.where(gt >= 0, 0.9, 0.0))
    assert s["image"].shape == (370, 1226, 3)
    vis = s["visible"]
    assert vis.sum() > 10000
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
