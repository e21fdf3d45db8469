"""INT8 exports: static quantization to QDQ from the model's own sampler trajectories.

Two artifacts from the same calibration data (they are not interchangeable; see bench/RESULTS.md):
- target "onnx" (CPU, ONNX Runtime): signed 8-bit per-channel weights, unsigned 8-bit activations,
  QDQ around MatMul / Gemm / Conv / ConvTranspose, which ONNX Runtime fuses into integer kernels.
- target "trt" (TensorRT): symmetric signed 8-bit everywhere, zero points 0, per-channel weights,
  the explicit-quantization form a strongly typed TensorRT build takes, as NVIDIA Model-Optimizer
  writes it: no bias quantization (the parser rejects INT32 DequantizeLinear, NVIDIA/TensorRT#4542),
  Q/DQ only on the inputs of the GEMM/conv ops (no output quantization), and everything left in float
  converted to fp16 (strongly typed networks never fall back to fp16 on their own). fp8 is the same
  with E4M3 scales from Distribution calibration (ONNX Runtime refuses MinMax for float types).
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

from dip_export.checkpoint import LoadedModel
from dip_export.errors import ExportError, MissingDependencyError
from dip_export.export.calibration import CalibrationSettings, load_or_collect
from dip_export.export.manifest import Manifest, ownership_problem, read_manifest, write_manifest
from dip_export.export.naming import CALIBRATION, export_folder_name, export_variant
from dip_export.export.onnx_export import (
    EXPORT_ROOT,
    check_export_run,
    ensure_export,
    files_opset,
    format_report,
    is_current,
    source_info,
    tool_versions,
    verify_export,
)
from dip_export.export.spec import io_specs
from dip_export.io import atomic_dir
from dip_export.messages import say, say_lines

FLOAT_NODES = re.compile(r"(s_embedder|t_embedder|y_embedder|adaLN_modulation|/enc1/|/out_conv/)")
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv", "ConvTranspose"]
FP32_NODES = re.compile(r"(norm|_embedder|/Sin|/Cos)")  # statistics and sinusoids stay float32 in the fp16 part
INT8_TOLERANCE = 0.2  # relative RMS error of one evaluation; the image-level check is PSNR in dip-bench
FP8_TOLERANCE = 0.3  # E4M3 keeps 3 mantissa bits, per-tensor scales: 0.23 measured on the tiny test model


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over recorded batches."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self._iter: Iterator[dict[str, np.ndarray]] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


def int8_options(target: str, fp8: bool = False, op_types: tuple[str, ...] = ()) -> dict[str, Any]:
    """quantize_static's arguments; `op_types` are the graph's op types (none gets its output quantized for TensorRT)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    symmetric = target == "trt"
    extra: dict[str, Any] = {"ActivationSymmetric": True if fp8 else symmetric, "WeightSymmetric": True}
    if symmetric or fp8:
        # TensorRT: biases stay float (an INT32 DequantizeLinear does not parse) and only GEMM/conv inputs
        # carry Q/DQ (Model-Optimizer excludes output quantization for every op type)
        extra |= {"QuantizeBias": False, "OpTypesToExcludeOutputQuantization": sorted({*op_types, *QUANTIZED_OPS})}
    if fp8:  # E4M3 activations and weights, per-tensor scales (TensorRT on compute capability >= 8.9)
        return {
            "quant_format": QuantFormat.QDQ, "per_channel": False, "weight_type": QuantType.QFLOAT8E4M3FN,
            "activation_type": QuantType.QFLOAT8E4M3FN, "calibrate_method": CalibrationMethod.Distribution,
            "op_types_to_quantize": ["MatMul", "Gemm"], "extra_options": extra,
        }  # fmt: skip
    return {
        "quant_format": QuantFormat.QDQ,
        "per_channel": True,
        "weight_type": QuantType.QInt8,
        "activation_type": QuantType.QInt8 if symmetric else QuantType.QUInt8,
        "calibrate_method": CalibrationMethod.MinMax,
        "op_types_to_quantize": QUANTIZED_OPS,
        "extra_options": extra,
    }


def float_nodes(model_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and FLOAT_NODES.search(n.name)]


def quantize_submodel(
    src: Path, dst: Path, batches: list[dict[str, np.ndarray]], target: str, large: bool, fp8: bool = False
) -> None:
    try:
        import onnx
        from onnxruntime.quantization import quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MissingDependencyError("onnxruntime", "pip install onnxruntime") from None
    pre = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=large,
                      all_tensors_to_one_file=True, external_data_location=pre.name + ".data")  # fmt: skip
    op_types = tuple(sorted({n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node}))
    options = int8_options(target, fp8, op_types)
    try:
        if set(options["op_types_to_quantize"]) & set(op_types):
            quantize_static(
                str(pre), str(dst), _Reader(batches), nodes_to_exclude=float_nodes(src),
                use_external_data_format=large, **options,
            )  # fmt: skip
        else:  # nothing of this kind to quantize (fp8 covers GEMMs; the detailer is convolutions): float only
            onnx.save_model(onnx.load(str(src)), str(dst), save_as_external_data=large, all_tensors_to_one_file=True,
                            location=dst.name + ".data")  # fmt: skip
    except ValueError as err:  # ONNX Runtime's refusals (calibration method, types) are usage-level errors
        raise ExportError(f"ONNX Runtime could not quantize {src.name}: {err}") from None
    finally:
        for leftover in dst.parent.glob(pre.name + "*"):
            leftover.unlink()
    if target == "trt":
        model = qdq_to_fp16(onnx.load(str(dst)))
        onnx.save_model(model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True, location=dst.name + ".data")
        problems = tensorrt_qdq_problems(model)
        if problems:
            raise ExportError(f"the Q/DQ graph of {src.name} is not what TensorRT builds: {'; '.join(problems[:3])}")


def _cast_to(node: Any) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _toposort(nodes: list[Any], graph_inputs: set[str]) -> list[Any]:
    ready = set(graph_inputs)
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(not i or i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = next(i for i in rest[0].input if i and i not in ready)
            raise ExportError(f"fp16 conversion left {rest[0].name} without its input {missing}")
        pending = rest
    return ordered


def qdq_to_fp16(model: Any) -> Any:
    """The TensorRT Q/DQ graph with everything outside norms and embedders in fp16, I/O float32.

    ONNX Runtime's float16 converter does the float part; Q/DQ are then made fp16 themselves (fp16
    scales, opset 19), so a DequantizeLinear feeds its GEMM/conv in fp16 with no Cast in between
    (Model-Optimizer's layout: the DQ output type is the type of the network around it).
    """
    import onnx

    model = _float_part_to_fp16(model)
    graph = model.graph
    _drop_fp16_round_trips(graph)
    added = _qdq_in_fp16(graph)
    inits = {i.name for i in graph.initializer}
    _keep_live_nodes(graph, _toposort([*graph.node, *added], {i.name for i in graph.input} | inits))
    graph.ClearField("value_info")
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)  # fp16 scales for QuantizeLinear / DequantizeLinear
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _float_part_to_fp16(model: Any) -> Any:
    """ONNX Runtime's converter over everything but Q/DQ and the float32 nodes; nodes sorted, types inferred."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = [n.name for n in model.graph.node if FP32_NODES.search(n.name)]
    model = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, "QuantizeLinear", "DequantizeLinear"],
        node_block_list=blocked,
    )  # fmt: skip
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    sorted_nodes = _toposort(list(model.graph.node), known)
    model.graph.ClearField("node")
    model.graph.node.extend(sorted_nodes)  # the converter appends its Casts at the end
    model.graph.ClearField("value_info")  # types from before the conversion; inferred again below
    return onnx.shape_inference.infer_shapes(model)


def _consumers(graph: Any) -> dict[str, list[Any]]:
    users: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _rewire(node: Any, old: str, new: str) -> None:
    node.input[:] = [new if i == old else i for i in node.input]


def _drop_fp16_round_trips(graph: Any) -> None:
    """float32 -> Cast(fp16) -> Cast(float32) is bypassed: the converter rounds through fp16 there, and x^2 overflows."""
    from onnx import TensorProto

    producer = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    for node in graph.node:
        first = producer.get(node.input[0]) if node.op_type == "Cast" else None
        round_trip = (
            first is not None and first.op_type == "Cast" and _cast_to(node) == TensorProto.FLOAT
            and _cast_to(first) == TensorProto.FLOAT16 and types.get(first.input[0]) == TensorProto.FLOAT
        )  # fmt: skip
        if round_trip:
            assert first is not None
            for user in consumers.get(node.output[0], []):
                _rewire(user, node.output[0], first.input[0])


def _qdq_in_fp16(graph: Any) -> list[Any]:
    """fp16 scales, Q fed in fp16 and DQ feeding fp16 directly; the Casts this needs are returned, not yet placed."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    for scale in {n.input[1] for n in qdq}:
        if inits[scale].data_type == TensorProto.FLOAT:
            inits[scale].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[scale]).astype(np.float16), scale))
    added = []
    for node in qdq:
        if node.op_type == "QuantizeLinear":  # fp16 -> Cast(fp32) -> Q  becomes  fp16 -> Q
            src = producer.get(node.input[0])
            if src is not None and src.op_type == "Cast" and _cast_to(src) == TensorProto.FLOAT:
                node.input[0] = src.input[0]
            else:  # a float32 producer (a norm): cast its output for the fp16 Q
                cast = helper.make_node("Cast", [node.input[0]], [node.name + "_fp16_in"], to=TensorProto.FLOAT16)
                added.append(cast)
                node.input[0] = cast.output[0]
            continue
        for user in consumers.get(node.output[0], []):  # DQ -> Cast(fp16) -> op  becomes  DQ (fp16) -> op
            if user.op_type == "Cast" and _cast_to(user) == TensorProto.FLOAT16:
                for after in consumers.get(user.output[0], []):
                    _rewire(after, user.output[0], node.output[0])
            else:  # a float32 user keeps float32
                cast = helper.make_node("Cast", [node.output[0]], [node.name + "_fp32_out"], to=TensorProto.FLOAT)
                added.append(cast)
                _rewire(user, node.output[0], cast.output[0])
    return added


def _keep_live_nodes(graph: Any, nodes: list[Any]) -> None:
    """The graph's nodes become `nodes` less those that no longer feed an output (the Casts folded away)."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    graph.ClearField("node")
    graph.node.extend(live[::-1])


def tensorrt_qdq_problems(model: Any) -> list[str]:
    """What a TensorRT build of this Q/DQ graph would trip on: INT32 DQ, Q/DQ off GEMM/conv inputs, fp32 GEMMs."""
    from onnx import TensorProto

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {i.name: i.data_type for i in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    problems = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            if node.input[0] in inits and inits[node.input[0]].data_type == TensorProto.INT32:
                problems.append(f"INT32 DequantizeLinear {node.name} (a quantized bias)")
            users = {u.op_type for u in consumers.get(node.output[0], [])} - {"Shape"}  # a shape reads no values
            if not users <= set(QUANTIZED_OPS):
                problems.append(f"{node.name} feeds {', '.join(sorted(users - set(QUANTIZED_OPS)))}, not a GEMM/conv")
        elif node.op_type == "QuantizeLinear":
            src = producer.get(node.input[0])
            if src is not None and src.op_type in QUANTIZED_OPS:
                problems.append(f"{node.name} quantizes the output of {src.name}")
        elif node.op_type in QUANTIZED_OPS and types.get(node.input[0]) == TensorProto.FLOAT and not FP32_NODES.search(node.name):
            problems.append(f"{node.name} computes in float32")
    return problems


def int8_dir(loaded: LoadedModel, size: tuple[int, int], target: str, fp8: bool = False) -> Path:
    return EXPORT_ROOT / export_folder_name(loaded.name, size, export_variant("fp8" if fp8 else "int8", target))


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
    out = output_dir or int8_dir(loaded, image_size, target, fp8)
    cache = EXPORT_ROOT / export_folder_name(loaded.name, image_size, CALIBRATION)
    check_export_run(loaded, image_size, out, precision="fp8" if fp8 else "int8", calibration=calibration,
                     calibration_dir=cache)  # fmt: skip  # before the fp32 export
    fp32 = ensure_export(loaded, precision="fp32", image_size=image_size, console=console)
    source = read_manifest(fp32)
    started = time.perf_counter()
    with console.status(f"calibration trajectories ({calibration.samples} samples, {calibration.steps} steps) ..."):
        batches = load_or_collect(loaded, image_size, calibration, cache, console)
    with atomic_dir(out, problem_of=ownership_problem) as tmp:
        files = {}
        for role, rel in source.files.items():
            large = (fp32 / f"{rel}.data").exists()
            with console.status(f"quantizing {role} (int8, {target}) ..."):
                quantize_submodel(fp32 / rel, tmp / rel, batches[role], target, large, fp8)
            files[role] = rel
        report = _verify_quantized(tmp, files, loaded, image_size, fp8, console)
        manifest = Manifest(
            name=loaded.name, precision="fp8" if fp8 else "int8", image_size=image_size, config=loaded.config, files=files,
            source=source_info(loaded), versions=tool_versions(), opset=files_opset(tmp, files), verification=report,
            sampling=dict(loaded.sampling),
            extra={
                "target": target, "float_nodes": FLOAT_NODES.pattern, "quantized_ops": QUANTIZED_OPS,
                "calibration": calibration.__dict__, "export_seconds": round(time.perf_counter() - started, 2),
                "activations": ("fp8 e4m3" if fp8 else "int8 symmetric") if target == "trt" else "uint8 asymmetric",
                "weights": "fp8 e4m3 per-tensor" if fp8 else "int8 symmetric per-channel",
                "float_part": "fp16 (norm statistics, embedders and I/O float32)" if target == "trt" else "float32",
            },
        )  # fmt: skip
        write_manifest(tmp, manifest)
    say(console, f"wrote {out}/ ({'fp8' if fp8 else 'int8'} {target})")
    return out


def _verify_quantized(
    folder: Path, files: dict[str, str], loaded: LoadedModel, image_size: tuple[int, int], fp8: bool, console: Console
) -> dict[str, Any]:
    """The quantized graphs against PyTorch by RMS relative error; above the tolerance an error (nothing is written)."""
    specs = io_specs(loaded.config, *image_size)
    with console.status("verifying against PyTorch ..."):
        report = verify_export(folder, files, loaded.module(), specs, "fp32")
    tolerance = FP8_TOLERANCE if fp8 else INT8_TOLERANCE
    report["metric"], report["tolerance"] = "rel_rms", tolerance
    report["worst_rel"] = max(r["rel_rms"] for r in report["rows"])
    report["passed"] = report["worst_rel"] <= tolerance
    say_lines(console, format_report(report))
    if not report["passed"]:
        raise ExportError(
            f"{'fp8' if fp8 else 'int8'} verification failed: RMS relative error {report['worst_rel']:.3g} > {tolerance}"
        )
    return report


def ensure_int8_export(
    loaded: LoadedModel, *, image_size: tuple[int, int], target: str = "onnx", console: Console | None = None
) -> Path:
    folder = int8_dir(loaded, image_size, target)
    wanted = {"target": target, "calibration": CalibrationSettings().__dict__}  # what export_int8 makes by default
    if is_current(folder, loaded, precision="int8", image_size=image_size, opset=None, extra=wanted):
        return folder
    return export_int8(loaded, image_size=image_size, target=target, console=console)
