"""Backend specs (`name[:precision]`) and the engines they make."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dip_export.checkpoint import LoadedModel
from dip_export.errors import UsageError
from dip_export.sampling import Denoiser

BACKENDS = {
    "torch": ("fp32", "bf16", "fp16"),
    "compile": ("fp32", "bf16", "fp16"),
    "onnx": ("fp32", "fp16", "bf16", "int8"),
    "trt": ("fp16", "bf16", "int8", "fp8", "fp32"),
}
GRAPH_BACKENDS = ("torch", "compile", "trt")  # their kernels run on the torch stream a CUDA graph captures
DEFAULT_PRECISION = {"torch": "fp32", "compile": "fp32", "onnx": "fp32", "trt": "fp16"}


@dataclass(frozen=True)
class BackendSpec:
    name: str
    precision: str

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        name, _, precision = text.strip().partition(":")
        if name not in BACKENDS:
            raise UsageError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
        precision = precision or DEFAULT_PRECISION[name]
        if precision not in BACKENDS[name]:
            raise UsageError(f"backend {name} has no precision {precision!r}; choose from {', '.join(BACKENDS[name])}")
        return cls(name, precision)

    def __str__(self) -> str:
        return f"{self.name}:{self.precision}"


def make_torch_engine(spec: BackendSpec, loaded: LoadedModel, device: torch.device) -> Denoiser:
    from dip_export.runtime.torch_engine import TorchEngine

    return TorchEngine(loaded.model, device, precision=spec.precision, compile=spec.name == "compile")


def make_export_engine(spec: BackendSpec, export_dir: Path, device: torch.device) -> Denoiser:
    """An engine over an export folder (ONNX Runtime or TensorRT)."""
    if spec.name == "onnx":
        from dip_export.runtime.ort_engine import OrtEngine

        return OrtEngine.from_export(export_dir, device=device)
    if spec.name == "trt":
        from dip_export.runtime.trt_engine import TrtEngine

        return TrtEngine.from_export(export_dir, precision=spec.precision, device=device)
    raise UsageError(f"backend {spec.name} runs from a checkpoint, not an export folder")
