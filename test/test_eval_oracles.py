"""Oracle tests of `partlift eval`: answers known without trusting the code under test.

- A run whose labels ARE the ground truth (written by hand in the documented run format, class list in
  another order than SemanticKITTI's, one superpoint per ground-truth object) scores exactly 100.
- The same run with every class moved to the next scores exactly 0, and its ceiling stays 100 (the
  ceiling depends on the superpoints only).
- A ten-point sequence whose confusion, IoUs, hIoU, accuracy, coverage and ceiling are worked out by hand.
- The real frames scored by an independent reference that works on class *names* (raw SemanticKITTI
  ids -> names from semantic-kitti.yaml, run ids -> names from classes.yaml, front view from P2·Tr as
  SOURCE.md states it), so no id table of the package is involved.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from partlift_ros.cli import app
from partlift_ros.config import SEMANTIC_KITTI_CLASSES

# The run's class list: SemanticKITTI's names, reversed, so run id != train id for every class but one.
RUN_CLASSES = list(reversed(SEMANTIC_KITTI_CLASSES))

# semantic-kitti.yaml's learning_map, by name (the reference; written out here on purpose).
RAW_NAMES = {
    10: "car", 11: "bicycle", 13: "other-vehicle", 15: "motorcycle", 16: "other-vehicle", 18: "truck",
    20: "other-vehicle", 30: "person", 31: "bicyclist", 32: "motorcyclist", 40: "road", 44: "parking",
    48: "sidewalk", 49: "other-ground", 50: "building", 51: "fence", 60: "road", 70: "vegetation",
    71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign", 252: "car", 253: "bicyclist", 254: "person",
    255: "motorcyclist", 256: "other-vehicle", 257: "other-vehicle", 258: "truck", 259: "other-vehicle",
}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


_NAME_OF_RAW = np.full(1 << 16, "", dtype=object)
_NAME_OF_RAW[list(RAW_NAMES)] = list(RAW_NAMES.values())


def gt_names(raw: np.ndarray) -> np.ndarray:
    """Per point: its ground-truth class name, or '' where SemanticKITTI ignores it."""
    return _NAME_OF_RAW[np.asarray(raw, np.uint32) & 0xFFFF]


def frame_count(seq: Path) -> list[int]:
    return sorted(int(p.stem) for p in (seq / "labels").glob("*.label"))


def write_run(out: Path, seq: Path, indices, name_of=lambda n: n) -> Path:
    """A run in the documented format (classes.yaml + labels/NNNNNN.label, class id + 1 in the low 16 bits,
    superpoint id + 1 in the high 16 bits), written with numpy alone. Each point gets ``name_of`` its
    ground-truth class; its superpoint is its ground-truth object (class, instance id), so every
    superpoint is class-pure. Ignored points get neither."""
    (out / "labels").mkdir(parents=True)
    (out / "classes.yaml").write_text(yaml.safe_dump({"classes": RUN_CLASSES}))
    run_id_of_raw = np.zeros(1 << 16, np.uint32)  # 1 + the run id of a raw id's class name, 0 = ignored
    gt_id_of_raw = np.zeros(1 << 16, np.int64)
    for raw_id, name in RAW_NAMES.items():
        run_id_of_raw[raw_id] = RUN_CLASSES.index(name_of(name)) + 1
        gt_id_of_raw[raw_id] = RUN_CLASSES.index(name) + 1
    for index in indices:
        raw = np.fromfile(seq / "labels" / f"{index:06d}.label", dtype="<u4")
        cls = run_id_of_raw[raw & 0xFFFF]
        gt = gt_id_of_raw[raw & 0xFFFF]
        _, obj = np.unique(gt << 16 | (raw >> 16).astype(np.int64), return_inverse=True)
        sp = np.where(gt > 0, obj.reshape(-1) + 1, 0).astype(np.uint32)
        assert sp.max() <= 0xFFFF
        (cls | (sp << 16)).astype("<u4").tofile(out / "labels" / f"{index:06d}.label")
    return out


def eval_json(run: Path, seq: Path, tmp_path: Path, *extra) -> tuple[dict, dict]:
    """The metrics `partlift eval` writes with --json, and the summary rows it prints ({key: text})."""
    js = tmp_path / f"{run.name}.json"
    r = invoke("eval", run, seq, "--json", js, *extra)
    assert r.exit_code == 0, r.output
    printed = dict(re.findall(r"^\W*(\w+)\W+([\d.]+|-)\W*$", r.output, flags=re.M))
    return json.loads(js.read_text()), printed


@pytest.fixture(params=["08", "00"])
def sequence(request, kitti_root) -> Path:
    return kitti_root / "sequences" / request.param


def test_ground_truth_as_a_run_scores_exactly_100(sequence, tmp_path):
    indices = frame_count(sequence)
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
    indices = frame_count(sequence)[:4]
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
def front_view(points: np.ndarray, seq: Path) -> np.ndarray:
    """SOURCE.md's rule: uvw = P2 · Tr · [x y z 1]; in the image when w > 0.1 m and (u, v) inside it."""
    from PIL import Image

    rows = {}
    for line in (seq / "calib.txt").read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            rows[k] = np.array(v.split(), float)
    Tr = np.vstack([rows["Tr"].reshape(3, 4), [0, 0, 0, 1]])
    uvw = (rows["P2"].reshape(3, 4) @ Tr @ np.c_[points[:, :3].astype(float), np.ones(len(points))].T).T
    w = uvw[:, 2]
    with Image.open(sorted((seq / "image_2").glob("*.png"))[0]) as im:
        width, height = im.size
    u, v = uvw[:, 0] / np.where(w > 0, w, 1), uvw[:, 1] / np.where(w > 0, w, 1)
    return (w > 0.1) & (u >= 0) & (u < width) & (v >= 0) & (v < height)


def reference_scores(run: Path, seq: Path) -> dict:
    """mIoU (front, all), accuracy, coverage from names alone; classes present = TP + FP + FN > 0."""
    classes = yaml.safe_load((run / "classes.yaml").read_text())["classes"]
    preds, truths, fronts = [], [], []
    for path in sorted((run / "labels").glob("*.label")):
        packed = np.fromfile(path, "<u4")
        preds.append(np.array([""] + classes, dtype=object)[packed & 0xFFFF])
        truths.append(gt_names(np.fromfile(seq / "labels" / path.name, "<u4")))
        points = np.fromfile(seq / "velodyne" / f"{path.stem}.bin", np.float32).reshape(-1, 4)
        fronts.append(front_view(points, seq))
    pred, truth, front = np.concatenate(preds), np.concatenate(truths), np.concatenate(fronts)

    def miou(p, t):
        ious = []
        for c in SEMANTIC_KITTI_CLASSES:
            scored = t != ""
            tp = np.sum((p == c) & (t == c))
            fp = np.sum((p == c) & (t != c) & scored)
            fn = np.sum((t == c) & (p != c))
            if tp + fp + fn:
                ious.append(tp / (tp + fp + fn))
        return float(np.mean(ious))

    p, t = pred[front], truth[front]
    labelled, covered = t != "", (t != "") & (p != "")
    return {"miou_front": miou(p, t), "miou_all": miou(pred, truth),
            "accuracy": float(np.sum(covered & (p == t)) / np.sum(covered)),
            "coverage": float(np.sum(covered) / np.sum(labelled))}


def test_reference_by_names_agrees_with_the_oracles(seq08, tmp_path):
    """The reference used by the CLI and student tests gives 100 / 0 on the oracle runs too."""
    nxt = {c: SEMANTIC_KITTI_CLASSES[(i + 1) % 19] for i, c in enumerate(SEMANTIC_KITTI_CLASSES)}
    assert reference_scores(write_run(tmp_path / "gt", seq08, [3]), seq08) == {
        "miou_front": 1.0, "miou_all": 1.0, "accuracy": 1.0, "coverage": 1.0}
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
