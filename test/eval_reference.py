"""Test helpers for `partlift eval`: runs written from the ground truth by hand, and a reference scorer.

The reference works on class *names* (raw SemanticKITTI ids -> names from semantic-kitti.yaml, written out
below; run ids -> names from classes.yaml; front view from P2·Tr as the data's SOURCE.md states it), so no
id table of the package is involved.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
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


def frame_numbers(seq: Path) -> list[int]:
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
    """mIoU (front, all), accuracy, coverage and the instance ceiling from names alone; a class counts
    when TP + FP + FN > 0."""
    classes = yaml.safe_load((run / "classes.yaml").read_text())["classes"]
    preds, truths, fronts, sps = [], [], [], []
    for k, path in enumerate(sorted((run / "labels").glob("*.label"))):
        packed = np.fromfile(path, "<u4")
        sp = (packed >> 16).astype(np.int64)
        sps.append(np.where(sp > 0, sp + (k << 16), -1))  # superpoint ids are per frame
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
    # Ceiling: every superpoint (unique per frame) takes the most common name among its front-view points
    # (a tie goes to the class listed first in SEMANTIC_KITTI_CLASSES).
    ceiling = np.full(len(t), "", dtype=object)
    sp = np.concatenate(sps)[front]
    rank = {c: k for k, c in enumerate(SEMANTIC_KITTI_CLASSES)}
    votes: dict[int, dict[str, int]] = {}
    for key, name in zip(sp[(sp >= 0) & (t != "")].tolist(), t[(sp >= 0) & (t != "")].tolist()):
        votes.setdefault(key, {}).setdefault(name, 0)
        votes[key][name] += 1
    winner = {key: min(v, key=lambda n: (-v[n], rank[n])) for key, v in votes.items()}
    ceiling[sp >= 0] = [winner.get(key, "") for key in sp[sp >= 0].tolist()]
    return {"miou_front": miou(p, t), "miou_all": miou(pred, truth), "ceiling_miou_front": miou(ceiling, t),
            "accuracy": float(np.sum(covered & (p == t)) / np.sum(covered)),
            "coverage": float(np.sum(covered) / np.sum(labelled))}


