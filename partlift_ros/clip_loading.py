"""Loading a CLIP model and its tokenizer/preprocessor from a local folder or a hub id, with clear errors.

Whether ``clip.model`` is a folder or a hub id, and whether the hub may be contacted, is decided by
``model_source`` (the one rule every loader shares). Every failure is a ``ModelLoadError`` whose message is
one line saying what failed and how to fix it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model_source import ModelSource, first_line, load_from_hub, model_source

if TYPE_CHECKING:
    import torch

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HOW_TO_GET_WEIGHTS = (
    "set clip.model to a local folder holding a CLIP model saved with save_pretrained "
    "(config.json + model.safetensors, tokenizer and preprocessor_config.json), "
    "or to a hub id such as 'openai/clip-vit-base-patch32' on a machine with internet access"
)


class ModelLoadError(RuntimeError):
    """The CLIP model, its tokenizer or its preprocessor config could not be loaded.

    The message is one line: which path or id failed, why, and how to get working weights.
    """


def offline_fix(hub_id: str) -> str:
    """What a user on a machine without the hub can do: fetch the folder elsewhere and point clip.model at it."""
    folder = hub_id.rsplit("/", 1)[-1]
    return (
        f"On a machine with internet: `hf download {hub_id} --exclude '*.h5' --exclude '*.msgpack' "
        f"--local-dir {folder}`, copy that folder here, then --clip-model {folder} (clip.model)"
    )


def clip_source(name: str) -> ModelSource:
    return model_source(name, "CLIP model", ModelLoadError)


def _from_hub(load: Any, source: ModelSource, local_files_only: bool, what: str) -> Any:
    hub_id = source.hub_id or source.name
    return load_from_hub(load, hub_id, local_files_only, what, offline_fix(hub_id), ModelLoadError)


@dataclass
class ClipProcessor:
    """The tokenizer and image-preprocessor config of a CLIP model (no torchvision needed)."""

    tokenizer: Any
    image_processor: Any

    @classmethod
    def load(cls, source: str, local_files_only: bool = False) -> "ClipProcessor":
        where = clip_source(source)
        path = where.folder
        if path is not None:
            missing = [f for f in ("preprocessor_config.json",) if not (path / f).is_file()]
            if not (path / "tokenizer_config.json").is_file() and not (path / "vocab.json").is_file():
                missing.insert(0, "tokenizer files (tokenizer_config.json / vocab.json)")
            if missing:
                raise ModelLoadError(
                    f"CLIP processor folder {path} lacks {', '.join(missing)}; set clip.processor to the folder "
                    f"holding the model's tokenizer and preprocessor_config.json"
                )

        def load(offline: bool) -> "ClipProcessor":
            from transformers import AutoTokenizer, CLIPImageProcessorPil

            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
            image_processor = CLIPImageProcessorPil.from_pretrained(source, local_files_only=offline)
            return cls(tokenizer, image_processor)

        if path is None:
            return _from_hub(load, where, local_files_only, "the CLIP tokenizer/preprocessor of")
        try:
            return load(True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"cannot load the CLIP tokenizer/preprocessor from {path}: {first_line(exc)}; {HOW_TO_GET_WEIGHTS}"
            ) from exc


def load_clip_model(source: str, local_files_only: bool) -> Any:
    """``transformers.CLIPModel`` from a folder or hub id (float32, eval mode)."""
    where = clip_source(source)
    path = where.folder
    if path is None:
        def load(offline: bool) -> Any:
            from transformers import CLIPModel

            return CLIPModel.from_pretrained(source, local_files_only=offline)

        return _from_hub(load, where, local_files_only, "CLIP model").eval()
    from transformers import CLIPModel

    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{path} has no config.json, so it is not a Hugging Face model folder; {HOW_TO_GET_WEIGHTS}"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"{config_file} is not a valid JSON model config: {exc}") from exc
    if model_type != "clip":
        raise ModelLoadError(
            f"{config_file} describes a {model_type!r} model, not 'clip'; clip.model must be a CLIP model "
            f"(e.g. openai/clip-vit-base-patch32)"
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelLoadError(
            f"{path} has a CLIP config but no weights ({' / '.join(WEIGHT_FILES)}); {HOW_TO_GET_WEIGHTS}"
        )
    try:
        return CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load CLIP weights from folder {path}: {first_line(exc)}; "
                             f"{HOW_TO_GET_WEIGHTS}") from exc


def resolve_device(device: str) -> "torch.device":
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"clip.device: {device!r} is not a torch device (use 'cpu', 'cuda' or 'cuda:N')") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"clip.device={device!r} but CUDA is not available here; use 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ModelLoadError(f"clip.device: {device!r} is not supported (use 'cpu', 'cuda' or 'cuda:N')")
    return dev
