"""Crop-encoding backends (clip.backend / clip.precision): the choice rules, the export cache, and the
fidelity gates of every backend against fp32 torch on a full-size ViT-B/32.

The gates use a random-weight ViT-B/32 built from transformers' CLIPConfig() defaults, the real tokenizer and
20 real crops of two KITTI images: every crop keeps a cosine >= 0.999 to the fp32 torch features, and >= 99 %
of the crops CLIP has decided keep their argmax class among the 19 SemanticKITTI classes (the model's
prompt-ensembled text embeddings and logit scale, as the pipeline scores). Random weights leave many near-tied
classes; a crop is decided when its fp32 class survives a one-pixel move of its box (see
partlift_ros/testing/clip_fidelity.py). Optional backends skip when they are not installed
(ONNX Runtime is a dependency; pip install -e ".[openvino]").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_clip_config
from partlift_ros.clip_backends import candidates, installed, native_bf16
from partlift_ros.clip_export import MIN_COSINE, kitti_crop_boxes
from partlift_ros.clip_labeling import ClipLabeler, ModelLoadError
from partlift_ros.config import SEMANTIC_KITTI_CLASSES, ClipConfig, ConfigError, PipelineConfig
from partlift_ros.testing.clip_fidelity import (
    MIN_AGREEMENT,
    MIN_DECIDED,
    decided_crops,
    fidelity,
    shifted_crops,
)

CPU = torch.device("cpu")
GATED = [("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
         ("openvino", "bf16")]


def needs(backend: str, precision: str) -> None:
    if not installed(backend):
        pytest.skip(f"{backend} is not installed (pip install -e '.[openvino]')")
    if precision == "bf16" and not native_bf16():
        pytest.skip("this CPU has no native bf16; bf16 is refused here (see test_choices_that_cannot_run_here)")


# ----------------------------------------------------------------------------- choice rules
def test_config_validates_backend_and_precision():
    for backend, precision in [("tensorrt", "auto"), ("torch", "int8"), ("onnxruntime", "bf16"),
                               ("openvino", "fp16"), ("auto", "fp8")]:
        cfg = PipelineConfig()
        cfg.clip.backend, cfg.clip.precision = backend, precision
        with pytest.raises(ConfigError, match="clip.(backend|precision)"):
            cfg.validate()
    cfg = PipelineConfig()
    cfg.clip.backend, cfg.clip.precision = "onnxruntime", "int8"
    cfg.validate()


def test_auto_order_on_cpu_and_cuda():
    auto = ClipConfig()
    names = [c.name for c in candidates(auto, CPU, can_export=True)]
    expected = [n for n in ("onnxruntime int8", "openvino bf16", "openvino fp32", "onnxruntime fp32", "torch bf16",
                            "torch fp32") if installed(n.split()[0]) and (native_bf16() or "bf16" not in n)]
    assert names == expected and names[-1] == "torch fp32"
    # int8 is lossy: auto only takes it after the fidelity probe; nothing else is probed.
    assert [c.name for c in candidates(auto, CPU, True) if c.probed] == (["onnxruntime int8"]
                                                                           if installed("onnxruntime") else [])
    # Nowhere to cache an export (a model handed over as an object): auto stays on torch.
    assert [c.backend for c in candidates(auto, CPU, can_export=False)] == ["torch"] * len(
        [n for n in expected if n.startswith("torch")])
    assert [c.name for c in candidates(ClipConfig(precision="fp32"), CPU, True)][-1] == "torch fp32"
    assert [c.name for c in candidates(auto, torch.device("cuda"), True)] == ["torch fp16"]


def test_choices_that_cannot_run_here_are_load_errors():
    with pytest.raises(ModelLoadError, match="CPU only"):
        candidates(ClipConfig(backend="onnxruntime"), torch.device("cuda"), True)
    with pytest.raises(ModelLoadError, match="int8"):
        candidates(ClipConfig(precision="int8"), torch.device("cuda"), True)
    with pytest.raises(ModelLoadError, match="fp16 is for CUDA"):
        candidates(ClipConfig(backend="torch", precision="fp16"), CPU, True)
    if not native_bf16():
        with pytest.raises(ModelLoadError, match="no native bf16"):
            candidates(ClipConfig(backend="torch", precision="bf16"), CPU, True)


def test_auto_without_the_optional_packages_falls_back_to_torch(monkeypatch, tiny_clip_dir: Path, tmp_path: Path):
    for module in ("onnxruntime", "onnx", "openvino"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: import fails, find_spec is None
    assert not installed("onnxruntime") and not installed("openvino")
    lab = ClipLabeler.load(ClipConfig(model=str(tiny_clip_dir), export_dir=str(tmp_path)))
    assert lab.encoder.backend == "torch" and not any(tmp_path.iterdir())
    with pytest.raises(ModelLoadError, match=r"pip install onnxruntime onnx"):
        ClipLabeler.load(ClipConfig(model=str(tiny_clip_dir), backend="onnxruntime", export_dir=str(tmp_path)))


# ----------------------------------------------------------------------------- export cache
def test_exports_are_cached_by_weights_and_never_reused_stale(tokenizer_dir: Path, tmp_path: Path):
    needs("onnxruntime", "fp32")
    from transformers import CLIPModel

    from partlift_ros.clip_loading import ClipProcessor

    cfg = ClipConfig(backend="onnxruntime", precision="fp32", export_dir=str(tmp_path))
    processor = ClipProcessor.load(str(tokenizer_dir))
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config())
    first = ClipLabeler(cfg, model, processor)
    folder = first.encoder.export.folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert folder.parent == tmp_path and manifest["backend"] == "onnxruntime" and manifest["min_cosine"] > MIN_COSINE
    stamp = (folder / "vision.onnx").stat().st_mtime_ns
    again = ClipLabeler(cfg, model, processor)
    assert again.encoder.export.folder == folder and (folder / "vision.onnx").stat().st_mtime_ns == stamp
    with torch.no_grad():
        model.visual_projection.weight.mul_(-1.0)  # same files would be stale now
    changed = ClipLabeler(cfg, model, processor)
    assert changed.encoder.export.folder != folder
    crops = [np.full((40, 60, 3), v, np.uint8) for v in (30, 200)]
    ref = ClipLabeler(ClipConfig(backend="torch", precision="fp32"), model, processor).encode_crops(crops)
    np.testing.assert_allclose(changed.encode_crops(crops), ref, atol=1e-4)
    # Only finished exports are in the cache: no temporary folders left behind.
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["onnxruntime", "onnxruntime"]


def test_a_failed_export_leaves_nothing_behind(tokenizer_dir: Path, tmp_path: Path, monkeypatch):
    needs("onnxruntime", "fp32")

    def broken_export(*args, **kwargs):
        Path(args[2]).write_bytes(b"half a file")  # the exporter dies after writing part of its output
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    cfg = ClipConfig(backend="onnxruntime", precision="fp32", export_dir=str(tmp_path))
    with pytest.raises(ModelLoadError, match="onnxruntime fp32 failed: RuntimeError: disk full"):
        ClipLabeler.from_config(tiny_clip_config(), tokenizer_dir, cfg)
    assert list(tmp_path.iterdir()) == []


def test_a_saved_model_caches_its_exports_beside_the_weights(tiny_clip_dir: Path):
    needs("onnxruntime", "int8")
    lab = ClipLabeler.load(ClipConfig(model=str(tiny_clip_dir)))
    root = tiny_clip_dir / "partlift-exports"
    int8 = [p for p in root.iterdir() if p.name.startswith("onnxruntime-int8-")]
    assert len(int8) == 1
    probe = json.loads((int8[0] / "manifest.json").read_text())["min_cosine"]
    # auto takes int8 only when its probe keeps the features; this tiny random model decides which way.
    if probe >= MIN_COSINE:
        assert lab.backend == "onnxruntime int8"
    else:
        assert lab.backend != "onnxruntime int8" and "probe cosine" in lab.encoder.notes[0]
    assert lab.encoder.export is None or lab.encoder.export.folder.parent == root


# ----------------------------------------------------------------------------- fidelity gates
@pytest.fixture(scope="module")
def vit_b32(tokenizer_dir: Path):
    from transformers import CLIPConfig

    return ClipLabeler.from_config(CLIPConfig(), tokenizer_dir, ClipConfig(backend="torch", precision="fp32"))


@pytest.fixture(scope="module")
def gate_reference(vit_b32: ClipLabeler, seq08: Path, tmp_path_factory):
    """20 real crops (two KITTI images), their fp32 features, class text embeddings, the decided crops."""
    from PIL import Image

    images = [np.asarray(Image.open(seq08 / "image_2" / f"{f}.png").convert("RGB")) for f in ("000000", "000005")]
    boxes = [kitti_crop_boxes(10, im.shape[1], im.shape[0], seed=seed) for seed, im in enumerate(images, 1)]
    crops = shifted_crops(images, boxes)
    text = vit_b32.text_embeddings(SEMANTIC_KITTI_CLASSES).numpy()
    decided = decided_crops(vit_b32.encode_crops, images, boxes, text)
    return crops, text, vit_b32.encode_crops(crops), decided, tmp_path_factory.mktemp("exports")


@pytest.mark.parametrize("backend,precision", GATED)
def test_fidelity_gate_against_fp32_torch(backend, precision, vit_b32: ClipLabeler, gate_reference):
    needs(backend, precision)
    crops, text, reference, decided, export_dir = gate_reference
    cfg = ClipConfig(backend=backend, precision=precision, export_dir=str(export_dir))
    lab = ClipLabeler(cfg, vit_b32.model, vit_b32.processor)
    assert lab.backend == f"{backend} {precision}"
    gate = fidelity(lab.encode_crops(crops), reference, text, float(vit_b32.model.logit_scale.detach().exp()), decided)
    assert gate["cos_min"] >= MIN_COSINE, f"worst crop cosine {gate['cos_min']:.5f}"
    assert gate["decided"] >= MIN_DECIDED * len(crops), "too few decided crops for the argmax gate to mean anything"
    assert gate["agree_decided"] >= MIN_AGREEMENT, f"argmax kept on {100 * gate['agree_decided']:.0f} % of decided crops"
