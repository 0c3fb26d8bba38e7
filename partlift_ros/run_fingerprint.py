"""What determines a labelling run's labels, recorded in ``OUT/fingerprint.json`` and checked on resume.

A run's labels follow from: the class list and prompt templates, the CLIP model (its id or folder and the
content of its weight, config, tokenizer and preprocessor files), the rest of the resolved config
(including ``job.chunk_frames``), the source (path, topics, cameras, and for bags the size of the bag),
the zero-shot seen-labels folder and the partlift version. Frames that share affinity context are the
frames of one chunk within ``--frames``: that is recorded per frame (``label_chunks.py``), not here, so
that runs over adjacent ranges can be resumed into one OUT.

Weights are identified by size + sha256 per file: the files of a local folder are hashed (once; a later
run reuses the hash while the file's size and mtime are unchanged), a Hugging Face cache snapshot names
its large files by their sha256 already. A model given as an object (tests) is hashed from its tensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .config import PipelineConfig, atomic_write_text, flatten
from .types import InputError

FINGERPRINT_FILE = "fingerprint.json"
FORMAT = 1
# Config keys that never change a label (how a model is fetched); compared nowhere.
NOT_LABEL_KEYS = ("clip.local_files_only", "clip.export_dir", "geometry_threads")
MODEL_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.index.json")
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                   "merges.txt", "special_tokens_map.json")
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def run_fingerprint(cfg: PipelineConfig, source: dict, seen_labels: str | None = None) -> dict[str, Any]:
    """Everything but the weights' content (known once the model is resolved, see ``clip_files``)."""
    from . import __version__

    config = {k: v for k, v in flatten(cfg).items() if k not in NOT_LABEL_KEYS}
    config["clip.model"] = model_reference(cfg.clip.model)
    config["clip.processor"] = model_reference(cfg.clip.processor) if cfg.clip.processor else ""
    source = dict(source)
    if source.get("kind") == "rosbag":
        source["bytes"] = _bag_bytes(Path(source["path"]))
    return {
        "format": FORMAT,
        "partlift_version": __version__,
        "config": config,
        "source": source,
        "seen_labels": None if seen_labels is None else str(Path(seen_labels).resolve()),
    }


def model_reference(model: str) -> str:
    """A local folder as its absolute path (the same folder from another working directory), a hub id as is."""
    from .model_source import model_source

    folder = model_source(model, "CLIP model", InputError).folder
    return str(folder.resolve()) if folder is not None else model


def _bag_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files)


# ------------------------------------------------------------------------------------------- weights
def clip_files(clip_cfg, known: dict | None = None, model: Any = None) -> dict[str, dict]:
    """{file name: {"size", "sha256", ...}} of the CLIP model's and processor's files.

    ``known``: the ``clip_files`` of an earlier run, whose hashes are reused while a file's path, size and
    mtime are unchanged. When no file can be found (a model object built in code), the model's tensors are
    hashed instead (``model``).
    """
    known = known or {}
    out: dict[str, dict] = {}
    for prefix, folder, patterns in (
        ("model/", _model_folder(clip_cfg.model), MODEL_PATTERNS),
        ("processor/", _model_folder(clip_cfg.processor or clip_cfg.model), PROCESSOR_FILES),
    ):
        if folder is None:
            continue
        for path in sorted({f for pattern in patterns for f in folder.glob(pattern) if f.is_file()}):
            out[prefix + path.name] = _file_identity(path, known.get(prefix + path.name))
    if not any(name.startswith("model/") for name in out) and model is not None:
        out["model/tensors"] = {"sha256": _tensors_sha256(model)}
    return out


def _model_folder(source: str) -> Path | None:
    """The folder holding a model's files: the local folder, or the Hugging Face cache snapshot of a hub id."""
    from .model_source import model_source

    folder = model_source(source, "CLIP model", InputError).folder
    if folder is not None:
        return folder
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, "config.json")
    except Exception:  # noqa: BLE001 - not a valid repo id, no hub library: nothing cached to name
        return None
    return Path(found).parent if isinstance(found, str) else None


def _file_identity(path: Path, known: dict | None) -> dict:
    stat = path.stat()
    ident = {"size": stat.st_size, "path": str(path.resolve()), "mtime_ns": stat.st_mtime_ns}
    target = Path(os.path.realpath(path)).name
    if path.is_symlink() and _SHA256_NAME.match(target):
        ident["sha256"] = target  # a Hugging Face cache blob: its name is the sha256 of its content
    elif known and all(known.get(k) == ident[k] for k in ("size", "path", "mtime_ns")) and "sha256" in known:
        ident["sha256"] = known["sha256"]
    else:
        ident["sha256"] = _file_sha256(ident["path"], stat.st_size, stat.st_mtime_ns)
    return ident


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's content, once per process while its size and mtime stay (a fleet's sources share
    one model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors_sha256(model: Any) -> str:
    from .clip_export import tensor_bytes

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- compare
def fingerprint_differences(run: dict, new: dict) -> list[str]:
    """What differs between a run's fingerprint and this invocation's, one line each (empty = the same)."""
    lines = []
    old_cfg, new_cfg = run.get("config", {}), new.get("config", {})
    for key in sorted(set(old_cfg) | set(new_cfg), key=_key_order):
        if old_cfg.get(key) != new_cfg.get(key):
            lines.append(f"{key}: the run has {_show(old_cfg.get(key))}, this invocation {_show(new_cfg.get(key))}")
    for key in ("source", "seen_labels", "partlift_version", "format"):
        if run.get(key) != new.get(key):
            lines.append(f"{key}: the run has {_show(run.get(key))}, this invocation {_show(new.get(key))}")
    # The crop encoder `clip.backend: auto` chose (it depends on the machine and the installed runtimes).
    if "clip_encoder" in run and "clip_encoder" in new and run["clip_encoder"] != new["clip_encoder"]:
        lines.append(f"CLIP crop encoder: the run has {_show(run['clip_encoder'])}, this invocation "
                     f"{_show(new['clip_encoder'])} (set clip.backend / clip.precision to the run's)")
    if "clip_files" in run and "clip_files" in new:
        old_files, new_files = run["clip_files"], new["clip_files"]
        for name in sorted(set(old_files) | set(new_files)):
            old, cur = old_files.get(name, {}), new_files.get(name, {})
            if (old.get("size"), old.get("sha256")) != (cur.get("size"), cur.get("sha256")):
                lines.append(f"CLIP file {name} ({new_cfg.get('clip.model')}): the run has {_file_text(old)}, "
                             f"this invocation {_file_text(cur)}")
    return lines


def _key_order(key: str) -> tuple[int, str]:
    first = ("classes", "unseen_classes", "clip.model", "clip.processor", "clip.templates")
    return (first.index(key), key) if key in first else (len(first), key)


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _file_text(ident: dict) -> str:
    if not ident:
        return "no such file"
    return f"sha256 {ident.get('sha256', '?')[:12]}…" + (f" ({ident['size']} bytes)" if "size" in ident else "")


def read_fingerprint(out_dir: Path) -> dict | None:
    path = Path(out_dir) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable run fingerprint ({exc}); pass --overwrite to start the run afresh") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a run fingerprint; pass --overwrite to start the run afresh")
    return data


def write_fingerprint(out_dir: Path, fingerprint: dict) -> None:
    atomic_write_text(Path(out_dir) / FINGERPRINT_FILE, json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
