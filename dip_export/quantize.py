"""INT8 exports: static quantization to QDQ from the model's own sampler trajectories.

Two artifacts from the same calibration data (they are not interchangeable; see bench/RESULTS.md):
- target "onnx" (CPU, ONNX Runtime): signed 8-bit per-channel weights, unsigned 8-bit activations,
  QDQ around MatMul / Gemm / Conv / ConvTranspose, which ONNX Runtime fuses into integer kernels.
- target "trt" (TensorRT): symmetric signed 8-bit everywhere, zero points 0, per-channel weights,
  the explicit-quantization form a strongly typed TensorRT build takes.
Left in float: the patch, timestep and label embedders, the adaLN modulation (it scales every
token), and the detailer's first and last convolutions (raw pixels in, velocity out).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from dip_export.calibration import CalibrationSettings, load_or_collect
from dip_export.checkpoint import LoadedModel
from dip_export.errors import ExportError, MissingDependencyError
from dip_export.export.manifest import Manifest, read_manifest, write_manifest
from dip_export.export.onnx_export import (
    EXPORT_ROOT,
    ensure_export,
    format_report,
    is_current,
    source_info,
    tool_versions,
    verify_export,
)
from dip_export.export.spec import io_specs
from dip_export.io import atomic_dir

FLOAT_NODES = re.compile(r"(s_embedder|t_embedder|y_embedder|adaLN_modulation|/enc1/|/out_conv/)")
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv", "ConvTranspose"]
INT8_TOLERANCE = 0.2  # relative RMS error of one evaluation; the image-level check is PSNR in dip-bench


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over recorded batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def int8_options(target: str, fp8: bool = False) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    symmetric = target == "trt"
    if fp8:  # E4M3 activations and weights, per-tensor scales (TensorRT on compute capability >= 8.9)
        return {
            "quant_format": QuantFormat.QDQ, "per_channel": False, "weight_type": QuantType.QFLOAT8E4M3FN,
            "activation_type": QuantType.QFLOAT8E4M3FN, "calibrate_method": CalibrationMethod.MinMax,
            "op_types_to_quantize": ["MatMul", "Gemm"], "extra_options": {"ActivationSymmetric": True},
        }  # fmt: skip
    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "weight_type": QuantType.QInt8,
        "activation_type": QuantType.QInt8 if symmetric else QuantType.QUInt8,
        "calibrate_method": CalibrationMethod.MinMax,
        "op_types_to_quantize": QUANTIZED_OPS,
        "extra_options": {"ActivationSymmetric": symmetric, "WeightSymmetric": True},
    }


def float_nodes(model_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and FLOAT_NODES.search(n.name)]


def quantize_submodel(
    src: Path, dst: Path, batches: list[dict[str, np.ndarray]], target: str, large: bool, fp8: bool = False
) -> None:
    try:
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MissingDependencyError("onnxruntime", "pip install onnxruntime") from None
    pre = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=large,
                      all_tensors_to_one_file=True, external_data_location=pre.name + ".data")  # fmt: skip
    try:
        quantize_static(
            str(pre), str(dst), _Reader(batches), nodes_to_exclude=float_nodes(src),
            use_external_data_format=large, **int8_options(target, fp8),
        )  # fmt: skip
    finally:
        for leftover in dst.parent.glob(pre.name + "*"):
            leftover.unlink()


def int8_dir(loaded: LoadedModel, size: tuple[int, int], target: str) -> Path:
    suffix = "int8" if target == "onnx" else "int8-trt"
    return EXPORT_ROOT / f"{loaded.name}-{size[0]}x{size[1]}-{suffix}"


def export_int8(
    loaded: LoadedModel,
    *,
    image_size: tuple[int, int],
    target: str = "onnx",
    calibration: CalibrationSettings | None = None,
    output_dir: Path | None = None,
    console: Console | None = None,
    fp8: bool = False,
) -> Path:
    """Quantize the fp32 export of this model; verify and write a manifest, or write nothing."""
    console = console or Console(stderr=True)
    calibration = calibration or CalibrationSettings()
    out = output_dir or int8_dir(loaded, image_size, target)
    fp32 = ensure_export(loaded, precision="fp32", image_size=image_size, console=console)
    source = read_manifest(fp32)
    started = time.perf_counter()
    cache = EXPORT_ROOT / f"{loaded.name}-{image_size[0]}x{image_size[1]}-calib"
    with console.status(f"calibration trajectories ({calibration.samples} samples, {calibration.steps} steps) ..."):
        batches = load_or_collect(loaded, image_size, calibration, cache)
    with atomic_dir(out) as tmp:
        files = {}
        for role, rel in source.files.items():
            large = (fp32 / f"{rel}.data").exists()
            with console.status(f"quantizing {role} (int8, {target}) ..."):
                quantize_submodel(fp32 / rel, tmp / rel, batches[role], target, large, fp8)
            files[role] = rel
        specs = io_specs(loaded.config, *image_size)
        with console.status("verifying against PyTorch ..."):
            report = verify_export(tmp, files, loaded.model, specs, "fp32")
        report["metric"], report["tolerance"] = "rel_rms", INT8_TOLERANCE
        report["worst_rel"] = max(r["rel_rms"] for r in report["rows"])
        report["passed"] = report["worst_rel"] <= INT8_TOLERANCE
        console.print(format_report(report))
        if not report["passed"]:
            raise ExportError(f"int8 verification failed: RMS relative error {report['worst_rel']:.3g} > {INT8_TOLERANCE}")
        manifest = Manifest(
            name=loaded.name, precision="fp8" if fp8 else "int8", image_size=image_size, config=loaded.config, files=files,
            source=source_info(loaded), versions=tool_versions(), opset=source.opset, verification=report,
            sampling=dict(loaded.sampling),
            extra={
                "target": target, "float_nodes": FLOAT_NODES.pattern, "quantized_ops": QUANTIZED_OPS,
                "calibration": calibration.__dict__, "export_seconds": round(time.perf_counter() - started, 2),
                "activations": "int8 symmetric" if target == "trt" else "uint8 asymmetric",
                "weights": "int8 symmetric per-channel",
            },
        )  # fmt: skip
        write_manifest(tmp, manifest)
    console.print(f"wrote {out}/ ({'fp8' if fp8 else 'int8'} {target})")
    return out


def ensure_int8_export(
    loaded: LoadedModel, *, image_size: tuple[int, int], target: str = "onnx", console: Console | None = None
) -> Path:
    folder = int8_dir(loaded, image_size, target)
    if is_current(folder, loaded):
        return folder
    return export_int8(loaded, image_size=image_size, target=target, console=console)
