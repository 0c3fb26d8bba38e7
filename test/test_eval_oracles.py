"""Oracle tests of `partlift eval`: answers known without trusting the code under test.

- A run whose labels ARE the ground truth (written by hand in the documented run format, class list in
  another order than SemanticKITTI's, one superpoint per ground-truth object) scores exactly 100.
- The same run with every class moved to the next scores exactly 0, and its ceiling stays 100 (the
  ceiling depends on the superpoints only).
- A ten-point sequence whose confusion, IoUs, hIoU, accuracy, coverage and ceiling are worked out by hand.
- Real frames scored by the name-based reference of eval_reference.py, which uses no id table of the package.
- `--seen-labels` and `eval --student` against the ground truth and against a run of the same predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from eval_reference import (
    RAW_NAMES, RUN_CLASSES, eval_json, frame_numbers, gt_names, invoke, reference_scores, write_run,
)
from partlift_ros.config import SEMANTIC_KITTI_CLASSES


@pytest.fixture(params=["08", "00"])
def sequence(request, kitti_root) -> Path:
    return kitti_root / "sequences" / request.param


def test_ground_truth_as_a_run_scores_exactly_100(sequence, tmp_path):
    indices = frame_numbers(sequence)
    m, printed = eval_json(write_run(tmp_path / "gt", sequence, indices), sequence, tmp_path)
    assert m["frames"] == len(indices) >= 10
    for key in ("miou_front", "miou_all", "accuracy", "coverage", "ceiling_miou_front", "hiou"):
        assert m[key] == 1.0, key
    for key in ("miou_front", "miou_all", "accuracy", "coverage", "ceiling_miou_front"):
        assert printed[key] == "100.00", key
    # Every class the frames hold is scored (none vanished on the way), each at 100 in both views.
    present = set()
    for i in indices:
        present |= set(gt_names(np.fromfile(sequence / "labels" / f"{i:06d}.label", "<u4"))) - {""}
    scored = {c for c, row in m["per_class"].items() if row["iou_all"] is not None}
    assert scored == present and {"road", "car", "building", "vegetation"} <= present
    assert all(m["per_class"][c]["iou_all"] == 1.0 for c in present)


def test_every_class_moved_to_the_next_scores_exactly_0(sequence, tmp_path):
    indices = frame_numbers(sequence)[:4]
    nxt = {c: SEMANTIC_KITTI_CLASSES[(i + 1) % len(SEMANTIC_KITTI_CLASSES)] for i, c in enumerate(SEMANTIC_KITTI_CLASSES)}
    m, printed = eval_json(write_run(tmp_path / "shifted", sequence, indices, nxt.get), sequence, tmp_path)
    for key in ("miou_front", "miou_all", "accuracy", "hiou"):
        assert m[key] == 0.0, key
    assert printed["miou_front"] == printed["accuracy"] == "0.00"
    # Every labelled point still carries a label, and the superpoints are as pure as before.
    assert m["coverage"] == 1.0 and m["ceiling_miou_front"] == 1.0


# --------------------------------------------------------------------------------- a case by hand
def write_tiny_sequence(seq: Path, xyz, raw) -> Path:
    """One frame, a 100x50 image, P2 = [[50 0 50 0] [0 50 25 0] [0 0 1 0]] and KITTI's axis swap as Tr
    (camera z = LiDAR x), so points at x = 10 m land near the image centre and points at x = -10 m behind."""
    from PIL import Image

    for sub in ("velodyne", "labels", "image_2"):
        (seq / sub).mkdir(parents=True)
    pts = np.zeros((len(xyz), 4), np.float32)
    pts[:, :3] = xyz
    pts.tofile(seq / "velodyne" / "000000.bin")
    np.asarray(raw, dtype="<u4").tofile(seq / "labels" / "000000.label")
    Image.new("RGB", (100, 50)).save(seq / "image_2" / "000000.png")
    P2 = "50 0 50 0 0 50 25 0 0 0 1 0"
    Tr = "0 -1 0 0 0 0 -1 0 1 0 0 0"
    (seq / "calib.txt").write_text(f"P0: {P2}\nP1: {P2}\nP2: {P2}\nP3: {P2}\nTr: {Tr}\n")
    (seq / "times.txt").write_text("0.0\n")
    return seq


def test_a_case_worked_out_by_hand(tmp_path):
    # point:          0      1      2      3      4      5       6        7          8 (behind) 9 (behind)
    raw = np.array([10, 252 | 7 << 16, 40, 40, 60, 30, 50, 0, 10, 50], np.uint32)
    truth = ["car", "car", "road", "road", "road", "person", "building", "", "car", "building"]
    pred = ["car", "road", "road", "road", None, "person", "building", "car", "car", "road"]
    sp = [0, 0, 0, 1, 1, 2, 3, 0, 4, 5]  # superpoint 0 holds car, car, road (and an ignored point)
    assert [RAW_NAMES.get(int(r) & 0xFFFF, "") for r in raw] == truth
    xyz = [(10, 0.1 * k - 0.4, 0) for k in range(8)] + [(-10, 0, 0), (-10, 1, 0)]
    seq = write_tiny_sequence(tmp_path / "seq", xyz, raw)
    run = tmp_path / "run"
    (run / "labels").mkdir(parents=True)
    classes = ["road", "car", "person", "building"]
    (run / "classes.yaml").write_text(yaml.safe_dump({"classes": classes}))
    cls = np.array([0 if p is None else classes.index(p) + 1 for p in pred], np.uint32)
    (cls | (np.array(sp, np.uint32) + 1) << 16).astype("<u4").tofile(run / "labels" / "000000.label")

    m, printed = eval_json(run, seq, tmp_path, "--unseen", "person")
    iou = {c: row["iou_front"] for c, row in m["per_class"].items() if row["iou_front"] is not None}
    # Front view (points 0-7; point 7 is unlabelled and does not count):
    #   car:  tp 1 (pt 0), fn 1 (pt 1 -> road)               -> 1/2
    #   road: tp 2 (pts 2, 3), fp 1 (pt 1), fn 1 (pt 4 miss) -> 2/4
    #   person 1/1, building 1/1
    assert iou == pytest.approx({"car": 0.5, "road": 0.5, "person": 1.0, "building": 1.0})
    assert m["miou_front"] == pytest.approx(0.75)
    # seen (car, road, building) = 2/3, unseen (person) = 1 -> hIoU = 2·(2/3)·1 / (2/3 + 1) = 0.8
    assert m["miou_seen_front"] == pytest.approx(2 / 3) and m["miou_unseen_front"] == 1.0
    assert m["hiou"] == pytest.approx(0.8)
    # 7 labelled points, 6 of them labelled by the run, 5 correctly.
    assert m["coverage"] == pytest.approx(6 / 7) and m["accuracy"] == pytest.approx(5 / 6)
    # All points (8, 9 behind the camera count too):
    #   car 2/3 (pts 0, 8 | fn pt 1); road 2/5 (fp pts 1, 9, fn pt 4); person 1; building 1/2 (fn pt 9)
    iou_all = {c: row["iou_all"] for c, row in m["per_class"].items() if row["iou_all"] is not None}
    assert iou_all == pytest.approx({"car": 2 / 3, "road": 2 / 5, "person": 1.0, "building": 0.5})
    assert m["miou_all"] == pytest.approx((2 / 3 + 2 / 5 + 1 + 1 / 2) / 4)
    # Ceiling (front view): superpoint 0 becomes car (2 car : 1 road), so point 2 (road) is lost:
    #   car 2/3, road 2/3, person 1, building 1.
    assert m["ceiling_miou_front"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert m["per_class"]["road"]["gt_points_front"] == 3 and m["frames"] == 1
    assert (printed["miou_front"], printed["hiou"], printed["coverage"]) == ("75.00", "80.00", "85.71")


# --------------------------------------------------------------------------------- reference by names
def test_reference_by_names_agrees_with_the_oracles(seq08, tmp_path):
    """The reference used by the CLI and student tests gives 100 / 0 on the oracle runs too."""
    nxt = {c: SEMANTIC_KITTI_CLASSES[(i + 1) % 19] for i, c in enumerate(SEMANTIC_KITTI_CLASSES)}
    assert reference_scores(write_run(tmp_path / "gt", seq08, [3]), seq08) == {
        "miou_front": 1.0, "miou_all": 1.0, "ceiling_miou_front": 1.0, "accuracy": 1.0, "coverage": 1.0}
    shifted = reference_scores(write_run(tmp_path / "shift", seq08, [3], nxt.get), seq08)
    assert shifted["miou_front"] == shifted["accuracy"] == 0.0


def test_eval_of_a_mixed_run_equals_the_reference(seq08, tmp_path):
    """Half the points keep their class, a quarter move to the next, a quarter are unlabelled: the
    metrics land strictly between 0 and 1, where only a correct implementation matches the reference."""
    nxt = {c: SEMANTIC_KITTI_CLASSES[(i + 1) % 19] for i, c in enumerate(SEMANTIC_KITTI_CLASSES)}
    run = write_run(tmp_path / "mixed", seq08, [0, 5])
    rng = np.random.default_rng(0)
    for path in (run / "labels").glob("*.label"):
        packed = np.fromfile(path, "<u4")
        cls = (packed & 0xFFFF).astype(np.int64)
        r = rng.random(cls.size)
        move = (r < 0.25) & (cls > 0)
        to_next = np.array([0] + [RUN_CLASSES.index(nxt[c]) + 1 for c in RUN_CLASSES])
        cls[move] = to_next[cls[move]]
        cls[(r >= 0.25) & (r < 0.5)] = 0
        ((packed & 0xFFFF0000) | cls.astype(np.uint32)).astype("<u4").tofile(path)
    m, _ = eval_json(run, seq08, tmp_path)
    ref = reference_scores(run, seq08)
    assert 0.1 < ref["miou_front"] < 0.9 and 0.55 < ref["accuracy"] < 0.8 and 0.7 < ref["coverage"] < 0.8
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_a_fleet_folder_is_scored_as_one_run_of_all_its_frames_plus_a_row_per_run(seq08, kitti_root, tmp_path):
    """Two runs of a fleet (frames 0-4 right, frames 5-9 with every class moved) pool to what the name-based
    reference gives one run holding all ten frames; each run's ground truth comes from its source.yaml, or
    from GT_ROOT/sequences/<its source's name>."""
    import json
    import shutil

    nxt = {c: SEMANTIC_KITTI_CLASSES[(i + 1) % 19] for i, c in enumerate(SEMANTIC_KITTI_CLASSES)}
    indices = frame_numbers(seq08)
    fleet = tmp_path / "fleet"
    write_run(fleet / "right", seq08, indices[:5])
    write_run(fleet / "moved", seq08, indices[5:], nxt.get)
    for name in ("right", "moved"):
        (fleet / name / "source.yaml").write_text(yaml.safe_dump({"kind": "kitti", "path": str(seq08)}))
    (fleet / "fleet.json").write_text(json.dumps({"format": 1, "sources": [
        {"name": "moved", "path": str(seq08)}, {"name": "right", "path": str(seq08)}]}))
    one = write_run(tmp_path / "one", seq08, indices[:5])
    for path in (fleet / "moved" / "labels").iterdir():
        shutil.copy(path, one / "labels" / path.name)
    ref = reference_scores(one, seq08)
    assert 0.3 < ref["accuracy"] < 0.7  # strictly between: a pooling that favoured one run would show

    for gt in ([], [kitti_root]):
        js = tmp_path / f"fleet{len(gt)}.json"
        r = invoke("eval", fleet, *gt, "--json", js)
        assert r.exit_code == 0, r.output
        m = json.loads(js.read_text())
        assert m["pooled"]["frames"] == 10 and m["ground_truth"] == {"moved": str(seq08), "right": str(seq08)}
        for key, value in ref.items():
            assert m["pooled"][key] == pytest.approx(value, abs=1e-12), key
        assert m["runs"]["right"]["accuracy"] == m["runs"]["right"]["miou_front"] == 1.0
        assert m["runs"]["moved"]["accuracy"] == m["runs"]["moved"]["miou_front"] == 0.0
        assert m["runs"]["right"]["frames"] == m["runs"]["moved"]["frames"] == 5
        assert "pooled" in r.output and "moved" in r.output and "right" in r.output


# --------------------------------------------------------------------------------- zero-shot (--seen-labels)
def test_seen_labels_keep_their_class_and_clip_chooses_only_unseen(seq08, tiny_clip_dir, tmp_path):
    from partlift_ros.config import DEFAULT_UNSEEN

    run = tmp_path / "gzsl"
    r = invoke("label", seq08, "--out", run, "--clip-model", tiny_clip_dir, "--frames", "0:2",
               "--seen-labels", seq08 / "labels", "--affinity", "off")
    assert r.exit_code == 0, r.output
    classes = yaml.safe_load((run / "classes.yaml").read_text())["classes"]
    unseen = set(DEFAULT_UNSEEN)
    from_clip = 0
    for index in (0, 1):
        packed = np.fromfile(run / "labels" / f"{index:06d}.label", "<u4")
        label = np.array([""] + classes, dtype=object)[packed & 0xFFFF]
        truth = gt_names(np.fromfile(seq08 / "labels" / f"{index:06d}.label", "<u4"))
        seen = (truth != "") & ~np.isin(truth, list(unseen))
        # Every point of a seen class carries exactly its ground-truth class, by name.
        assert seen.sum() > 50_000
        assert (label[seen] == truth[seen]).all()
        # The other labelled points were labelled by CLIP, which may only choose unseen classes.
        clip = ~seen & (label != "")
        assert set(label[clip]) <= unseen
        from_clip += int(clip.sum())
    assert from_clip > 500  # CLIP did label something, so the last check was not vacuous
    m, _ = eval_json(run, seq08, tmp_path)
    # CLIP never predicts a seen class and every seen point keeps its class: seen mIoU is exactly 100.
    assert m["miou_seen_front"] == 1.0 and m["unseen_classes"] == list(DEFAULT_UNSEEN)


# --------------------------------------------------------------------------------- eval --student
def test_eval_student_scores_exactly_what_a_run_of_its_predictions_scores(seq08, tmp_path, one_torch_thread):
    """`eval --student` writes the student's predictions as a run and scores it. A run holding the same
    predictions, written by hand, must score the same, and both must match the name-based reference;
    the student's own training-time evaluation (all points) must agree with `miou_all`."""
    from partlift_ros.testing.student_runs import write_gt_pseudo_label_run, write_thinned_sequence

    from partlift_ros.student.infer import evaluate_on_sequence, load_student, predict
    from partlift_ros.student.train import TrainConfig, train

    seq = write_thinned_sequence(seq08, tmp_path / "seq" / "08", [0, 1], step=4)
    pseudo = write_gt_pseudo_label_run(tmp_path / "pseudo", seq, [0, 1])
    cfg = TrainConfig(epochs=1, batch_size=2, width=8, voxel_size=0.5, max_points=1500, lr=1e-2,
                      use_2d=False, backend="torch", seed=3)
    ckpt = train([pseudo], tmp_path / "student", cfg)["checkpoint"]

    m_student, printed = eval_json(tmp_path / "pred", seq, tmp_path, "--student", ckpt)
    model, classes = load_student(ckpt)
    by_hand = tmp_path / "by_hand"
    (by_hand / "labels").mkdir(parents=True)
    (by_hand / "classes.yaml").write_text(yaml.safe_dump({"classes": list(classes)}))
    for index in (0, 1):
        points = np.fromfile(seq / "velodyne" / f"{index:06d}.bin", np.float32).reshape(-1, 4)
        label, _ = predict(model, points)
        (label.astype(np.uint32) + 1).astype("<u4").tofile(by_hand / "labels" / f"{index:06d}.label")
    m_run, _ = eval_json(by_hand, seq, tmp_path)

    ref = reference_scores(by_hand, seq)
    assert 0.05 < ref["miou_all"] < 0.95  # a half-trained student: neither trivial nor perfect
    for key in ("miou_front", "miou_all", "accuracy", "coverage"):
        assert m_student[key] == m_run[key] == pytest.approx(ref[key], abs=1e-12), key
    assert m_student["per_class"] == m_run["per_class"] and m_student["hiou"] == m_run["hiou"]
    assert m_student["coverage"] == 1.0 and m_student["ceiling_miou_front"] is None and printed["ceiling_miou_front"] == "-"
    assert evaluate_on_sequence(model, classes, seq)["miou"] == pytest.approx(m_student["miou_all"], abs=1e-12)
