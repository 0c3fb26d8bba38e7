"""Resume: an interrupted run, re-run, gives the bytes of an uninterrupted one (the affinity context is rebuilt
from the chunk and block records); the chunk plan reads only what it needs."""

from __future__ import annotations

import numpy as np
import pytest

from job_fixtures import invoke, run_files, text, write_config
from partlift_ros.config import AffinityConfig
from partlift_ros.label_chunks import plan_chunk, split_chunks


def bag_clouds(path):
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        conns = [c for c in reader.connections if c.topic == "/labelled_points"]
        return [bytes(raw) for _, _, raw in reader.messages(connections=conns)]


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(tmp_path, seq08, tiny_clip_dir, monkeypatch, mode):
    from partlift_ros.io import writers

    config = write_config(tmp_path / "quick.yaml", chunk_frames=3)  # chunks: frames 0-2 and 3

    def label(out):
        return invoke("label", seq08, "--out", out, "--clip-model", tiny_clip_dir, "--config", config,
                      "--frames", "0:4", "--affinity", mode, "--write-bag", out.parent / f"{out.name}.mcap")

    ref = tmp_path / "ref"
    r = label(ref)
    assert r.exit_code == 0, r.output
    blocks = [tuple(np.load(ref / "frames" / f"{i:06d}.npz")["block"].tolist()) for i in range(4)]
    if mode == "offline":
        # Die while writing the second frame of a block: its first frame is written, the block is cut.
        cut = next(b for b in blocks if len(b) >= 2)
        die_at = cut[1]
        assert set(blocks[cut[0]]) == set(cut)
    else:
        assert blocks == [(i,) for i in range(4)]
        die_at = 2  # frames 0 and 1 written; frame 2 needs both as context
    real_write = writers.LabelRunWriter.write

    def interrupted_write(self, labelled, *args, **kwargs):
        if labelled.frame.index == die_at:
            raise KeyboardInterrupt  # Ctrl-C while writing this frame
        return real_write(self, labelled, *args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(writers.LabelRunWriter, "write", interrupted_write)
    r = label(run)
    assert r.exit_code == 130, r.output
    assert f"interrupted: {die_at} frames labelled by this run" in text(r) and "re-running the same command resumes" in text(r)
    assert sorted(p.name for p in (run / "labels").iterdir()) == [f"{i:06d}.label" for i in range(die_at)]
    assert not (tmp_path / "run.mcap").exists() and not list(run.rglob("*.tmp"))
    # What a process killed mid-write leaves (kill -9, a Ray node removed): the resumed run sweeps it away
    # (fleet._remove_temp_files, once no writer is left).
    stale = [run / "labels" / f".{die_at:06d}.label.k1ll3d.tmp", run / "frames" / f".{die_at:06d}.npz.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")

    monkeypatch.setattr(writers.LabelRunWriter, "write", real_write)
    r = label(run)
    assert r.exit_code == 0, r.output
    assert f"{die_at} already done (resuming)" in text(r)
    assert not list(run.rglob("*.tmp"))
    assert run_files(run) == run_files(ref)  # every .label and every .npz array, byte for byte
    assert bag_clouds(tmp_path / "run.mcap") == bag_clouds(tmp_path / "ref.mcap")  # all four frames


def test_chunks_are_cut_at_fixed_frame_numbers():
    assert split_chunks([3, 4, 5, 6, 9, 10], 4) == [[3], [4, 5, 6], [9, 10]]
    assert split_chunks([3, 4, 5], 0) == [[3, 4, 5]]


def test_offline_plan_skips_whole_written_blocks_and_refeeds_a_cut_one():
    blocks = {0: [0, 1], 1: [0, 1], 2: [2, 3, 4], 3: [2, 3, 4], 5: [5]}
    offline = AffinityConfig(mode="offline")
    # Interrupted while writing frame 4: block 2-4 is cut, so 2 and 3 are fed again (not rewritten).
    plan = plan_chunk(range(8), {0, 1, 2, 3}, blocks.get, offline)
    assert plan == [(2, False), (3, False), (4, True), (5, True), (6, True), (7, True)]
    # Frame 6 failed in the earlier run, between blocks: only it is tried again.
    assert plan_chunk(range(7), {0, 1, 2, 3, 4, 5}, blocks.get, offline) == [(6, True)]
    # Frame 3 failed inside block [2, 4]: the block is fed again around it.
    gapped = {0: [0, 1], 1: [0, 1], 2: [2, 4], 4: [2, 4]}
    assert plan_chunk(range(5), {0, 1, 2, 4}, gapped.get, offline) == [(2, False), (3, True), (4, False)]
    assert plan_chunk(range(2), {0, 1}, blocks.get, offline) == []


def test_online_plan_feeds_the_window_before_the_first_missing_frame():
    online = AffinityConfig(mode="online", window_frames=2)
    assert plan_chunk(range(6), {0, 1, 2, 3}, None, online) == [(2, False), (3, False), (4, True), (5, True)]
    assert plan_chunk(range(6), {0, 2, 3, 4, 5}, None, online) == [(0, False), (1, True)]
    off = AffinityConfig(enabled=False)
    assert plan_chunk(range(4), {0, 2}, None, off) == [(1, True), (3, True)]
