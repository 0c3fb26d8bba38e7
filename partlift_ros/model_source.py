"""Where a model comes from: a local folder or a Hugging Face hub id, and whether the hub may be contacted.

One rule for every loader (CLIP, SAM): a name that exists on disk or looks like a path is a local folder,
anything else is a hub id. Before a hub id is fetched, the hub is probed once with a short, bounded timeout:
transformers would otherwise retry an unreachable hub for about a minute before failing. When the hub
cannot be reached (or ``HF_HUB_OFFLINE`` / ``local_files_only`` forbid it) the model is taken from the
local Hugging Face cache without any network call, and a missing cache entry fails at once with one line.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

PROBE_TIMEOUT_S = 1.5  # the whole probe (DNS included) is bounded by this, see hub_unreachable_reason
_PROBE_TTL_S = 60.0  # one probe serves the model and its processor, which load one after the other
_probe_cache: dict[str, tuple[float, str | None]] = {}
_TRUE = ("1", "ON", "YES", "TRUE")

T = TypeVar("T")


@dataclass(frozen=True)
class ModelSource:
    """A model name as the user wrote it, resolved to a local folder or a hub id."""

    name: str
    folder: Path | None  # the folder when ``name`` is a local path, else None

    @property
    def hub_id(self) -> str | None:
        return None if self.folder is not None else self.name


def looks_like_path(name: str) -> bool:
    """Paths start with . / ~ or have more than one separator; hub ids are 'name' or 'org/name'."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def model_source(name: str, what: str, error: type[Exception] = FileNotFoundError) -> ModelSource:
    """Resolve ``name``; raises ``error`` for a path that is missing or is a file instead of a folder."""
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise error(f"{what} path {p} is a file; expected a model folder or a hub id")
        return ModelSource(name, p)
    if looks_like_path(name):
        raise error(f"{what} folder {p} does not exist")
    return ModelSource(name, None)


def hub_offline_flag() -> str | None:
    """'HF_HUB_OFFLINE=1' (or TRANSFORMERS_OFFLINE) when the environment forbids the hub, else None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in _TRUE:
            return f"{var}={os.environ[var]}"
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:  # read at import: the variable may have been set before and removed since
            return "HF_HUB_OFFLINE"
    except ImportError:
        pass
    return None


def hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_unreachable_reason(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers an HTTP request within ``timeout_s``, else a short reason.

    One HEAD request through huggingface_hub's own HTTP client (so HF_ENDPOINT, proxies and certificates are
    honoured), on a daemon thread joined with a deadline: a DNS lookup that hangs cannot hold the caller.
    Any HTTP answer, even an error status, means the hub is reachable. Results are kept for a minute.
    """
    endpoint = hub_endpoint()
    now = time.monotonic()
    cached = _probe_cache.get(endpoint)
    if cached is not None and now - cached[0] < _PROBE_TTL_S:
        return cached[1]
    result: list[str | None] = []

    def probe() -> None:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(endpoint, timeout=timeout_s)
            result.append(None)
        except Exception as exc:  # every transport failure means the same thing here: no hub
            result.append(first_line(exc))

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    reason = result[0] if result else f"no answer within {timeout_s:g} s"
    _probe_cache[endpoint] = (now, reason)
    return reason


def hub_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def load_from_hub(load: Callable[[bool], T], hub_id: str, local_files_only: bool, what: str,
                  how_to_fix: str, error: type[Exception]) -> T:
    """``load(local_files_only)`` for a hub id, never waiting on an unreachable hub.

    The hub is contacted only when allowed (``local_files_only`` False, no HF_HUB_OFFLINE) and the probe
    gets an answer; otherwise the local cache is used without network, and a model that is not cached
    raises ``error`` with one line naming the id, why the hub was not used and ``how_to_fix``.
    """
    why_offline = "local_files_only is set" if local_files_only else hub_offline_flag()
    if why_offline is None:
        unreachable = hub_unreachable_reason()
        if unreachable is not None:
            why_offline = f"{hub_endpoint()} cannot be reached ({unreachable})"
    offline_error = f"{what} {hub_id!r} is not in the Hugging Face cache and {why_offline}. {how_to_fix}"
    if why_offline is not None and cached_hub_folder(hub_id) is None:
        raise error(offline_error)  # known without importing the model code (seconds on a busy machine)
    try:
        return load(why_offline is not None)
    except (OSError, ValueError, KeyError) as exc:
        if why_offline is not None:
            raise error(offline_error) from exc
        raise error(f"cannot load {what} {hub_id!r} from the hub: {first_line(exc)}. {how_to_fix}") from exc


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message: library errors often run to many lines."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def cached_hub_folder(hub_id: str) -> Path | None:
    """The repo folder ``models--org--name`` of ``hub_id`` in the HF cache (no network), None if not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(hub_id, "config.json")
    if not isinstance(hit, str):
        return None
    path = Path(hit)  # <cache>/models--org--name/snapshots/<revision>/config.json
    return path.parents[2] if len(path.parents) > 2 else None
