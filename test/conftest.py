"""Shared fixtures: real SemanticKITTI frames and the real CLIP tokenizer from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from partlift_ros.testing.tiny_clip import tiny_clip_config  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PARTLIFT_SHARED", REPO.parent / "shared"))
KITTI_ROOT = SHARED / "data" / "semantickitti-mini"
TOKENIZER_DIR = SHARED / "models" / "clip-tokenizer"


@pytest.fixture(scope="session")
def kitti_root() -> Path:
    """Root holding sequences/08 and sequences/00; skips when ../shared/data is not there."""
    if not (KITTI_ROOT / "sequences" / "08" / "velodyne").is_dir():
        pytest.skip(f"needs the real SemanticKITTI frames in {KITTI_ROOT} (../shared/data)")
    return KITTI_ROOT


@pytest.fixture(scope="session")
def seq08(kitti_root: Path) -> Path:
    return kitti_root / "sequences" / "08"


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The real OpenAI CLIP tokenizer/preprocessor folder; skips when ../shared/models is not there."""
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        pytest.skip(f"needs the CLIP tokenizer in {TOKENIZER_DIR} (../shared/models)")
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tokenizer_dir: Path) -> Path:
    """A local CLIP model folder (random tiny weights + the real tokenizer), as a user would pass --clip-model."""
    from partlift_ros.testing.tiny_clip import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), tokenizer_dir)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Sparse convs are many small ops: on a shared 2-core CPU one intra-op thread is far faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
