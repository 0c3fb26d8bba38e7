"""Import an earlier commit of this package beside the current one, to time and score both in the same run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType


def load_previous_release(repo: str | Path, revision: str, alias: str = "partlift_ros_previous") -> ModuleType:
    """The package ``partlift_ros`` as of git ``revision`` of ``repo``, imported as ``alias`` (its submodules as
    ``alias.x``). Raises RuntimeError when git cannot produce it (not a checkout, unknown revision)."""
    if alias in sys.modules:
        return sys.modules[alias]
    folder = Path(tempfile.mkdtemp(prefix="partlift-previous-"))
    archive = folder / "previous.tar"
    try:
        subprocess.run(["git", "-C", str(repo), "archive", "-o", str(archive), revision, "partlift_ros"],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise RuntimeError(f"cannot read partlift_ros at {revision} from {repo}: {detail.decode(errors='replace')}") from exc
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "partlift_ros"
    spec = importlib.util.spec_from_file_location(alias, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module
