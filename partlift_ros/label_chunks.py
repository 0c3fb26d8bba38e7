"""Labelling a source chunk by chunk: the unit a resumed run, and a fleet of workers, can rely on.

A source's frames (within ``--frames``) are cut at fixed frame numbers into chunks of ``job.chunk_frames``
([0, n), [n, 2n), ...). Every chunk starts with an empty affinity context (``pipeline.reset()``), so its
labels depend only on its own frames: chunks can be labelled in any order, by any process, and give the
same bytes.

Inside a chunk the offline block queue pops blocks of consecutive frames (``LabelPipeline.process``
returns one block per call). Each written frame records in its ``.npz`` its ``chunk`` (first and last frame
of its chunk) and its ``block`` (the frames refined with it). A resumed chunk then rebuilds exactly the
state an uninterrupted run had, without decoding what it does not need:

- offline: a block whose frames are all written is skipped unread (the queue is empty before and after
  it); a block cut by the interruption is fed again from its first frame (frames already written are
  recomputed for context, not rewritten);
- online: the ``affinity.window_frames`` frames before the first missing one are fed again for context;
- affinity off: only missing frames are read.

A frame that failed before (a corrupt message) is tried again; if it still fails, the blocks are those
of an uninterrupted run.

Labelling a source in pieces (several processes, issue 15): the driver calls
``label_run.prepare_label_job`` and ``start_label_run`` once per source (checks, fingerprint, metadata);
any worker then labels one chunk of ``job.chunks`` with ``label_chunk(pipeline, job.source, chunk,
LabelRunWriter.open(job.out_dir, cfg.classes), clip=...)`` and its own ``LabelPipeline(cfg)`` (which needs
no CLIP model when ``clip`` encodes elsewhere: ``fleet_ray.py``). ``job.source`` holds no open file (a bag's
first-pass index is plain arrays), so it can be shipped to the worker as it is. CLIP encodes the crops of a
CLIP group (an offline block, or one frame: ``clip_groups.py``) together in every mode, so the bytes do not
depend on where it runs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .types import IGNORE, InputError, LabelledCloud

def split_chunks(indices: Sequence[int], chunk_frames: int) -> list[list[int]]:
    """Frame numbers (sorted) -> chunks cut at multiples of ``chunk_frames`` (0 = one chunk)."""
    chunks: dict[int, list[int]] = {}
    for i in indices:
        chunks.setdefault(int(i) // chunk_frames if chunk_frames > 0 else 0, []).append(int(i))
    return [chunks[k] for k in sorted(chunks)]


def chunk_bounds(chunk: Sequence[int]) -> np.ndarray:
    """The ``chunk`` record: first and last frame number labelled together."""
    return np.array([chunk[0], chunk[-1]], dtype=np.int64)


@dataclass
class ChunkResult:
    """What labelling one chunk did (frame numbers)."""

    labelled: list[int] = field(default_factory=list)  # written now
    failed: list[tuple[int, str]] = field(default_factory=list)  # (frame, reason), not written
    read: int = 0  # frames decoded from the source (including those fed again for context)
    points_total: int = 0
    points_labelled: int = 0
    stage_ms: dict[str, list[float]] = field(default_factory=dict)


def plan_chunk(
    chunk: Sequence[int], done: set[int], block_of: Callable[[int], Sequence[int]], affinity
) -> list[tuple[int, bool]]:
    """(frame, write) in order: the frames to feed through the pipeline; ``write`` False = context only."""
    chunk = [int(i) for i in chunk]
    if not affinity.enabled:
        return [(i, True) for i in chunk if i not in done]
    if affinity.mode == "online":
        missing = [pos for pos, i in enumerate(chunk) if i not in done]
        if not missing:
            return []
        start = max(0, missing[0] - int(affinity.window_frames))
        # Causal: frames after the last missing one are not needed as context.
        return [(i, i not in done) for i in chunk[start:missing[-1] + 1]]
    position = {i: pos for pos, i in enumerate(chunk)}
    steps: list[tuple[int, bool]] = []
    pos = 0
    while pos < len(chunk):
        i = chunk[pos]
        if i in done:
            members = [int(m) for m in block_of(i)]
            end = position.get(members[-1], -1) if members else -1
            settled = (members and members[0] == i and end >= pos and set(members) <= done
                       and all(chunk[k] in done for k in range(pos, end + 1)))
            if settled:
                pos = end + 1  # a whole block written: the queue is empty before and after it
                continue
        steps.append((i, i not in done))
        pos += 1
    return steps


def label_chunk(
    pipeline,
    source,
    chunk: Sequence[int],
    writer,
    prepare_frame: Callable | None = None,
    on_frame: Callable[[int, str], None] | None = None,
    clip=None,
) -> ChunkResult:
    """Label the frames ``chunk`` (sorted frame numbers, all in one chunk) of ``source`` into ``writer``'s run.

    ``source``: a ``label_job.FrameSource``; ``writer``: a ``LabelRunWriter`` (frames it holds are resumed);
    ``prepare_frame(frame)`` may attach per-frame inputs (seen labels) and raise InputError;
    ``on_frame(index, what)`` is called per frame written ("labelled") or skipped ("failed") now;
    ``clip`` encodes the crops of each CLIP group (default ``LocalClip(pipeline)``; a fleet worker passes
    CLIP actors), while the next group's geometry runs.
    Deterministic: the same chunk gives the same bytes whatever ran before it in this process.
    """
    from .io.writers import read_frame_arrays

    chunk = [int(i) for i in chunk]
    result = ChunkResult()
    done = {i for i in chunk if writer.done(i)}
    out_dir = Path(writer.out_dir)
    steps = plan_chunk(chunk, done, lambda i: read_frame_arrays(out_dir, i, ["block"]).get("block", []),
                       pipeline.cfg.affinity)
    write = dict(steps)
    if not any(write.values()):
        return result
    bounds = chunk_bounds(chunk)
    pipeline.reset()  # every chunk starts with an empty affinity context

    def fail(index: int, exc: Exception) -> None:
        if write[index]:
            result.failed.append((index, _reason(index, exc)))
            if on_frame:
                on_frame(index, "failed")

    def emit(block: list[LabelledCloud]) -> None:
        members = np.array([lc.frame.index for lc in block], dtype=np.int64)
        for lc in block:
            index = lc.frame.index
            if not write.get(index, False):
                continue  # recomputed for context: its files are already there
            writer.write(lc, records={"chunk": bounds, "block": members})
            result.labelled.append(index)
            result.points_total += lc.num_points
            result.points_labelled += int((lc.label != IGNORE).sum())
            for stage, ms in lc.timings_ms.items():
                result.stage_ms.setdefault(stage, []).append(ms)
            if on_frame:
                on_frame(index, "labelled")

    clip = clip or LocalClip(pipeline)
    encoding: deque = deque()  # (CLIP group, handle) in the order the groups closed
    with job_threads(pipeline.cfg.job.threads):
        _feed(pipeline, source, steps, prepare_frame, clip, encoding, fail, emit, result)
    return result


def _feed(pipeline, source, steps, prepare_frame, clip, encoding: deque, fail, emit, result: ChunkResult) -> None:
    """Read the planned frames, prepare them, send each closed CLIP group to ``clip`` and label the groups in
    order as their results come back (one group encodes while the next is prepared)."""

    def settle(keep: int) -> None:
        """Label the groups whose CLIP results are back, oldest first, until ``keep`` are still encoding."""
        while len(encoding) > keep:
            group, handle = encoding.popleft()
            emit(pipeline.label_group(group, *clip.result(handle)))

    def submit(group: list) -> None:
        if group:
            encoding.append((group, clip.submit([crop for p in group for crop in p.crops])))
            settle(1)  # one group encodes while the next one is prepared

    for index, frame in source.read([i for i, _ in steps]):
        if isinstance(frame, InputError):
            fail(index, frame)
            continue
        result.read += 1
        try:
            if prepare_frame is not None:
                prepare_frame(frame)
            prepared = pipeline.prepare(frame)
        except InputError as exc:
            fail(index, exc)
            continue
        submit(pipeline.queue_prepared(prepared))
    submit(pipeline.open_group())
    settle(0)
    emit(pipeline.flush())


class LocalClip:
    """CLIP in this process for ``label_chunk``: ``submit(crops)`` encodes at once, ``result`` hands it back.
    (A fleet worker passes a remote one with the same two methods: ``fleet_ray.RemoteClip``.)"""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    def submit(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
        return timed_clip_scores(self.pipeline, crops)

    def result(self, handle: tuple[np.ndarray, np.ndarray, float]) -> tuple[np.ndarray, np.ndarray, float]:
        return handle


def timed_clip_scores(pipeline, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """``pipeline.clip_scores(crops)`` with ``job.threads`` threads, and the milliseconds it took."""
    from .clip_preprocess import torch_threads

    t0 = time.perf_counter()
    with torch_threads(pipeline.cfg.job.threads), job_threads(pipeline.cfg.job.threads):
        features, scores = pipeline.clip_scores(crops)
    return features, scores, (time.perf_counter() - t0) * 1e3


def job_threads(n: int):
    """A context with BLAS and OpenMP pools at ``n`` threads (config ``job.threads``; torch's own pool is set
    where CLIP runs): the float results of matrix products depend on the thread count, and a Ray worker
    starts with other pool sizes than this process."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def _reason(index: int, exc: Exception) -> str:
    text = str(exc)
    return text if text.startswith(f"frame {index}") else f"frame {index}: {text}"


def chunk_conflicts(out_dir: Path, chunks: Sequence[Sequence[int]], done: set[int]) -> list[str]:
    """Frames of a run labelled in another chunk than this invocation would put them in (another --frames).

    One written frame per chunk is checked: every resume checks, so a chunk's frames all share one record.
    """
    from .io.writers import read_frame_arrays

    lines = []
    for chunk in chunks:
        first = next((i for i in chunk if i in done), None)
        if first is None:
            continue
        recorded = read_frame_arrays(out_dir, first, ["chunk"]).get("chunk")
        if recorded is None or [int(x) for x in recorded] != [chunk[0], chunk[-1]]:
            was = "no chunk record" if recorded is None else f"frames {int(recorded[0])}..{int(recorded[1])}"
            lines.append(f"frame {first} was labelled with {was} as its chunk; this invocation's chunk is frames "
                         f"{chunk[0]}..{chunk[-1]}")
    return lines
