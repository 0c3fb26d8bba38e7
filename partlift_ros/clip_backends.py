"""Which runtime encodes the crops: torch, ONNX Runtime or OpenVINO, at which precision.

``clip.backend`` (auto | torch | onnxruntime | openvino) and ``clip.precision`` (auto | fp32 | bf16 | fp16 |
int8) name a choice; ``candidates`` turns them into an ordered list of (backend, precision) pairs and
``ClipLabeler`` takes the first one that is installed, exports and keeps the features (see clip_export).

The CPU order of ``auto`` was measured with ``benchmarks/bench_clip.py`` (full ViT-B/32, real KITTI crops,
RESULTS.md): ONNX Runtime with dynamically quantised int8 MatMuls first (only when its features keep a cosine
>= 0.999 to fp32 torch on the probe crops), then OpenVINO (bf16 where the CPU has native bf16, else fp32),
ONNX Runtime fp32, and torch last (bf16 autocast where the CPU has native bf16, else fp32). The exported
backends need a place to cache their export; a model handed over as an object (tests, benchmarks) has none
unless ``clip.export_dir`` is set, so ``auto`` stays on torch for it. CUDA runs torch in fp16.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .clip_loading import ModelLoadError
from .config import ClipConfig

if TYPE_CHECKING:
    import torch

EXPORTED = ("onnxruntime", "openvino")
EXTRA = {"onnxruntime": "pip install onnxruntime onnx (dependencies of partlift_ros)", "openvino": "pip install -e '.[openvino]'"}


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str
    probed: bool  # taken only if its features pass the fidelity probe (auto choices of a lossy precision)

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


def native_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX-512 BF16 or AMX); emulated bf16 is far slower."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def installed(backend: str) -> bool:
    if backend == "torch":
        return True
    if backend == "onnxruntime":
        return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))
    return importlib.util.find_spec("openvino") is not None


def candidates(cfg: ClipConfig, device: "torch.device", can_export: bool) -> list[Choice]:
    """(backend, precision) pairs to try in order; raises ModelLoadError for a choice that cannot run here."""
    backend, precision = cfg.backend, cfg.precision
    if device.type == "cuda":
        if backend not in ("auto", "torch"):
            raise ModelLoadError(f"clip.backend={backend!r} runs on the CPU only; use clip.backend=torch on CUDA")
        if precision == "int8":
            raise ModelLoadError("clip.precision=int8 is a CPU choice (onnxruntime); CUDA runs fp16, bf16 or fp32")
        return [Choice("torch", "fp16" if precision == "auto" else precision, False)]
    if backend != "auto":
        if backend in EXPORTED and not installed(backend):
            raise ModelLoadError(f"clip.backend={backend} is not installed; {EXTRA[backend]} or use clip.backend=auto")
        precisions = _auto_precisions(backend) if precision == "auto" else [precision]
        out = [Choice(backend, p, precision == "auto" and p == "int8") for p in precisions]
    else:
        order = [("onnxruntime", "int8"), ("openvino", "bf16"), ("openvino", "fp32"), ("onnxruntime", "fp32"),
                 ("torch", "bf16"), ("torch", "fp32")] if can_export else [("torch", "bf16"), ("torch", "fp32")]
        out = [Choice(b, p, precision == "auto" and p == "int8") for b, p in order
               if installed(b) and (p == precision or (precision == "auto" and p in _auto_precisions(b)))]
    for c in out:
        check_supported(c.backend, c.precision, device)
    if not out:
        raise ModelLoadError(f"no installed CLIP backend runs clip.precision={precision} here")
    return out


def _auto_precisions(backend: str) -> list[str]:
    """What ``precision: auto`` may pick for a backend, fastest first (bf16 only with native bf16)."""
    if backend == "onnxruntime":
        return ["int8", "fp32"]
    return ["bf16", "fp32"] if native_bf16() else ["fp32"]


def check_supported(backend: str, precision: str, device: "torch.device") -> None:
    allowed = ClipConfig.BACKEND_PRECISIONS[backend]
    if precision not in allowed:
        raise ModelLoadError(f"clip.backend={backend} runs {' / '.join(allowed)}, not clip.precision={precision}")
    if device.type == "cpu" and precision == "fp16":
        raise ModelLoadError("clip.precision=fp16 is for CUDA; CPUs run fp32, bf16 or int8")
    if device.type == "cpu" and precision == "bf16" and not native_bf16():
        raise ModelLoadError("clip.precision=bf16: this CPU has no native bf16 (AVX-512 BF16 / AMX), so bf16 runs "
                             "emulated and far slower than fp32; use clip.precision=auto")


# ----------------------------------------------------------------------------- runners
def vision_tower(model: Any) -> "torch.nn.Module":
    """pixels (B, 3, H, W) -> L2-normalised image embeddings (B, D): what every backend runs and exports."""
    import torch

    class VisionTower(torch.nn.Module):
        def __init__(self, clip: Any) -> None:
            super().__init__()
            self.vision_model = clip.vision_model
            self.visual_projection = clip.visual_projection

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            pooled = self.vision_model(pixel_values=pixel_values).pooler_output
            return torch.nn.functional.normalize(self.visual_projection(pooled), dim=-1)

    return VisionTower(model).eval()


def model_dtype(precision: str, device: "torch.device") -> "torch.dtype":
    """The dtype the torch model is held in: CUDA holds it at its precision (fp16 by default), CPUs in fp32
    (CPU bf16 runs under autocast; the text tower runs once per vocabulary and stays fp32)."""
    import torch

    if device.type != "cuda":
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}.get(precision, torch.float16)


def torch_runner(tower: "torch.nn.Module", precision: str, device: "torch.device") -> Callable:
    """A function pixels -> (B, D) float32 normalised embeddings, in torch at ``precision``."""
    import torch

    autocast = precision == "bf16" and device.type == "cpu"

    def run(pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            emb = tower(pixels)
        # Re-normalise in float32: a bf16/fp16 normalisation is only good to ~3 digits.
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    return run


def onnxruntime_runner(model_file: str) -> Callable:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # one knob for every backend: torch's thread count
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(pixels: torch.Tensor) -> torch.Tensor:
        (emb,) = session.run(None, {name: pixels.float().cpu().numpy()})
        return torch.nn.functional.normalize(torch.from_numpy(emb).float(), dim=-1)

    return run


def openvino_runner(model_file: str, precision: str) -> Callable:
    import openvino as ov
    import torch

    compiled = ov.Core().compile_model(model_file, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "PERFORMANCE_HINT": "LATENCY",
        # Pinned threads wait for their core: on a CPU shared with other processes that measured slower.
        "ENABLE_CPU_PINNING": False,
    })
    request = compiled.create_infer_request()

    def run(pixels: torch.Tensor) -> torch.Tensor:
        emb = request.infer({0: pixels.float().cpu().numpy()})[compiled.output(0)]
        return torch.nn.functional.normalize(torch.from_numpy(emb.copy()).float(), dim=-1)

    return run


# ----------------------------------------------------------------------------- choosing
@dataclass
class CropEncoder:
    """The chosen runtime: ``run(pixels)`` -> (B, D) float32 normalised embeddings on the CPU."""

    backend: str
    precision: str
    run: Callable
    export: Any = None  # clip_export.Export for exported backends
    notes: tuple[str, ...] = ()  # choices tried before this one and why they were not taken

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}"


def build_encoder(cfg: ClipConfig, model: Any, device: "torch.device", preprocess: Any,
                  cache_root: Any) -> CropEncoder:
    """The first of ``candidates`` that is installed, exports, and (for probed choices) keeps the features.

    ``cache_root`` is where exports are kept (None: nowhere to cache; explicit exported backends then use a
    temporary folder, ``auto`` stays on torch). Raises ModelLoadError when an explicit choice fails.
    """
    import torch

    from . import clip_export

    tower = vision_tower(model)
    choices = candidates(cfg, device, can_export=cache_root is not None)
    notes: list[str] = []
    probe: dict[str, Any] = {}

    def probe_pixels() -> torch.Tensor:
        if "pixels" not in probe:
            probe["pixels"] = preprocess(clip_export.probe_crops(), torch.device("cpu"), torch.float32)
        return probe["pixels"]

    def reference() -> Any:
        if "reference" not in probe:
            probe["reference"] = torch_runner(tower, "fp32", torch.device("cpu"))(probe_pixels()).numpy()
        return probe["reference"]

    for i, choice in enumerate(choices):
        last = i == len(choices) - 1
        if choice.backend == "torch":
            return CropEncoder("torch", choice.precision, torch_runner(tower, choice.precision, device), None,
                               tuple(notes))
        root = cache_root
        if root is None:  # explicit exported backend for a model without a folder: export for this process only
            import tempfile
            from pathlib import Path

            root = Path(tempfile.mkdtemp(prefix="partlift-clip-export-"))
        if "digest" not in probe:  # hashed once, however many choices are tried
            probe["digest"] = clip_export.weights_digest(tower)
        try:
            export = clip_export.cached_export(root, tower, choice.backend, choice.precision, probe_pixels(),
                                               reference, probe["digest"])
        except ModelLoadError as exc:
            if last or cfg.backend != "auto":
                raise
            notes.append(f"{choice.name}: {exc}")
            continue
        if choice.probed and export.min_cosine < clip_export.MIN_COSINE and not last:
            notes.append(f"{choice.name}: probe cosine {export.min_cosine:.5f} < {clip_export.MIN_COSINE}")
            continue
        run = onnxruntime_runner(export.path) if choice.backend == "onnxruntime" else \
            openvino_runner(export.path, choice.precision)
        return CropEncoder(choice.backend, choice.precision, run, export, tuple(notes))
    raise ModelLoadError("no CLIP backend could be used: " + "; ".join(notes))
