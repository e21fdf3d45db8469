"""TensorRT helpers shared by the engine (runtime/trt_engine) and the build (export/trt_build).

`tensorrt` is imported lazily, inside `import_tensorrt`: everything else here runs on any machine.
"""

from __future__ import annotations

from typing import Any, Protocol

from dip_export.errors import MissingDependencyError

INSTALL_HINT = "install the GPU extra on a machine with an NVIDIA GPU: pip install -e '.[gpu]'"


class RowProfile(Protocol):
    """A batch profile as far as matching goes: the network row counts it was built for."""

    def network_batches(self) -> tuple[int, ...]: ...


def import_tensorrt() -> Any:
    """The tensorrt module, or a one-line install hint."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("tensorrt", INSTALL_HINT) from None
    return tensorrt


def gpu_identity(device: Any = None) -> tuple[str, tuple[int, int]]:
    """Name and compute capability of `device` (not the current device: engines on cuda:1 are cuda:1's)."""
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("a CUDA GPU", "TensorRT engines are built and run on an NVIDIA GPU; " + INSTALL_HINT)
    return torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)


def engine_matches(
    entry: dict[str, Any], trt_version: str, gpu: str, *, profile: RowProfile | None = None, opt_level: int | None = None
) -> bool:
    """Reusable only for the same TensorRT version and GPU and, when asked, the same batch profile and opt level."""
    if entry.get("trt_version") != trt_version or entry.get("gpu") != gpu:
        return False
    if profile is not None and entry.get("profile", {}).get("network_rows") != list(profile.network_batches()):
        return False
    return opt_level is None or entry.get("opt_level") == opt_level
