"""Metrics and SemanticKITTI label handling: synthetic cases with hand-computed answers + real labels."""

from __future__ import annotations

import numpy as np
import pytest

from partlift_ros.config import SEMANTIC_KITTI_CLASSES
from partlift_ros.metrics import (
    ConfusionAccumulator,
    agreement_beyond_chance,
    confusion_matrix,
    harmonic_iou,
    instance_ceiling,
    mean_iou,
    per_class_iou,
    pseudo_label_quality,
)
from partlift_ros.semantickitti import (
    PALETTE, colorize, raw_to_train_ids, read_raw_labels, read_train_ids, run_to_train_ids, train_to_run_ids,
)
from partlift_ros.types import IGNORE, InputError


def test_confusion_counts_rows_gt_cols_pred_and_misses_in_last_column():
    gt = np.array([0, 0, 1, 1, 2, IGNORE])
    pred = np.array([0, 1, 1, IGNORE, 2, 0])
    conf = confusion_matrix(pred, gt, 3)
    expected = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]])
    np.testing.assert_array_equal(conf, expected)


def test_iou_by_hand_and_miou_skips_absent_classes():
    gt = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, IGNORE])
    iou = per_class_iou(confusion_matrix(pred, gt, 4))
    # class 0: tp 2, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 1 -> 1/3; classes 2, 3 absent -> NaN
    np.testing.assert_allclose(iou[:2], [2 / 3, 1 / 3])
    assert np.isnan(iou[2:]).all()
    assert mean_iou(confusion_matrix(pred, gt, 4)) == pytest.approx(0.5)


def test_a_predicted_but_absent_class_counts_as_zero():
    gt = np.array([0, 0])
    pred = np.array([0, 2])
    iou = per_class_iou(confusion_matrix(pred, gt, 3))
    assert iou[2] == 0.0 and np.isnan(iou[1])
    assert mean_iou(confusion_matrix(pred, gt, 3)) == pytest.approx((0.5 + 0.0) / 2)


def test_harmonic_iou():
    gt = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 2, 2])
    res = harmonic_iou(confusion_matrix(pred, gt, 3), unseen=[1])
    seen = (2 / 3 + 1.0) / 2  # class 0: tp 2 fp 1; class 2 perfect
    unseen = 0.5
    assert res["seen"] == pytest.approx(seen)
    assert res["unseen"] == pytest.approx(unseen)
    assert res["hiou"] == pytest.approx(2 * seen * unseen / (seen + unseen))
    all_wrong = harmonic_iou(confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2), unseen=[1])
    assert all_wrong["hiou"] == 0.0
    with pytest.raises(InputError):
        harmonic_iou(np.zeros((3, 4)), unseen=[5])


def test_pseudo_label_accuracy_and_coverage():
    gt = np.array([0, 1, 1, 2, IGNORE, IGNORE])
    pred = np.array([0, 1, IGNORE, 0, 1, IGNORE])
    q = pseudo_label_quality(pred, gt)
    assert q["coverage"] == pytest.approx(3 / 4)
    assert q["accuracy"] == pytest.approx(2 / 3)
    assert q["labelled_points"] == 4


def test_instance_ceiling_takes_majority_and_counts_unclustered_points_as_misses():
    sp = np.array([0, 0, 0, 1, 1, IGNORE, 2])
    gt = np.array([3, 3, 1, 2, IGNORE, 1, IGNORE])
    pred = instance_ceiling(sp, gt, 4)
    np.testing.assert_array_equal(pred, [3, 3, 3, 2, 2, IGNORE, IGNORE])
    conf = confusion_matrix(pred, gt, 4)
    assert conf[1, 4] == 1  # the unclustered class-1 point is a miss
    perfect = instance_ceiling(np.array([0, 0, 1, 1]), np.array([2, 2, 0, 0]), 3)
    assert mean_iou(confusion_matrix(perfect, np.array([2, 2, 0, 0]), 3)) == 1.0


def test_accumulator_equals_confusion_of_concatenation():
    rng = np.random.default_rng(0)
    acc = ConfusionAccumulator(5)
    preds, gts = [], []
    for _ in range(3):
        gt = rng.integers(-1, 5, 200)
        pred = rng.integers(-1, 5, 200)
        acc.add(pred, gt)
        preds.append(pred)
        gts.append(gt)
    np.testing.assert_array_equal(acc.confusion, confusion_matrix(np.concatenate(preds), np.concatenate(gts), 5))
    summary = acc.summary([f"c{i}" for i in range(5)], unseen=[4])
    assert summary["frames"] == 3 and summary["miou"] == pytest.approx(acc.miou())
    assert set(summary) >= {"seen_miou", "unseen_miou", "hiou", "iou"}
    with pytest.raises(InputError):
        acc.add(np.zeros(3), np.zeros(4))


def test_learning_map_folds_moving_classes_and_ignores_unlabelled():
    car, road, person = (SEMANTIC_KITTI_CLASSES.index(c) for c in ("car", "road", "person"))
    raw = np.array([10, 252, 40, 60, 254, 0, 1, 52, 99, 81 | (7 << 16), 12345], dtype=np.uint32)
    np.testing.assert_array_equal(
        raw_to_train_ids(raw),
        [car, car, road, road, person, IGNORE, IGNORE, IGNORE, IGNORE, SEMANTIC_KITTI_CLASSES.index("traffic-sign"), IGNORE],
    )
    assert PALETTE.shape == (19, 3) and PALETTE.dtype == np.uint8
    np.testing.assert_array_equal(colorize(np.array([car, IGNORE])), [PALETTE[car], [0, 0, 0]])


def test_train_ids_are_never_converted_twice():
    """Train ids are signed (IGNORE = -1); raw labels are uint32. Converting train ids again would read
    sidewalk (10) as raw 10, car: the conversion refuses signed input instead."""
    train = raw_to_train_ids(np.array([48, 40, 70], np.uint32))
    assert [SEMANTIC_KITTI_CLASSES[i] for i in train] == ["sidewalk", "road", "vegetation"]
    with pytest.raises(InputError, match="unsigned"):
        raw_to_train_ids(train)


def test_train_and_run_ids_convert_by_name():
    names = ["road", "person", "car", "tree"]  # "tree" is no SemanticKITTI class
    car, road, person, sidewalk = (SEMANTIC_KITTI_CLASSES.index(c) for c in ("car", "road", "person", "sidewalk"))
    train = np.array([car, road, person, sidewalk, IGNORE])
    np.testing.assert_array_equal(train_to_run_ids(train, names), [2, 0, 1, IGNORE, IGNORE])
    # Only the listed classes are kept (the zero-shot seen classes).
    np.testing.assert_array_equal(train_to_run_ids(train, names, only=["car"]), [2, IGNORE, IGNORE, IGNORE, IGNORE])
    np.testing.assert_array_equal(run_to_train_ids(np.array([2, 0, 1, IGNORE]), names[:3]), [car, road, person, IGNORE])
    with pytest.raises(InputError, match="tree"):
        run_to_train_ids(np.array([0]), names)


def test_read_train_ids_validates_size(tmp_path):
    good = tmp_path / "a.label"
    np.array([40, 10 | (3 << 16)], dtype=np.uint32).tofile(good)
    np.testing.assert_array_equal(read_train_ids(good, 2), [8, 0])
    np.testing.assert_array_equal(read_raw_labels(good, 2), [40, 10 | (3 << 16)])
    with pytest.raises(InputError, match="has 2 labels but the scan has 3 points"):
        read_train_ids(good, 3)
    bad = tmp_path / "b.label"
    bad.write_bytes(b"\x00" * 6)
    with pytest.raises(InputError, match="not a multiple of 4"):
        read_train_ids(bad, 1)
    with pytest.raises(InputError, match="not found"):
        read_train_ids(tmp_path / "missing.label", 1)


def test_real_labels_of_seq08(seq08):
    n = (seq08 / "velodyne" / "000000.bin").stat().st_size // 16
    labels = read_train_ids(seq08 / "labels" / "000000.label", n)
    present = {SEMANTIC_KITTI_CLASSES[i] for i in np.unique(labels[labels >= 0])}
    assert {"car", "road", "building", "vegetation", "sidewalk"} <= present
    assert labels.min() >= IGNORE and labels.max() < len(SEMANTIC_KITTI_CLASSES)
    assert (labels == IGNORE).mean() < 0.2
    # Against the raw ids read straight from the file: road is 40 and 60 (lane marking), nothing else.
    raw = np.fromfile(seq08 / "labels" / "000000.label", "<u4") & 0xFFFF
    np.testing.assert_array_equal(labels == SEMANTIC_KITTI_CLASSES.index("road"), np.isin(raw, [40, 60]))


def test_agreement_beyond_chance_by_hand():
    # gt: 3 × class 0, 1 × class 1; a predictor that always answers 0 is right 3/4 of the time,
    # which is exactly what chance gives with these frequencies: kappa 0.
    gt = np.array([0, 0, 0, 1])
    always = agreement_beyond_chance(np.zeros(4, int), gt, 2)
    assert always == pytest.approx({"count": 4, "accuracy": 0.75, "chance": 0.75, "kappa": 0.0})
    # pred 0,0,1,1: accuracy 3/4; chance = p_pred·p_gt = 0.5·0.75 + 0.5·0.25 = 0.5; kappa = 0.25/0.5.
    half = agreement_beyond_chance(np.array([0, 0, 1, 1]), gt, 2)
    assert half == pytest.approx({"count": 4, "accuracy": 0.75, "chance": 0.5, "kappa": 0.5})
    # Ignored ground truth is left out; a missing prediction is wrong and adds nothing to chance.
    miss = agreement_beyond_chance(np.array([0, IGNORE, 1]), np.array([0, 1, IGNORE]), 2)
    assert miss == pytest.approx({"count": 2, "accuracy": 0.5, "chance": 0.25, "kappa": 1 / 3})
