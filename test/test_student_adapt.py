"""Fast adaptation of the student to a new class list: the support rule, head-only vs full fine-tuning,
the adapted checkpoint, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partlift_ros.config import SEMANTIC_KITTI_CLASSES
from partlift_ros.io.writers import read_run_labels
from partlift_ros.student.adapt import adapt_head, choose_support, coverage_order
from partlift_ros.testing.student_runs import write_gt_pseudo_label_run, write_merged_run, write_thinned_sequence
from partlift_ros.types import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A coarser vocabulary than the one the student was trained on; "sky" never occurs in a LiDAR scan.
MERGED = {
    "vehicle": ["car", "bicycle", "motorcycle", "truck", "other-vehicle"],
    "ground": ["road", "parking", "sidewalk", "other-ground", "terrain"],
    "vegetation": ["vegetation", "trunk"],
    "structure": ["building", "fence", "pole", "traffic-sign"],
    "sky": [],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, seq08):
    root = tmp_path_factory.mktemp("adapt")
    seq = write_thinned_sequence(seq08, root / "08", [0, 1], step=4)
    gt = write_gt_pseudo_label_run(root / "gt", seq, [0, 1])
    return {"gt": gt, "merged": write_merged_run(gt, root / "merged", MERGED)}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A randomly initialised student on the 19 SemanticKITTI classes, saved as `partlift train` saves it."""
    from partlift_ros.student.checkpoint import build_model, save_checkpoint, student_state
    from partlift_ros.student.train import TrainConfig

    torch.manual_seed(0)
    emb = np.random.default_rng(0).normal(size=(len(SEMANTIC_KITTI_CLASSES), 16)).astype(np.float32)
    args = {"in_channels": 4, "width": 8, "voxel_size": 0.5, "backend": "torch"}
    model = build_model(args, emb)
    path = tmp_path_factory.mktemp("ckpt") / "student.pt"
    save_checkpoint(path, student_state(model, args, SEMANTIC_KITTI_CLASSES, emb, TrainConfig(width=8, voxel_size=0.5)))
    return path


# ----------------------------------------------------------------------------------------- support rule
def test_coverage_rule_fills_every_class_quota_before_adding_bulk():
    hist = np.array([
        [1000, 0, 0],   # many points, one class
        [900, 10, 0],
        [0, 0, 300],    # the only frame with class 2
        [500, 400, 0],  # fills the quotas of classes 0 and 1 at once
    ])
    # Gains with quota 200: 200, 210, 200, 400 -> frame 3; then only frame 2 fills anything (class 2);
    # then nothing is unmet and the frame with the most points wins.
    assert coverage_order(hist, 3, target_points=200) == [3, 2, 0]
    # A "most labelled points" rule would take frames 0 and 1 and never see class 2.
    assert coverage_order(hist, 10, target_points=200) == [3, 2, 0, 1]
    # Ties in gain and total go to the earlier frame.
    assert coverage_order(np.array([[5, 0], [0, 5]]), 1, target_points=100) == [0]


def test_choose_support_counts_only_the_requested_classes(runs):
    from partlift_ros.student.data import PseudoLabelDataset

    ds = PseudoLabelDataset([runs["gt"]])
    per_frame = [read_run_labels(runs["gt"], i)[0] for i in (0, 1)]
    for name in ("person", "vegetation"):
        c = SEMANTIC_KITTI_CLASSES.index(name)
        counts = [int((seg == c).sum()) for seg in per_frame]
        if counts[0] != counts[1]:
            assert choose_support(ds, 1, classes=[name], target_points=10**9) == [int(np.argmax(counts))]
    assert sorted(choose_support([runs["gt"]], 5)) == [0, 1]  # k larger than the runs: every frame once


# ----------------------------------------------------------------------------------------- adaptation
def test_head_adaptation_trains_only_the_head_and_swaps_the_class_list(runs, student, tmp_path):
    from partlift_ros.student.checkpoint import model_weights, read_checkpoint
    from partlift_ros.student.infer import load_student, predict

    out = tmp_path / "adapted.pt"
    summary = adapt_head(student, [runs["merged"]], k_frames=2, inner_steps=40, out=out)
    assert summary["mode"] == "head" and summary["classes"] == list(MERGED)
    assert sorted(summary["support"]) == ["merged/000000", "merged/000001"]
    assert summary["uncovered_classes"] == ["sky"] and summary["support_points"]["ground"] > 0
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["agreement_after"] > summary["agreement_before"] + 0.15, summary
    assert summary["balanced_after"] > summary["balanced_before"]
    assert summary["adapt_seconds"] > 0 and summary["checkpoint"] == str(out)

    before, after = model_weights(read_checkpoint(student)), model_weights(read_checkpoint(out))
    changed = {k for k in before if k != "class_embeddings" and not torch.equal(before[k], after[k])}
    assert changed and changed <= {"head.weight", "head.bias", "logit_scale"}, changed
    assert "head.weight" in changed
    emb = np.load(runs["merged"] / "text_embeddings.npy")
    saved = read_checkpoint(out)
    np.testing.assert_allclose(saved["text_embeddings"], emb)
    np.testing.assert_allclose(after["class_embeddings"].numpy(), emb, atol=1e-6)
    assert saved["adaptation"]["from_checkpoint"] == str(student)

    model, names = load_student(out)
    assert names == list(MERGED) and model.num_classes == 5
    points = np.fromfile(runs["merged"].parent / "08" / "velodyne" / "000000.bin", np.float32).reshape(-1, 4)
    labels, _ = predict(model, points)
    assert labels.min() >= 0 and labels.max() < 5


def test_subset_in_any_order_ignores_the_classes_left_out(runs, student):
    summary = adapt_head(student, [runs["merged"]], classes=["ground", "vehicle"], k_frames=1, inner_steps=0)
    assert summary["classes"] == ["ground", "vehicle"] and summary["inner_steps"] == 0
    assert summary["agreement_after"] == summary["agreement_before"]  # no step: nothing changed
    # Only ground (merged id 1) and vehicle (id 0) points count: the histograms, the support choice and the scores.
    assert set(summary["support_points"]) == {"ground", "vehicle"}
    seg = [read_run_labels(runs["merged"], i)[0] for i in (0, 1)]
    hist = np.array([[(s == 1).sum(), (s == 0).sum()] for s in seg])
    assert summary["support"] == [f"merged/{coverage_order(hist, 1, 500)[0]:06d}"]
    assert all(v > 0 for v in summary["support_points"].values())


def test_full_fine_tuning_moves_the_backbone_too(runs, student, tmp_path):
    from partlift_ros.student.checkpoint import model_weights, read_checkpoint

    out = tmp_path / "full.pt"
    summary = adapt_head(student, [runs["merged"]], k_frames=1, inner_steps=4, mode="full", out=out, max_points=1500)
    assert summary["trainable_parameters"] > 10 * adapt_head(
        student, [runs["merged"]], k_frames=1, inner_steps=1)["trainable_parameters"]
    before, after = model_weights(read_checkpoint(student)), model_weights(read_checkpoint(out))
    assert not torch.equal(before["stem.0.conv.weight"], after["stem.0.conv.weight"])
    # BatchNorm keeps the statistics it was trained with (a few steps on one frame cannot re-estimate them).
    assert torch.equal(before["stem.0.bn.running_mean"], after["stem.0.bn.running_mean"])
    assert summary["loss_last"] < summary["loss_first"]
    assert summary["agreement_after"] > summary["agreement_before"] + 0.1, summary


def test_adaptation_errors_name_the_problem(runs, student, tmp_path):
    with pytest.raises(InputError, match=r"\['lorry'\] are not in the support runs' class list"):
        adapt_head(student, [runs["merged"]], classes=["vehicle", "lorry"])
    with pytest.raises(InputError, match="no support runs"):
        adapt_head(student, [])
    with pytest.raises(InputError, match="k_frames >= 1"):
        adapt_head(student, [runs["merged"]], k_frames=0)
    with pytest.raises(InputError, match="hold no pseudo-label of the classes \\['sky'\\]"):
        adapt_head(student, [runs["merged"]], classes=["sky"])
    with pytest.raises(InputError, match="more than once"):
        adapt_head(student, [runs["merged"]], classes=["ground", "ground"])
    with pytest.raises(InputError, match="mode"):
        adapt_head(student, [runs["merged"]], mode="tail")
    narrow = write_merged_run(runs["gt"], tmp_path / "narrow", MERGED, embedding_dim=8)
    with pytest.raises(InputError, match="8 dimensions.*trained with 16"):
        adapt_head(student, [narrow])
    with pytest.raises(InputError, match="distinct positions"):
        adapt_head(student, [runs["merged"]], support_frames=[0, 0])
    with pytest.raises(InputError, match="differs"):
        adapt_head(student, [runs["merged"], runs["gt"]])


# ----------------------------------------------------------------------------------------- command line
def test_cli_adapt_compares_head_and_full_and_saves_the_chosen_mode(runs, student, tmp_path):
    import typer
    from typer.testing import CliRunner

    from partlift_ros.cli.adapt_command import adapt
    from partlift_ros.student.infer import load_student

    app = typer.Typer()
    app.command("adapt")(adapt)
    app.command("noop")(lambda: None)  # two commands: typer keeps the "adapt" name
    out = tmp_path / "cli.pt"
    result = CliRunner().invoke(app, [
        "adapt", str(student), "--classes", "vegetation, ground ,vehicle", "--support", str(runs["merged"]),
        "--out", str(out), "--frames", "1", "--steps", "3", "--compare", "--max-points", "1500",
    ])
    assert result.exit_code == 0, result.output
    assert "head only" in result.output and "full fine-tuning" in result.output and "agreement" in result.output
    _, names = load_student(out)
    assert names == ["vegetation", "ground", "vehicle"]
    bad = CliRunner().invoke(app, ["adapt", str(student), "--classes", "lorry", "--support", str(runs["merged"]),
                                   "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "lorry" in bad.output and not (tmp_path / "x.pt").exists()
