"""The sources of a fleet job: what ``partlift label SOURCE [SOURCE ...]`` names, and a folder name for each.

A source argument is a path, a glob (``bags/*.mcap``) or ``@list.txt`` (one path or glob per line; blank
lines and ``#`` comments are skipped; relative paths are relative to the list file's folder). Every source
gets a folder name in OUT derived from its path: the bag's file name without suffix or the sequence folder's
name, with as many parent folders as it takes to tell apart sources that share a name. The names depend on
the set of sources only, never on the order they were given in; a name recorded in ``OUT/fleet.json`` by an
earlier run is kept, so adding sources later never renames a run that exists.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .io.bag_writer import BAG_SUFFIXES
from .types import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def expand_sources(args: Sequence[str]) -> list[Path]:
    """Paths, globs and ``@list`` files -> absolute source paths, in the order given, each once."""
    paths: list[Path] = []
    for arg in args:
        if arg.startswith("@"):
            paths += _read_list(Path(arg[1:]))
        else:
            paths += _expand(arg, Path.cwd())
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    if not unique:
        raise InputError("no source given: name a sequence folder or a bag, a glob, or @list.txt")
    return unique


def _read_list(list_file: Path) -> list[Path]:
    if not list_file.is_file():
        raise InputError(f"@{list_file}: list file not found")
    paths = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            paths += _expand(line, list_file.parent, where=f" (in @{list_file})")
    if not paths:
        raise InputError(f"@{list_file} names no source")
    return paths


def _expand(pattern: str, base: Path, where: str = "") -> list[Path]:
    path = Path(pattern).expanduser()
    if not path.is_absolute():
        path = base / path
    if not glob.has_magic(pattern):
        return [path]
    matches = sorted(glob.glob(str(path)))
    if not matches:
        raise InputError(f"{pattern}{where}: no file or folder matches")
    return [Path(m) for m in matches]


def source_names(paths: Iterable[Path], known: Mapping[str, str] | None = None) -> dict[Path, str]:
    """A unique, stable folder name per source path (see module doc); ``known``: path -> name from fleet.json."""
    known = dict(known or {})
    names = {p: known[str(p)] for p in paths if str(p) in known}
    new = sorted({p for p in paths if p not in names}, key=str)
    taken = set(known.values())
    level = {p: 0 for p in new}
    while True:
        candidates = {p: _candidate(p, level[p]) for p in new}
        count: dict[str, int] = {}
        for name in candidates.values():
            count[name] = count.get(name, 0) + 1
        clashing = [p for p, name in candidates.items() if count[name] > 1 or name in taken]
        if not clashing:
            break
        for p in clashing:
            level[p] += 1
    names.update(candidates)
    return names


def _candidate(path: Path, level: int) -> str:
    """Level 0: the last part of the path; each level adds a parent folder; past the root, the suffix, then a
    hash of the whole path (unique)."""
    parts = list(path.parts[1:]) or [path.anchor]
    last = parts[-1]
    stem = last[: -len(Path(last).suffix)] if Path(last).suffix in BAG_SUFFIXES else last
    depth = len(parts)
    if level < depth:
        name = "_".join(parts[depth - 1 - level:-1] + [stem])
    elif level == depth:
        name = "_".join(parts)
    else:
        name = f"{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8 + level - depth]}"
    return _UNSAFE.sub("_", name).lstrip(".") or "source"
