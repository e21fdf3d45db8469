"""Where the stages meet: the engine a backend spec needs, exporting and building what is missing.

Exports and engines are cached under engines/ and reused while the model and settings match.
"""

from __future__ import annotations

from typing import Any

import torch

from dip_export.checkpoint import LoadedModel
from dip_export.runtime.factory import BackendSpec
from dip_export.sampling import Denoiser


def make_engine(
    spec: BackendSpec, loaded: LoadedModel, size: tuple[int, int], device: torch.device, console: Any, batch: int = 1
) -> Denoiser:
    """The engine for a backend spec, exporting and building (cached under engines/) what it needs."""
    from dip_export.export.onnx_export import EXPORT_ROOT, ensure_export
    from dip_export.runtime.factory import make_export_engine, make_torch_engine

    if spec.name in ("torch", "compile"):
        return make_torch_engine(spec, loaded, device)
    if spec.name == "trt":
        from dip_export.trt_build import BatchProfile, build_trt

        folder = ensure_export(loaded, precision="fp32", image_size=size, console=console)
        build_trt(
            precision=spec.precision, output_dir=folder, root=EXPORT_ROOT, profile=BatchProfile(1, batch, max(batch, 8)),
            timing_cache=folder / "timing.cache", opt_level=3, console=console, device=device,
        )  # fmt: skip
        return make_export_engine(spec, folder, device)
    if spec.precision == "int8":
        from dip_export.quantize import ensure_int8_export

        folder = ensure_int8_export(loaded, image_size=size, target="onnx", console=console)
    else:
        folder = ensure_export(loaded, precision=spec.precision, image_size=size, console=console)
    return make_export_engine(spec, folder, device)
