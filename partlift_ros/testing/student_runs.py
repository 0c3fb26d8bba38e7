"""Label runs for the student tests and benchmarks: a `partlift label`-style run made from ground truth.

Not a labelling result: the "pseudo-labels" are SemanticKITTI ground-truth classes, the "superpoints" are
(class, 2 m × 2 m cell) groups, confidence is a constant and the class text embeddings are random unit
vectors. It is written with the real run writer, so the student reads exactly the files `partlift label`
produces.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml

from partlift_ros.calibration import project_points
from partlift_ros.config import SEMANTIC_KITTI_CLASSES, PipelineConfig
from partlift_ros.io.kitti import KittiSequenceReader
from partlift_ros.io.writers import LabelRunWriter, encode_labels, read_run_labels
from partlift_ros.semantickitti import raw_to_train_ids
from partlift_ros.types import IGNORE, LabelledCloud


def grid_units(points: np.ndarray, label: np.ndarray, cell: float = 2.0) -> np.ndarray:
    """Superpoint stand-ins: labelled points grouped by (class, xy cell); unlabelled -> IGNORE."""
    cells = np.floor(points[:, :2] / cell).astype(np.int64)
    keys = np.stack([label, cells[:, 0], cells[:, 1]], axis=1)
    _, unit = np.unique(keys, axis=0, return_inverse=True)
    return np.where(label >= 0, unit.reshape(-1), IGNORE).astype(np.int32)


def write_gt_pseudo_label_run(out: Path, sequence_dir: Path, indices, confidence: float = 0.9,
                              embedding_dim: int = 16, seed: int = 0) -> Path:
    classes = list(SEMANTIC_KITTI_CLASSES)
    reader = KittiSequenceReader(sequence_dir)
    position = {index: p for p, index in enumerate(reader.frame_indices)}
    writer = LabelRunWriter(out, classes, PipelineConfig())
    for index in indices:
        frame = reader.read(position[index])
        label = raw_to_train_ids(reader.read_labels(index)).astype(np.int32)
        unit = grid_units(frame.points, label)
        m = int(unit.max()) + 1
        cam = frame.camera
        visible = project_points(frame.points, cam.K, cam.T_cam_lidar, cam.size).in_image
        writer.write(LabelledCloud(
            frame=frame, class_names=classes, label=label,
            confidence=np.where(label >= 0, confidence, 0.0).astype(np.float32),
            instance=unit, visible=visible,
            instance_scores=np.zeros((m, len(classes)), np.float32),
            instance_refined=np.zeros((m, len(classes)), np.float32),
            instance_features=np.zeros((m, 1), np.float32),
            instance_valid=np.ones(m, bool),
        ))
    emb = np.random.default_rng(seed).normal(size=(len(classes), embedding_dim)).astype(np.float32)
    np.save(out / "text_embeddings.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    (out / "source.yaml").write_text(yaml.safe_dump({"kind": "kitti", "path": str(sequence_dir)}))
    return out


def write_thinned_sequence(sequence_dir: Path, out: Path, indices, step: int = 4) -> Path:
    """A copy of real SemanticKITTI frames keeping every ``step``-th point (scan and labels alike).

    Same images, calibration and times: the student tests run on real geometry at a fraction of the cost.
    """
    for sub in ("velodyne", "labels", "image_2"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in ("calib.txt", "times.txt"):
        shutil.copy(sequence_dir / name, out / name)
    for index in indices:
        stem = f"{index:06d}"
        points = np.fromfile(sequence_dir / "velodyne" / f"{stem}.bin", np.float32).reshape(-1, 4)
        labels = np.fromfile(sequence_dir / "labels" / f"{stem}.label", np.uint32)
        points[::step].tofile(out / "velodyne" / f"{stem}.bin")
        labels[::step].tofile(out / "labels" / f"{stem}.label")
        shutil.copy(sequence_dir / "image_2" / f"{stem}.png", out / "image_2" / f"{stem}.png")
    return out


def write_merged_run(src: Path, out: Path, groups: dict, embedding_dim: int = 16, seed: int = 7) -> Path:
    """A copy of label run ``src`` relabelled with ``groups`` (new class -> old classes) and new random embeddings."""
    shutil.copytree(src, out)
    old = yaml.safe_load((src / "classes.yaml").read_text())["classes"]
    table = np.full(len(old), IGNORE, np.int64)
    for new_id, members in enumerate(groups.values()):
        table[[old.index(m) for m in members]] = new_id
    for path in (out / "labels").glob("*.label"):
        segment, unit = read_run_labels(src, int(path.stem))
        path.write_bytes(encode_labels(np.where(segment >= 0, table[segment], IGNORE), unit).astype("<u4").tobytes())
    (out / "classes.yaml").write_text(yaml.safe_dump({"classes": list(groups)}))
    emb = np.random.default_rng(seed).normal(size=(len(groups), embedding_dim)).astype(np.float32)
    np.save(out / "text_embeddings.npy", emb / np.linalg.norm(emb, axis=1, keepdims=True))
    return out
