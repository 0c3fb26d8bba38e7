"""Local folder or hub id (one rule for CLIP and SAM), and hub ids on a machine that cannot reach the hub.

A hub id that is not cached must fail at once with one line that names a way out, never after transformers'
retries (about a minute); the mechanism is checked: when the hub is unreachable or forbidden, the loaders
only ever ask transformers for local files.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from partlift_ros.clip_loading import ClipProcessor, ModelLoadError, load_clip_model
from partlift_ros.config import ClipConfig
from partlift_ros.model_source import hub_unreachable_reason, model_source

HUB_ID = "openai/clip-vit-base-patch32"


@pytest.fixture
def refused_hub(monkeypatch):
    """The hub endpoint points at a closed local port: every request is refused at once, never sent out."""
    from huggingface_hub import constants

    import partlift_ros.model_source as ms

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(ms, "_probe_cache", {})
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def from_pretrained_calls(monkeypatch):
    """Records the local_files_only flag of every CLIPModel.from_pretrained call (the call itself is real)."""
    from transformers import CLIPModel

    calls: list[bool] = []
    original = CLIPModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(bool(kwargs.get("local_files_only", False)))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(spy))
    return calls


def _not_cached(hub_id: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        pytest.skip(f"{hub_id} is in the local HF cache here, so it would load")


def test_the_one_rule_local_folder_or_hub_id(tmp_path: Path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "file.bin").write_bytes(b"x")
    assert model_source(str(folder), "m").folder == folder
    assert model_source("openai/clip-vit-base-patch32", "m").hub_id == "openai/clip-vit-base-patch32"
    assert model_source("bert-base-uncased", "m").folder is None
    for missing in ("./nothing-here", str(tmp_path / "gone"), "a/b/c", "~/no-such-model-dir"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            model_source(missing, "m")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_clip_model(str(tmp_path / "file.bin"), local_files_only=False)


def test_sam_loader_uses_the_same_rule(tmp_path: Path, monkeypatch):
    from partlift_ros.sam_refine import SamLoadError, load_transformers_sam

    with pytest.raises(SamLoadError, match="does not exist"):
        load_transformers_sam(str(tmp_path / "missing" / "sam"))
    with pytest.raises(SamLoadError, match="no config.json"):
        load_transformers_sam(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _not_cached("facebook/sam-vit-base")
    with pytest.raises(SamLoadError, match="HF_HUB_OFFLINE=1") as info:
        load_transformers_sam("facebook/sam-vit-base")
    assert "\n" not in str(info.value)


def test_unreachable_hub_fails_at_once_with_one_line(refused_hub, from_pretrained_calls):
    _not_cached(HUB_ID)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_clip_model(HUB_ID, local_files_only=False)
    elapsed = time.perf_counter() - t0
    message = str(info.value)
    assert "\n" not in message and HUB_ID in message
    assert "cannot be reached" in message and "hf download openai/clip-vit-base-patch32" in message
    assert "--clip-model" in message
    assert all(from_pretrained_calls)  # only local files were ever asked for: no hub request, no retries
    assert elapsed < 10.0  # bound only (acceptance: < 3 s); the mechanism is the assertion above


def test_hf_hub_offline_is_honoured_without_probing(monkeypatch, from_pretrained_calls):
    import partlift_ros.model_source as ms

    _not_cached(HUB_ID)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probes = []
    monkeypatch.setattr(ms, "hub_unreachable_reason", lambda *a, **k: probes.append(1))
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        load_clip_model(HUB_ID, local_files_only=False)
    assert all(from_pretrained_calls) and probes == []


def test_local_files_only_names_the_flag_and_the_processor_fails_alike(refused_hub, tokenizer_dir: Path):
    _not_cached(HUB_ID)
    with pytest.raises(ModelLoadError, match="local_files_only"):
        load_clip_model(HUB_ID, local_files_only=True)
    with pytest.raises(ModelLoadError, match="cannot be reached") as info:
        ClipProcessor.load(HUB_ID, local_files_only=False)
    assert "\n" not in str(info.value)
    assert ClipProcessor.load(str(tokenizer_dir)).tokenizer is not None  # folders never need the hub


def test_probe_answers_within_its_bound_when_the_request_hangs(monkeypatch):
    import huggingface_hub.utils as hub_utils

    import partlift_ros.model_source as ms

    class Hanging:
        def head(self, *args, **kwargs):
            time.sleep(30)

    monkeypatch.setattr(ms, "_probe_cache", {})
    monkeypatch.setattr(hub_utils, "get_session", lambda: Hanging())
    t0 = time.perf_counter()
    reason = hub_unreachable_reason(timeout_s=0.5)
    assert reason is not None and "no answer" in reason
    assert time.perf_counter() - t0 < 5.0  # bound: 0.5 s probe + 0.5 s join slack


def test_the_real_network_here_fails_fast(monkeypatch):
    """This machine cannot reach huggingface.co: the default config's hub id must fail in seconds."""
    import partlift_ros.model_source as ms

    monkeypatch.setattr(ms, "_probe_cache", {})
    if hub_unreachable_reason() is None:
        pytest.skip("the hub is reachable here; loading would download the model")
    _not_cached(ClipConfig().model)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_clip_model(ClipConfig().model, local_files_only=False)
    assert time.perf_counter() - t0 < 10.0  # bound only (acceptance: < 3 s)
