"""Fleet jobs: several sources in one `partlift label`, in this process or on Ray, with the bytes of one process.

The Ray tests start real clusters (a local one from `--workers 2`, a 2-node `ray.cluster_utils.Cluster`), so
they are few and label 2 sources x 4 real frames with the tiny CLIP; they need the ray extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from job_fixtures import copy_sequence, invoke, run_files, text, write_config
from partlift_ros.fleet_sources import expand_sources, source_names

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fleet_args(tmp_path_factory, kitti_root, tiny_clip_dir):
    """Two real sequences, frames 0-3, in chunks of 2 frames (offline blocks of about 2 frames)."""
    tmp = tmp_path_factory.mktemp("fleet")
    config = write_config(tmp / "quick.yaml", chunk_frames=2)
    sources = [kitti_root / "sequences" / "00", kitti_root / "sequences" / "08"]
    return [*sources, "--clip-model", tiny_clip_dir, "--config", config, "--frames", "0:4"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, fleet_args):
    """The fleet labelled with --workers 1 (the default): the reference bytes."""
    out = tmp_path_factory.mktemp("reference") / "fleet"
    r = invoke("label", *fleet_args, "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_sources_come_from_paths_globs_and_list_files(tmp_path, monkeypatch):
    for name in ("a.mcap", "b.mcap", "c.db3", "seq/08", "other/08"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "bags.txt").write_text("# the fleet\n../*.mcap\n\n../seq/08  # a sequence\n")
    monkeypatch.chdir(tmp_path)
    got = expand_sources(["@lists/bags.txt", "c.db3", "a.mcap"])
    assert got == [tmp_path / "a.mcap", tmp_path / "b.mcap", tmp_path / "seq" / "08", tmp_path / "c.db3"]
    with pytest.raises(Exception, match=r"nothing\*.mcap: no file or folder matches"):
        expand_sources(["nothing*.mcap"])
    with pytest.raises(Exception, match="list file not found"):
        expand_sources(["@missing.txt"])


def test_source_names_are_unique_readable_and_do_not_depend_on_the_order():
    paths = [Path("/d/kitti/sequences/08"), Path("/d/other/sequences/08"), Path("/d/kitti/sequences/00"),
             Path("/bags/drive_1.mcap"), Path("/bags/x.mcap"), Path("/bags/x.db3")]
    names = source_names(paths)
    assert names == {
        paths[0]: "kitti_sequences_08", paths[1]: "other_sequences_08", paths[2]: "00",
        paths[3]: "drive_1", paths[4]: "bags_x.mcap", paths[5]: "bags_x.db3",
    }
    assert source_names(paths[::-1]) == names
    # A name recorded by an earlier run (fleet.json) is kept; a new source never takes it.
    known = {"/d/kitti/sequences/08": "08"}
    again = source_names(paths, known)
    assert again[paths[0]] == "08" and again[paths[1]] == "sequences_08"
    assert len(set(again.values())) == len(paths)


def test_several_sources_get_a_run_each_like_one_source_alone_and_resume(one_process, fleet_args, seq08, tmp_path):
    record = json.loads((one_process / "fleet.json").read_text())
    rows = {s["name"]: s for s in record["sources"]}
    assert sorted(rows) == ["00", "08"] and sorted(p.name for p in one_process.iterdir()) == ["00", "08", "fleet.json"]
    for name, row in rows.items():
        assert row["path"] == str(seq08.parent / name) and row["kind"] == "kitti"
        assert (row["frames"], row["labelled"], row["labelled_now"], row["skipped"]) == (4, 4, 4, [])
        assert row["seconds"] > 0
    # One source keeps the layout of a single run, and its bytes equal its run in the fleet folder.
    single = tmp_path / "single"
    r = invoke("label", seq08, *fleet_args[2:], "--out", single)
    assert r.exit_code == 0, r.output
    assert not (single / "fleet.json").exists() and (single / "labels" / "000003.label").is_file()
    assert run_files(single) == run_files(one_process / "08")
    # Re-running the same command resumes every source: nothing is left, no model loads, nothing changes.
    before = run_files(one_process / "00")
    r = invoke("label", *fleet_args, "--out", one_process)
    assert r.exit_code == 0, r.output
    assert "8 already done (resuming)" in text(r) and "loading CLIP" not in r.output
    assert run_files(one_process / "00") == before


def test_a_broken_frame_in_one_source_is_listed_and_the_job_exits_1(tmp_path, seq08, kitti_root, tiny_clip_dir):
    bad = copy_sequence(seq08, tmp_path / "a" / "08", range(2), scans={1: np.zeros((5, 3))})
    copy_sequence(kitti_root / "sequences" / "00", tmp_path / "b" / "00", range(1))
    (tmp_path / "list.txt").write_text("a/08\nb/*\n")
    out = tmp_path / "out"
    r = invoke("label", f"@{tmp_path / 'list.txt'}", "--out", out, "--clip-model", tiny_clip_dir,
               "--config", write_config(tmp_path / "quick.yaml"))
    assert r.exit_code == 1, r.output  # the worst of the sources: 08 skipped a frame, 00 is complete
    rows = {s["name"]: s for s in json.loads((out / "fleet.json").read_text())["sources"]}
    assert rows["08"]["path"] == str(bad) and rows["08"]["labelled"] == 1
    assert [s["frame"] for s in rows["08"]["skipped"]] == [1] and "frame 1" in rows["08"]["skipped"][0]["reason"]
    assert (rows["00"]["labelled"], rows["00"]["skipped"]) == (1, [])
    assert "skipped 08: frame 1" in text(r)


def test_sources_that_cannot_be_labelled_stop_the_job_before_anything_is_written(tmp_path, seq08, one_process):
    (tmp_path / "notes").mkdir()
    out = tmp_path / "out"
    r = invoke("label", seq08, tmp_path / "notes", tmp_path / "missing.mcap", "--out", out)
    assert r.exit_code == 2, r.output
    assert "2 of 3 sources cannot be labelled" in text(r)
    assert "notes: not a SemanticKITTI sequence folder" in text(r) and "source not found" in text(r)
    assert not out.exists()
    # An OUT that is the run of one source is not a fleet folder.
    r = invoke("label", seq08, seq08.parent / "00", "--out", one_process / "08")
    assert r.exit_code == 2 and "is not a fleet folder" in text(r)


def test_without_ray_workers_2_fails_at_once_naming_the_extra_and_workers_1_imports_no_ray(tmp_path, seq08, tiny_clip_dir):
    script = f"""
import json, sys
sys.modules["ray"] = None  # as if Ray were not installed
from typer.testing import CliRunner
from partlift_ros.cli import app
r = CliRunner().invoke(app, ["label", "/no/such/source", "--out", "{tmp_path / 'a'}", "--workers", "2"])
failed = dict(code=r.exit_code, lines=[l for l in r.output.splitlines() if l.strip()], torch="torch" in sys.modules)
del sys.modules["ray"]
r = CliRunner().invoke(app, ["label", "{seq08}", "--out", "{tmp_path / 'b'}", "--clip-model", "{tiny_clip_dir}",
                             "--config", "{write_config(tmp_path / 'quick.yaml')}", "--frames", "0:1"])
print(json.dumps(dict(failed=failed, code=r.exit_code, ray="ray" in sys.modules)))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    # One line naming the extra, before the source is even looked at or torch is imported.
    assert got["failed"]["code"] == 2 and len(got["failed"]["lines"]) == 1
    assert 'pip install -e ".[ray]"' in got["failed"]["lines"][0] and not got["failed"]["torch"]
    assert got["code"] == 0 and not got["ray"]


def test_a_process_with_other_thread_pools_labels_the_same_bytes(tmp_path, seq08, tiny_clip_dir):
    """A Ray worker starts with OMP_NUM_THREADS=1; this process with the machine's cores. CLIP's vision tower
    and the affinity products give other float bits with other thread counts, so a job fixes them
    (job.threads): the default config's blocks (about 600 instances here) show it."""
    args = ["label", seq08, "--clip-model", tiny_clip_dir, "--frames", "0:2"]
    r = invoke(*args, "--out", tmp_path / "here")
    assert r.exit_code == 0, r.output
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    script = ("import sys; from typer.testing import CliRunner; from partlift_ros.cli import app; "
              "r = CliRunner().invoke(app, sys.argv[1:]); sys.exit(r.exit_code)")
    done = subprocess.run([sys.executable, "-c", script, *map(str, args), "--out", str(tmp_path / "one-thread")],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert len(np.load(tmp_path / "here" / "frames" / "000000.npz")["block"]) == 2  # one block: a cross-frame group
    assert run_files(tmp_path / "one-thread") == run_files(tmp_path / "here")


# --------------------------------------------------------------------------------------------- on Ray
def test_two_workers_on_a_local_ray_cluster_write_the_bytes_of_one_process(one_process, fleet_args, tmp_path):
    pytest.importorskip("ray", reason="Ray missing: pip install -e '.[ray]'")
    out = tmp_path / "ray"
    r = invoke("label", *fleet_args, "--out", out, "--workers", "2")
    assert r.exit_code == 0, r.output
    assert "Ray: 2 workers, 2 CLIP actors" in text(r)
    for name in ("00", "08"):
        assert run_files(out / name) == run_files(one_process / name)  # every .label and .npz array
    rows = json.loads((out / "fleet.json").read_text())["sources"]
    assert [(s["name"], s["labelled"], s["labelled_now"]) for s in rows] == [("00", 4, 4), ("08", 4, 4)]


def test_a_node_removed_mid_run_loses_no_frame_and_changes_no_byte(one_process, fleet_args, tmp_path, monkeypatch):
    pytest.importorskip("ray", reason="Ray missing: pip install -e '.[ray]'")
    from ray.cluster_utils import Cluster

    # The cluster's processes import partlift from this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = tmp_path / "ray"
    seen: dict = {}

    def remove_worker_node_after_the_first_frame():
        while not list(out.glob("*/labels/*.label")):
            time.sleep(0.05)
        seen["files"] = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*/*/*") if p.is_file()}
        seen["labels"] = len(list(out.glob("*/labels/*.label")))
        cluster.remove_node(worker)

    remover = threading.Thread(target=remove_worker_node_after_the_first_frame, daemon=True)
    remover.start()
    try:
        r = invoke("label", *fleet_args, "--out", out, "--workers", "2", "--ray-address", cluster.address)
    finally:
        cluster.shutdown()
    assert r.exit_code == 0, r.output
    assert not remover.is_alive() and 1 <= seen["labels"] < 8  # removed mid-run
    for name in ("00", "08"):
        assert run_files(out / name) == run_files(one_process / name)
    # Frames written before the node went were not written again, and nothing half-written is left.
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in seen["files"]} == seen["files"]
    assert len(list(out.glob("*/labels/*.label"))) == 8 and not list(out.rglob("*.tmp"))
