"""What each backend is, as plain data (no torch): read by the registry, the CLI's help and the manifest.

`dip_export.runtime.backends` joins each entry with the code that makes its engine; importing this
module costs nothing, so `--help` can list the backends without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass


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


CATALOG: tuple[BackendInfo, ...] = (
    BackendInfo("torch", ("fp32", "bf16", "fp16"), "fp32", True, False, False, "model", "eager PyTorch", ("cpu", "cuda")),
    BackendInfo(
        "compile", ("fp32", "bf16", "fp16"), "fp32", True, False, False, "model", "torch.compile", ("cpu", "cuda"), compiles=True
    ),
    BackendInfo("onnx", ("fp32", "fp16", "bf16", "int8"), "fp32", False, False, False, "export", "ONNX Runtime", ("cpu",)),
    BackendInfo("trt", ("fp16", "bf16", "int8", "fp8", "fp32"), "fp16", True, True, True, "export", "TensorRT"),
)

BENCH_DEFAULT = "torch,torch:bf16,compile,compile:bf16,onnx,onnx:int8,trt:fp16,trt:int8"  # dip-bench's rows

ALL_PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for info in CATALOG for p in info.precisions))


def backend_help() -> str:
    """The backends and their precisions in a few words, default precision first, e.g. 'torch (eager PyTorch): fp32|bf16|fp16'."""
    parts = []
    for info in CATALOG:
        precisions = [info.default, *(p for p in info.precisions if p != info.default)]
        parts.append(f"{info.name} ({info.help}): {'|'.join(precisions)}")
    return "; ".join(parts)
