"""Shared fixtures: real SemanticKITTI frames and the real CLIP tokenizer from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
