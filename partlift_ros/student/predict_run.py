"""Label a SemanticKITTI sequence with a trained student and write it as a label run.

The run has the layout of `partlift label` (so `partlift eval` and `partlift render` read it the same
way); the student labels every point from the LiDAR alone, so there are no superpoints and no CLIP scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..types import IGNORE, LabelledCloud


def write_student_run(ckpt: Path, sequence: Path, out_dir: Path, tta_rotations: int = 0, device: str = "cpu") -> int:
    """Predict every frame of ``sequence`` into ``out_dir``; frames already written are skipped. Returns frames written."""
    import time

    from ..config import PipelineConfig
    from ..io.kitti import KittiSequenceReader
    from ..io.writers import LabelRunWriter
    from .infer import load_student, predict

    model, class_names = load_student(ckpt, device)
    reader = KittiSequenceReader(sequence)
    writer = LabelRunWriter(out_dir, class_names, PipelineConfig(classes=list(class_names)))
    written = 0
    for position, index in enumerate(reader.frame_indices):
        if writer.done(index):
            continue
        frame = reader.read(position)
        t0 = time.perf_counter()
        label, confidence = predict(model, frame.points, tta_rotations=tta_rotations)
        n, c = label.shape[0], len(class_names)
        empty = np.zeros((0, c), dtype=np.float32)
        writer.write(LabelledCloud(
            frame=frame, class_names=list(class_names), label=label, confidence=confidence,
            instance=np.full(n, IGNORE, dtype=np.int32), visible=np.ones(n, dtype=bool),
            instance_scores=empty, instance_refined=empty, instance_features=np.zeros((0, 0), np.float32),
            instance_valid=np.zeros(0, dtype=bool), timings_ms={"student": (time.perf_counter() - t0) * 1e3},
        ))
        written += 1
    writer.write_timing()
    return written
