"""Exported CLIP vision towers (ONNX / ONNX int8 / OpenVINO IR), cached and checked against fp32 torch.

An export lives in ``<cache root>/<backend>-<precision>-<key>/`` with a ``manifest.json`` written last. The
key hashes the vision weights themselves (so a changed model never reuses a stale export), the backend, the
precision and the versions of the libraries that wrote it. The folder is built under a temporary name and
renamed into place, so a crash or a concurrent writer never leaves a half-written export that looks valid.

The cache root is ``clip.export_dir`` when set, else ``partlift-exports/`` inside the model folder, or for a
hub id inside its Hugging Face cache folder (``models--org--name/partlift-exports``); a folder that cannot
be written falls back to ``<HF cache>/partlift-exports``.

Each export is probed once when it is written: the cosine between its features and fp32 torch on crops of
the real KITTI frame shipped with the package; ``auto`` only takes a lossy export (int8) whose every probe
crop keeps cosine >= ``MIN_COSINE``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .clip_loading import ModelLoadError
from .model_source import ModelSource, cached_hub_folder, first_line, hub_cache_dir

if TYPE_CHECKING:
    import torch

MIN_COSINE = 0.999  # per probe crop, against fp32 torch: below this an auto choice is not taken
EXPORT_FORMAT = 1  # bump when the export recipe changes: old exports then get a new key
PROBE_CROPS = 8
OPSET = 17
DEMO_IMAGE = Path(__file__).resolve().parent / "data" / "demo" / "image_2" / "000000.png"


@dataclass(frozen=True)
class Export:
    folder: Path
    model_file: str  # inside folder
    min_cosine: float  # the worst probe crop's cosine to fp32 torch

    @property
    def path(self) -> str:
        return str(self.folder / self.model_file)


# ----------------------------------------------------------------------------- where and under which key
def cache_root(export_dir: str, source: ModelSource | None) -> Path | None:
    """Where exports of this model are kept; None for a model with no folder or id (nothing to key it by)."""
    if export_dir:
        return Path(export_dir).expanduser()
    if source is None:
        return None
    if source.folder is not None:
        root = source.folder / "partlift-exports"
    else:
        repo = cached_hub_folder(source.name)
        root = (repo if repo is not None else hub_cache_dir()) / "partlift-exports"
    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        return hub_cache_dir() / "partlift-exports"
    return root


def weights_digest(tower: "torch.nn.Module") -> str:
    """sha256 of the vision tower's tensors (names, dtypes, shapes and bytes), independent of file names."""
    h = hashlib.sha256()
    for name, t in sorted(tower.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def tensor_bytes(tensor: "torch.Tensor") -> np.ndarray:
    """The tensor's raw bytes (uint8, C order) for any dtype, bf16 included (which numpy cannot hold)."""
    import torch

    t = tensor.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)


def export_key(digest: str, backend: str, precision: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, Any] = {"format": EXPORT_FORMAT}
    for lib in ("torch", "transformers", "onnxruntime", "onnx", "openvino"):
        try:
            versions[lib] = version(lib)  # from the installed metadata: no import of the library
        except PackageNotFoundError:
            pass
    text = json.dumps({"weights": digest, "backend": backend, "precision": precision, "versions": versions},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- probe crops
def kitti_crop_boxes(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """(n, 4) boxes 30-300 px wide and 30-200 px high: the size range of instance crops in KITTI."""
    rng = np.random.default_rng(seed)
    bw = rng.integers(30, min(300, width), n)
    bh = rng.integers(30, min(200, height), n)
    u0 = rng.integers(0, width - bw)
    v0 = rng.integers(0, height - bh)
    return np.column_stack([u0, v0, u0 + bw, v0 + bh]).astype(np.int32)


def probe_crops(n: int = PROBE_CROPS) -> list[np.ndarray]:
    """Crops of the real KITTI frame shipped with the package (deterministic)."""
    from PIL import Image

    image = np.asarray(Image.open(DEMO_IMAGE).convert("RGB"))
    boxes = kitti_crop_boxes(n, image.shape[1], image.shape[0], seed=7)
    return [image[v0:v1, u0:u1] for u0, v0, u1, v1 in boxes.tolist()]


# ----------------------------------------------------------------------------- exporting
def cached_export(root: Path, tower: "torch.nn.Module", backend: str, precision: str, probe_pixels: "torch.Tensor",
                  reference: Callable[[], np.ndarray], digest: str) -> Export:
    """The export of ``tower`` for (backend, precision) under ``root``, written (atomically) if missing.

    ``probe_pixels`` are preprocessed probe crops; ``reference()`` gives their fp32 torch features (only
    called when an export is written); ``digest`` is ``weights_digest(tower)``. Raises ModelLoadError when the
    export fails.
    """
    key = export_key(digest, backend, precision)
    folder = root / f"{backend}-{precision}-{key}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        return Export(folder, meta["model_file"], float(meta["min_cosine"]))
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    except OSError as exc:
        raise ModelLoadError(f"cannot write the {backend} {precision} export cache in {root}: {exc}; "
                             f"set clip.export_dir to a writable folder") from exc
    try:
        # int8 is quantised from the fp32 ONNX graph: reuse an fp32 export of the same weights when cached.
        fp32 = root / f"onnxruntime-fp32-{export_key(digest, 'onnxruntime', 'fp32')}" / "vision.onnx"
        model_file = _write_export(tower, backend, precision, tmp, probe_pixels[:2], fp32 if fp32.is_file() else None)
        from .clip_backends import onnxruntime_runner, openvino_runner

        run = onnxruntime_runner(str(tmp / model_file)) if backend == "onnxruntime" else \
            openvino_runner(str(tmp / model_file), precision)
        cosine = (run(probe_pixels).numpy() * reference()).sum(axis=1)
        meta = {"model_file": model_file, "backend": backend, "precision": precision, "key": key,
                "min_cosine": float(cosine.min()), "probe_crops": int(len(cosine))}
        (tmp / "manifest.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not manifest.is_file():  # not another writer's finished export: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            meta = json.loads(manifest.read_text())
    except ModelLoadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # exporters fail in many ways (unsupported op, disk full, ...): one message
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"exporting the CLIP vision tower to {backend} {precision} failed: "
                             f"{type(exc).__name__}: {first_line(exc)}") from exc
    return Export(folder, meta["model_file"], float(meta["min_cosine"]))


def _write_export(tower: "torch.nn.Module", backend: str, precision: str, folder: Path, sample: "torch.Tensor",
                  fp32_onnx: Path | None) -> str:
    if backend == "onnxruntime":
        if precision == "fp32" or fp32_onnx is None:
            _export_onnx(tower, folder / "vision.onnx", sample)
        if precision == "fp32":
            return "vision.onnx"
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Dynamic int8: weights per output channel, activations per tensor at run time (no calibration
        # set); only products with a weight (MatMulConstBOnly): attention's activation products stay fp32.
        quantize_dynamic(fp32_onnx or folder / "vision.onnx", folder / "vision-int8.onnx",
                         weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                         extra_options={"MatMulConstBOnly": True})
        (folder / "vision.onnx").unlink(missing_ok=True)
        return "vision-int8.onnx"
    import warnings

    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks in transformers
        model = ov.convert_model(tower, example_input=sample)
    ov.save_model(model, str(folder / "vision.xml"), compress_to_fp16=False)
    return "vision.xml"


def _export_onnx(tower: "torch.nn.Module", path: Path, sample: "torch.Tensor") -> None:
    import warnings

    import torch

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks in transformers
        # The TorchScript exporter: it needs only torch (the dynamo exporter also needs onnxscript).
        torch.onnx.export(tower, (sample.float(),), str(path), input_names=["pixel_values"],
                          output_names=["image_embeds"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
