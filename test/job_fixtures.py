"""Helpers for the labelling-job tests: the CLI in-process, small copies of real sequences, bags rewritten
message by message (to break one message of a real bag), configs that keep real frames quick to label."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from partlift_ros.cli import app

runner = CliRunner()
# Few superpoints per frame (quick with the tiny CLIP) and a small queue, so offline blocks hold about 2 frames.
QUICK = {"clustering": {"max_superpoints": 40}, "affinity": {"queue_size": 60}}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def text(result) -> str:
    """The command's output with line wrapping undone."""
    return " ".join(result.output.split())


def write_config(path: Path, chunk_frames: int | None = None, **extra) -> Path:
    data = {k: dict(v) for k, v in QUICK.items()}
    if chunk_frames is not None:
        data["job"] = {"chunk_frames": chunk_frames}
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return path


def copy_sequence(seq: Path, dst: Path, frames: range, scans: dict[int, np.ndarray] | None = None) -> Path:
    """A SemanticKITTI folder with ``frames`` of ``seq`` (same numbers); ``scans`` replaces some (N, 4) scans."""
    for name in ("velodyne", "image_2", "labels"):
        (dst / name).mkdir(parents=True)
    for name in ("calib.txt", "times.txt"):
        shutil.copy(seq / name, dst / name)
    for i in frames:
        shutil.copy(seq / "image_2" / f"{i:06d}.png", dst / "image_2" / f"{i:06d}.png")
        shutil.copy(seq / "labels" / f"{i:06d}.label", dst / "labels" / f"{i:06d}.label")
        scan = (scans or {}).get(i)
        if scan is None:
            shutil.copy(seq / "velodyne" / f"{i:06d}.bin", dst / "velodyne" / f"{i:06d}.bin")
        else:
            np.ascontiguousarray(scan, dtype="<f4").tofile(dst / "velodyne" / f"{i:06d}.bin")
    return dst


def rewrite_bag(src: Path, dst: Path, change: Callable[[str, int, bytes], list[bytes]] | None = None) -> Path:
    """Copy every message of ``src`` into ``dst``; ``change(topic, position on topic, cdr)`` returns the CDR
    messages to write instead (several, one, or none to drop it)."""
    from rosbags.highlevel import AnyReader

    from partlift_ros.io.bag_writer import BagOutput, get_ros_typestore

    with AnyReader([src], default_typestore=get_ros_typestore("humble")) as reader, BagOutput(dst) as out:
        for conn in reader.connections:
            out.add_topic(conn.topic, conn.msgtype, latched=conn.topic == "/tf_static")
        count: dict[str, int] = {}
        for conn, t, raw in reader.messages(connections=reader.connections):
            position = count.get(conn.topic, 0)
            count[conn.topic] = position + 1
            for data in (change(conn.topic, position, bytes(raw)) if change else [bytes(raw)]):
                out.write_cdr(conn.topic, data, t * 1e-9)
    return dst


def reserialize(cdr: bytes, msgtype: str, edit: Callable) -> bytes:
    """``cdr`` decoded, changed by ``edit(msg) -> msg`` and encoded again."""
    from partlift_ros.io.bag_writer import get_ros_typestore

    ts = get_ros_typestore("humble")
    return ts.serialize_cdr(edit(ts.deserialize_cdr(cdr, msgtype)), msgtype)


def run_files(out: Path) -> dict[str, bytes]:
    """Every .label and every array of every .npz of a run, by name, for byte-for-byte comparison."""
    files = {p.name: p.read_bytes() for p in sorted((out / "labels").glob("*.label"))}
    for p in sorted((out / "frames").glob("*.npz")):
        with np.load(p) as data:
            files.update({f"{p.name}:{k}": data[k].tobytes() + str(data[k].dtype).encode() for k in data.files})
    return files
