"""A small but complete CLIP (random weights) with the real tokenizer, saved as a user would pass --clip-model."""

from __future__ import annotations

import shutil
from pathlib import Path


def tiny_clip_config():
    """A small but complete CLIP architecture (random weights) so tests run fast on CPU."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, vocab_size=49408,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            image_size=224, patch_size=32,
        ),
        projection_dim=32,
    )


def save_random_clip(folder: Path, tokenizer_dir: Path, config=None, seed: int = 0) -> Path:
    """A CLIP model folder: random weights of ``config`` (default ``tiny_clip_config()``, seeded) and the
    tokenizer/preprocessor files of ``tokenizer_dir``."""
    import torch
    from transformers import CLIPModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPModel(config or tiny_clip_config()).save_pretrained(folder)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, folder / f.name)
    return folder
