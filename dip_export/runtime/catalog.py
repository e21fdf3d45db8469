"""What each backend is, as plain data (no torch): read by the registry, the CLI's help and the manifest.

`dip_export.runtime.backends` joins each entry with the code that makes its engine; importing this
module costs nothing, so `--help` can list the backends without loading torch.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

from dip_export.text import visible


@dataclass(frozen=True)
class BackendInfo:
    """A backend's facts: its precisions, what it needs, where it runs from, when --backend auto tries it."""

    name: str
    precisions: tuple[str, ...]
    default: str  # precision when none is named
    graphable: bool  # its kernels run on the torch stream a CUDA graph captures
    needs_cuda: bool
    needs_tensorrt: bool
    runs_from: str  # "model": the torch module; "export": an export folder's ONNX graphs or plans
    help: str  # a few words for the CLI's help
    auto_on: tuple[str, ...] = ()  # device types where --backend auto measures it
    compiles: bool = False  # costly to set up: --backend auto measures one precision of it at most
    packages: tuple[str, ...] = ()  # modules its engine imports
    install: str = "pip install -e ."  # how to get them


CATALOG: tuple[BackendInfo, ...] = (
    BackendInfo("torch", ("fp32", "bf16", "fp16"), "fp32", True, False, False, "model", "eager PyTorch", ("cpu", "cuda")),
    BackendInfo(
        "compile", ("fp32", "bf16", "fp16"), "fp32", True, False, False, "model", "torch.compile", ("cpu", "cuda"), compiles=True
    ),
    BackendInfo(
        "onnx", ("fp32", "fp16", "bf16", "int8"), "fp32", False, False, False, "export", "ONNX Runtime", ("cpu",),
        packages=("onnxruntime",), install="pip install onnxruntime (or onnxruntime-gpu on CUDA machines)",
    ),
    BackendInfo(
        "trt", ("fp16", "bf16", "int8", "fp8", "fp32"), "fp16", True, True, True, "export", "TensorRT",
        packages=("tensorrt",), install="pip install -e '.[gpu]'",
    ),
)  # fmt: skip
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # making an export (and verifying it) from a checkpoint


BENCH_DEFAULT = "torch,torch:bf16,compile,compile:bf16,onnx,onnx:int8,trt:fp16,trt:int8"  # dip-bench's rows

ALL_PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for info in CATALOG for p in info.precisions))


def backend_help() -> str:
    """The backends and their precisions in a few words, default precision first, e.g. 'torch (eager PyTorch): fp32|bf16|fp16'."""
    parts = []
    for info in CATALOG:
        precisions = [info.default, *(p for p in info.precisions if p != info.default)]
        parts.append(f"{info.name} ({info.help}): {'|'.join(precisions)}")
    return "; ".join(parts)


def installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it (a module already imported counts)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def info(name: str) -> BackendInfo:
    found = next((i for i in CATALOG if i.name == name), None)
    if found is None:
        from dip_export.errors import UsageError

        raise UsageError(f"unknown backend {_shown(name)}; choose from {', '.join(i.name for i in CATALOG)}")
    return found


def unavailable_reason(name: str, device_type: str | None = None, from_model: bool = False) -> str | None:
    """Why backend `name` cannot run here, in one line (None when it can): its device, then its packages.

    `device_type`: where it would run (None: not checked); `from_model`: its export is made from a
    checkpoint first, which needs the exporter's packages too.
    """
    record = info(name)
    if device_type is not None and record.needs_cuda and device_type != "cuda":
        return "TensorRT needs a CUDA GPU" if record.needs_tensorrt else f"{name} needs a CUDA GPU"
    needed = list(record.packages)
    if from_model and record.runs_from == "export":
        needed += [m for m in EXPORT_PACKAGES if m not in needed]
    missing = next((m for m in needed if not installed(m)), None)
    if missing is None:
        return None
    hint = record.install if missing in record.packages else "pip install -e ."
    return f"{missing} is not installed: backend {name} needs it; {hint}"


def check_available(name: str, device_type: str | None = None, from_model: bool = False) -> None:
    """Refuse, in one line and before any work, a backend this machine cannot run."""
    reason = unavailable_reason(name, device_type, from_model)
    if reason is not None:
        from dip_export.errors import MissingDependencyError

        raise MissingDependencyError(name, reason, message=reason)


def check_packages(modules: tuple[str, ...], what: str, hint: str = "pip install -e .") -> None:
    """Refuse, in one line and before any work, a step whose packages are missing (e.g. the ONNX exporter's)."""
    missing = next((m for m in modules if not installed(m)), None)
    if missing is not None:
        from dip_export.errors import MissingDependencyError

        raise MissingDependencyError(missing, hint, message=f"{missing} is not installed: {what} needs it; {hint}")


def _shown(name: object) -> str:
    """A user's backend name as a message shows it: quoted and cut short, or only its kind when it is no string."""
    return f"'{visible(name[:40])}'" if isinstance(name, str) else f"a {type(name).__name__}"
