"""The backend registry: one record per backend name, and specs `name[:precision]` checked against it.

Everything that asks what a backend is (the pipeline, dip-bench, --backend auto, the TensorRT build)
reads its record here; the facts come from `catalog` (plain data the CLI's help reads without torch),
the engine maker from this module. Adding a backend is one catalog entry and one maker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from dip_export.checkpoint import LoadedModel
from dip_export.errors import UsageError
from dip_export.runtime import catalog
from dip_export.runtime.catalog import CATALOG, BackendInfo
from dip_export.runtime.engine_io import ExportFiles
from dip_export.sampling import Denoiser
from dip_export.settings import exact_str, plain_value

EngineMaker = Callable[[Any, str, torch.device], Denoiser]  # (torch module or ExportFiles, precision, device)


@dataclass(frozen=True)
class Backend(BackendInfo):
    """What a backend is (its catalog entry) and how an engine is made from data."""

    make: EngineMaker = field(kw_only=True)

    def unavailable_reason(self, precision: str, device: torch.device, from_model: bool = False) -> str | None:
        """Why this backend cannot run here (None when it can): its device and packages (the catalog's check), its precision."""
        reason = catalog.unavailable_reason(self.name, device.type, from_model)
        if reason is not None:
            return reason
        if self.name == "compile" and precision == "fp16" and device.type == "cpu":
            return "fp16 autocast is not a CPU path"
        if self.name == "onnx" and precision == "bf16" and device.type == "cpu":
            return "ONNX Runtime's CPU provider has no bf16 kernels; run bf16 exports with --backend trt"
        return None


def _torch(module: Any, precision: str, device: torch.device, compile: bool = False) -> Denoiser:
    from dip_export.runtime.torch_engine import TorchEngine

    return TorchEngine(module, device, precision=precision, compile=compile)


def _compiled(module: Any, precision: str, device: torch.device) -> Denoiser:
    return _torch(module, precision, device, compile=True)


def _onnx(export: ExportFiles, precision: str, device: torch.device) -> Denoiser:
    from dip_export.runtime.ort_engine import OrtEngine

    return OrtEngine.from_export(export, device=device)


def _trt(export: ExportFiles, precision: str, device: torch.device) -> Denoiser:
    from dip_export.runtime.trt_engine import TrtEngine

    return TrtEngine.from_export(export, precision=precision, device=device)


MAKERS: dict[str, EngineMaker] = {"torch": _torch, "compile": _compiled, "onnx": _onnx, "trt": _trt}
BACKENDS: dict[str, Backend] = {
    info.name: Backend(**{f.name: getattr(info, f.name) for f in fields(info)}, make=MAKERS[info.name]) for info in CATALOG
}


@dataclass(frozen=True)
class BackendSpec:
    name: str
    precision: str

    @classmethod
    def parse(cls, text: Any) -> BackendSpec:
        text = exact_str(text)
        if not isinstance(text, str):
            raise UsageError(f"a backend is text (name[:precision]), got {type(text).__name__}")
        name, colon, precision = text.partition(":")  # not trimmed: " onnx" is an unknown backend, as " 3" is no number
        if colon and not precision:
            raise UsageError(f"backend {plain_value(name)} is followed by ':' and no precision; name one or drop the ':'")
        if name == "auto" and colon:  # where auto is taken, it is taken alone (the caller's own check)
            raise UsageError("backend auto takes no precision: it picks the backend and precision by measuring (give "
                             "auto alone)")  # fmt: skip
        if name not in BACKENDS:
            raise UsageError(f"unknown backend {plain_value(name)}; choose from {', '.join(BACKENDS)}")
        record = BACKENDS[name]
        precision = precision or record.default
        if precision not in record.precisions:
            shown = plain_value(precision)
            raise UsageError(f"backend {name} has no precision {shown}; choose from {', '.join(record.precisions)}")
        return cls(name, precision)

    @property
    def backend(self) -> Backend:
        return BACKENDS[self.name]

    def __str__(self) -> str:
        return f"{self.name}:{self.precision}"


def unavailable_reason(spec: BackendSpec, device: torch.device, from_model: bool = False) -> str | None:
    """Why a backend cannot run on this machine (None when it can)."""
    return spec.backend.unavailable_reason(spec.precision, device, from_model)


def check_available(spec: BackendSpec, device: torch.device, from_model: bool = False) -> None:
    """Refuse, in one line and before any work, a backend (and precision) this machine cannot run."""
    reason = unavailable_reason(spec, device, from_model)
    if reason is not None:
        from dip_export.errors import MissingDependencyError

        raise MissingDependencyError(spec.name, reason, message=reason if "backend" in reason else f"backend {spec}: {reason}")


def check_runs_from(spec: BackendSpec, export: bool) -> None:
    """Refuse a backend that cannot run from this kind of source: torch and compile run a checkpoint's module, never
    an export folder's graphs (ONNX Runtime and TensorRT run those, and an export made from a checkpoint)."""
    if export and spec.backend.runs_from != "export":
        raise UsageError(f"backend {spec.name} runs from a checkpoint, not an export folder")


def make_torch_engine(spec: BackendSpec, loaded: LoadedModel, device: torch.device) -> Denoiser:
    """The engine of a backend that runs the torch module (torch, compile)."""
    if spec.backend.runs_from != "model":
        raise UsageError(f"backend {spec.name} runs from an export folder, not a checkpoint")
    with loaded.moving():  # the engine moves the module to the device: its weights stay the source's
        return spec.backend.make(loaded.module(), spec.precision, device)


def make_export_engine(spec: BackendSpec, export: ExportFiles, device: torch.device) -> Denoiser:
    """The engine of a backend that runs an export folder (ONNX Runtime or TensorRT): ONNX Runtime runs the graphs
    of its own precision only (TensorRT builds its precision's plans from an fp32 export)."""
    check_runs_from(spec, export=True)
    if spec.name == "onnx" and spec.precision != export.precision:
        raise UsageError(f"{export.folder} is a {export.precision} export; backend {spec} runs {spec.precision} graphs")
    return spec.backend.make(export, spec.precision, device)
