"""One source's offline labelling job: its sources (what to read) and ``run_label_job``, which runs it whole.

``partlift label`` drives the same steps through ``fleet.py`` (one or many sources).
``run_label_job`` = ``label_run.prepare_label_job`` (checks without a model) + ``start_label_run`` (loads
CLIP, writes the run's metadata) + ``execute_label_job`` (labels chunk by chunk, ``label_chunks.py``).
Resumable: frames whose outputs exist are skipped, everything is written atomically, and the resolved
config, class list, text embeddings, source description and run fingerprint sit beside the results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .types import Frame, InputError


@dataclass
class SourceSpec:
    """Where the frames of a run come from; written to OUT/source.yaml so later jobs find the points."""

    kind: str  # "kitti" | "rosbag"
    path: str
    points_topic: str | None = None
    # Bags with several cameras: a list of image topics (and CameraInfo topics in the same order, or None
    # for each image topic's namespace); see io/rosbag_reader.py for how a cloud pairs with them.
    image_topic: str | list[str] | None = None
    camera_info_topic: str | list[str] | None = None
    slop: float = 0.05
    # SemanticKITTI folders: the colour cameras to read (2 = image_2 with P2, 3 = image_3 with P3).
    cameras: list[int] | None = None
    # How the points are read (config ``points.intensity_scale``); kept here so later jobs read them the same way.
    intensity_scale: str = "auto"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


SOURCE_FILE = "source.yaml"  # in every run: the SourceSpec it was labelled from


def read_source_spec(run_dir: str | Path) -> SourceSpec | None:
    """The SourceSpec a run recorded in its source.yaml; None when it has none, InputError when it is unreadable."""
    from .config import read_yaml_mapping

    path = Path(run_dir) / SOURCE_FILE
    if not path.is_file():
        return None
    data = read_yaml_mapping(path, InputError)
    try:
        return SourceSpec(**data)
    except TypeError as exc:
        raise InputError(f"{path}: unexpected keys in {sorted(data)} ({exc})") from exc


def detect_source(
    path: str | Path, cameras: list[int] | None = None, intensity_scale: str = "auto", **bag_options
) -> SourceSpec:
    """A SemanticKITTI sequence folder or a rosbag2 (.mcap, .db3 or a bag folder)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"source not found: {p}")
    if p.is_dir() and (p / "velodyne").is_dir():
        return SourceSpec("kitti", str(p.resolve()), cameras=cameras, intensity_scale=str(intensity_scale))
    if p.suffix in (".mcap", ".db3") or (p.is_dir() and (p / "metadata.yaml").is_file()):
        if cameras is not None:
            raise InputError("--cameras picks KITTI cameras; for a bag give one --image-topic per camera")
        return SourceSpec("rosbag", str(p.resolve()), intensity_scale=str(intensity_scale), **bag_options)
    if p.suffix == ".bag":
        raise InputError(f"{p}: a ROS 1 bag; partlift reads rosbag2 (.mcap, .db3 or a bag folder): convert it with "
                         "`rosbags-convert`")
    raise InputError(
        f"{p}: not a SemanticKITTI sequence folder (needs velodyne/, image_2/, calib.txt) "
        "nor a rosbag2 (.mcap, .db3 or a folder with metadata.yaml)"
    )


def parse_frame_range(text: str | None) -> slice | None:
    """'A:B' (B exclusive), 'A:' or ':B' -> slice over frame numbers; an empty or negative range is an error."""
    if not text:
        return None
    if ":" not in text:
        raise InputError(f"--frames expects A:B, got {text!r}")
    a, b = text.split(":", 1)
    try:
        start, stop = int(a) if a else None, int(b) if b else None
    except ValueError as exc:
        raise InputError(f"--frames expects integers A:B, got {text!r}") from exc
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise InputError(f"--frames {text}: frame numbers start at 0")
    if start is not None and stop is not None and stop <= start:
        raise InputError(f"--frames {text} is empty: B is exclusive and must be greater than A")
    return slice(start, stop)


class FrameSource(ABC):
    """The frames of a source by number: ``indices`` (all of them, known without decoding any) and
    ``read(wanted)``, which decodes only the wanted frames, in order, and yields a frame that cannot be read
    as (index, InputError) so the caller can report it and go on."""

    indices: list[int]
    skipped_images: list[str]  # image messages skipped while opening the source (a pair may be missing)
    skipped_calibration: list[str]  # broken CameraInfo / TF messages skipped (a valid one exists)

    @abstractmethod
    def read(self, wanted: Iterable[int]) -> Iterator[tuple[int, Frame | InputError]]:
        """(index, frame or the InputError that stopped it) for the wanted frames this source has, in order."""


class _KittiFrames(FrameSource):
    def __init__(self, spec: SourceSpec) -> None:
        from .io.kitti import KittiSequenceReader

        self.reader = KittiSequenceReader(spec.path, cameras=spec.cameras or (2,), intensity_scale=spec.intensity_scale)
        self.indices = self.reader.frame_indices
        self._position = {index: pos for pos, index in enumerate(self.indices)}
        self.skipped_images, self.skipped_calibration = [], []

    def read(self, wanted: Iterable[int]) -> Iterator[tuple[int, Frame | InputError]]:
        for index in sorted(set(wanted) & set(self._position)):
            try:
                yield index, self.reader.read(self._position[index])
            except InputError as exc:
                yield index, exc


class _BagFrames(FrameSource):
    def __init__(self, spec: SourceSpec) -> None:
        from .io.rosbag_reader import RosbagReader

        self.reader = RosbagReader(
            spec.path, points_topic=spec.points_topic, image_topic=spec.image_topic,
            camera_info_topic=spec.camera_info_topic, slop=spec.slop, intensity_scale=spec.intensity_scale,
        )
        # Bag frames are numbered by the cloud's position on its topic, so a resumed run finds the same frames.
        self.indices = list(self.reader.frame_indices)
        self.skipped_images, self.skipped_calibration = self.reader.skipped_images, self.reader.skipped_calibration

    def read(self, wanted: Iterable[int]) -> Iterator[tuple[int, Frame | InputError]]:
        return self.reader.frames(wanted)


def open_frame_source(spec: SourceSpec) -> FrameSource:
    """The frames of ``spec`` (opening checks the folder listing or reads the bag's headers, decodes nothing)."""
    return _KittiFrames(spec) if spec.kind == "kitti" else _BagFrames(spec)


def frames_in_range(source: FrameSource, frames: slice | None, name: str = "the source") -> list[int]:
    """The frame numbers of ``source`` within ``frames``; an error when none is."""
    indices = _in_range(source.indices, frames)
    if not indices:
        have = source.indices
        span = f"frames {have[0]}..{have[-1]} ({len(have)} frames)" if have else "no frames"
        raise InputError(f"no frames in --frames {_range_text(frames)}: {name} has {span}")
    return indices


def _range_text(frames: slice | None) -> str:
    if frames is None:
        return ":"
    return f"{'' if frames.start is None else frames.start}:{'' if frames.stop is None else frames.stop}"


def open_source(spec: SourceSpec, frames: slice | None = None) -> tuple[list[int], Callable[[int], Frame]]:
    """Frame numbers of a SemanticKITTI source within ``frames`` (a range of numbers) and a reader by number."""
    if spec.kind != "kitti":
        raise InputError(f"random access needs a SemanticKITTI folder; {spec.path} is a {spec.kind}")
    source = _KittiFrames(spec)
    return _in_range(source.indices, frames), lambda index: source.reader.read(source._position[index])


def iter_source(
    spec: SourceSpec, frames: slice | None, skip: Callable[[int], bool]
) -> Iterator[tuple[int, Frame | InputError]]:
    """(number, frame) of the source within ``frames``, except those ``skip`` accepts; read lazily, in order.

    Frames skipped or out of range are not decoded. A frame that cannot be read comes as (number, the
    InputError) so the caller can report it and go on.
    """
    source = open_frame_source(spec)
    yield from source.read([i for i in _in_range(source.indices, frames) if not skip(i)])


def _in_range(indices: list[int], frames: slice | None) -> list[int]:
    if frames is None:
        return list(indices)
    lo = -np.inf if frames.start is None else frames.start
    hi = np.inf if frames.stop is None else frames.stop
    return [i for i in indices if lo <= i < hi]


def seen_labels_for(labels_dir: Path, index: int, n_points: int, classes: list[str], unseen: list[str]) -> np.ndarray:
    """Run class ids of the seen classes from the ground truth (zero-shot setting); unseen and unlabelled -> IGNORE."""
    from .semantickitti import read_train_ids, train_to_run_ids

    train = read_train_ids(labels_dir / f"{index:06d}.label", n_points)
    return train_to_run_ids(train, classes, only=[c for c in classes if c not in unseen])


def run_label_job(
    pipeline,
    spec: SourceSpec,
    out_dir: Path,
    frames: slice | None = None,
    seen_labels_dir: Path | None = None,
    bag_out: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
):
    """Label every frame of ``spec`` within ``frames`` into ``out_dir``, resuming a run with the same
    fingerprint (``overwrite`` starts afresh); returns a ``label_run.JobSummary``."""
    from .label_run import execute_label_job, prepare_label_job, start_label_run

    job = prepare_label_job(pipeline.cfg, spec, out_dir, frames, seen_labels_dir, bag_out, overwrite)
    start_label_run(pipeline, job)
    return execute_label_job(pipeline, job, on_progress=on_progress)
