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
    entry: dict[str, Any],
    trt_version: str,
    gpu: str,
    *,
    profile: RowProfile | None = None,
    opt_level: int | None = None,
    covering: bool = False,
) -> bool:
    """Reusable only for the same TensorRT version and GPU and, when asked, the same batch profile and opt level.

    `covering`: any engine whose profile holds the asked rows (min..max) and whose opt level is at least the
    asked one will do (what sampling needs); otherwise both must be the ones asked (what `dip-export trt` builds).
    """
    if entry.get("trt_version") != trt_version or entry.get("gpu") != gpu:
        return False
    rows = entry.get("profile", {}).get("network_rows")
    level = entry.get("opt_level")
    if covering:
        lo, _, hi = profile.network_batches() if profile is not None else (0, 0, 0)
        fits = profile is None or (rows is not None and rows[0] <= lo and hi <= rows[2])
        return fits and (opt_level is None or (level is not None and level >= opt_level))
    if profile is not None and rows != list(profile.network_batches()):
        return False
    return opt_level is None or level == opt_level
