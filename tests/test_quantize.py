"""Calibration from trajectories and the INT8 exports (ONNX Runtime CPU and TensorRT Q/DQ forms)."""

import numpy as np
import onnx
import pytest

from dip_export.checkpoint import LoadedModel, build_model
from dip_export.errors import ExportError
from dip_export.export import calibration, onnx_export, quantize
from dip_export.export.calibration import CalibrationSettings, load_or_collect
from dip_export.export.manifest import read_manifest
from dip_export.export.quantize import export_int8
from dip_export.runtime.ort_engine import make_session
from tests.fakes import tensorrt as fakes_tensorrt

SIZE = (32, 64)
CALIB = CalibrationSettings(samples=3, steps=6, keep_steps=4)


@pytest.fixture(scope="module")
def loaded(golden):
    return LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXPORT_ROOT", path)
        mp.setattr(quantize, "EXPORT_ROOT", path)
        yield path


def test_calibration_covers_the_trajectory_and_is_cached(tmp_path, loaded, monkeypatch):
    batches = load_or_collect(loaded, SIZE, CALIB, tmp_path)
    assert len(batches["backbone"]) == 4 and len(batches["detailer"]) == 4
    ts = [b["t"][0] for b in batches["backbone"]]
    assert ts[0] == 0.0 and ts[-1] == pytest.approx(5 / 6) and ts == sorted(ts)  # first to last step
    ys = np.concatenate([b["y"] for b in batches["backbone"]])
    assert (ys == loaded.config.null_class).any() and (ys < loaded.config.null_class).any()
    assert batches["detailer"][0]["tokens"].shape == (6, 8, 96)  # CFG pairs of 3 samples

    def fail(*args, **kwargs):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(calibration, "collect", fail)
    again = load_or_collect(loaded, SIZE, CALIB, tmp_path)
    np.testing.assert_array_equal(again["detailer"][2]["x"], batches["detailer"][2]["x"])


def _qdq(path):
    graph = onnx.load(str(path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    return graph, q, inits


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_int8_export_quantizes_the_heavy_ops_and_keeps_the_sensitive_ones(root, loaded, target):
    folder = export_int8(loaded, image_size=SIZE, target=target, calibration=CALIB)
    manifest = read_manifest(folder)
    assert manifest.precision == "int8" and manifest.verification["passed"]
    graph, q, inits = _qdq(folder / "detailer.onnx")
    assert q, "no QuantizeLinear nodes"
    zero_points = [inits[n.input[2]] for n in q if len(n.input) > 2 and n.input[2] in inits]
    if target == "trt":  # symmetric signed 8-bit, zero points 0
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    else:  # unsigned activations for ONNX Runtime's integer kernels
        assert any(z.dtype == np.uint8 for z in zero_points)
    dq_inputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert not set(convs["/local_decoder/enc1/0/Conv"].input) & dq_inputs  # first conv in float
    assert not set(convs["/local_decoder/out_conv/Conv"].input) & dq_inputs  # last conv in float
    assert set(convs["/local_decoder/dec2/0/Conv"].input) & dq_inputs  # the rest quantized


def test_int8_sampling_stays_close_to_fp32(root, loaded, golden):
    folder = export_int8(loaded, image_size=SIZE, target="onnx", calibration=CALIB)
    feeds = {k: golden[k] for k in ("x", "t", "y")}
    tokens = make_session(folder / "backbone.onnx").run(None, feeds)[0]
    rms = np.sqrt(np.mean((tokens - golden["tokens"]) ** 2) / np.mean(golden["tokens"] ** 2))
    assert rms < 0.2


def _graph_maps(model):
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return graph, producer, consumers


@pytest.fixture(scope="module")
def trt_int8(root, loaded):
    return export_int8(loaded, image_size=SIZE, target="trt", calibration=CALIB)


@pytest.mark.parametrize("role", ["backbone", "detailer"])
def test_tensorrt_int8_graph_parses_and_is_modelopt_shaped(trt_int8, role, monkeypatch):
    """No INT32 DQ (quantized biases), Q/DQ only on GEMM/conv inputs, fp16 everywhere else, float32 I/O."""
    fake_trt = fakes_tensorrt.install(monkeypatch)
    network = fake_trt.Builder(None).create_network(1 << 1)
    parser = fake_trt.OnnxParser(network, None)
    assert parser.parse_from_file(str(trt_int8 / f"{role}.onnx")), [parser.get_error(i) for i in range(parser.num_errors)]
    model = onnx.shape_inference.infer_shapes(onnx.load(str(trt_int8 / f"{role}.onnx")))
    graph, producer, consumers = _graph_maps(model)
    inits = {i.name: i for i in graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types |= {i.name: i.data_type for i in graph.initializer}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dq
    assert not [n.name for n in dq if inits.get(n.input[0]) is not None and inits[n.input[0]].data_type == onnx.TensorProto.INT32]
    gemm = {"MatMul", "Gemm", "Conv", "ConvTranspose"}
    for n in dq:
        assert {u.op_type for u in consumers[n.output[0]]} <= gemm | {"Shape"}, n.name
        assert types[n.input[1]] == onnx.TensorProto.FLOAT16  # the DQ hands fp16 to its op
    for n in graph.node:
        if n.op_type == "QuantizeLinear":
            assert producer.get(n.input[0]) is None or producer[n.input[0]].op_type not in gemm, n.name
    heavy = [n for n in graph.node if n.op_type in gemm and "_embedder" not in n.name]
    assert heavy and all(types[n.input[0]] == onnx.TensorProto.FLOAT16 for n in heavy)
    assert all(v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for v in graph.input)
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in graph.output)


def test_tensorrt_int8_graph_stays_close_to_pytorch(trt_int8, golden):
    """ONNX Runtime runs the fp16 + Q/DQ graph on CPU: one evaluation within the int8 tolerance of fp32 PyTorch."""
    feeds = {k: golden[k] for k in ("x", "t", "y")}
    tokens = make_session(trt_int8 / "backbone.onnx").run(None, feeds)[0]
    assert np.sqrt(np.mean((tokens - golden["tokens"]) ** 2) / np.mean(golden["tokens"] ** 2)) < 0.1
    v = make_session(trt_int8 / "detailer.onnx").run(None, {"x": golden["x"], "tokens": golden["tokens"]})[0]
    assert np.sqrt(np.mean((v - golden["v"]) ** 2) / np.mean(golden["v"] ** 2)) < 0.2


def test_fake_parser_refuses_int32_dequantize(tmp_path, monkeypatch):
    from onnx import TensorProto, helper, numpy_helper

    bias = numpy_helper.from_array(np.arange(4, dtype=np.int32), "bias_q")
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "bias_scale")
    node = helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias"], name="bias_DequantizeLinear")
    add = helper.make_node("Add", ["x", "bias"], ["out"], name="add")
    graph = helper.make_graph([node, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])], [bias, scale])  # fmt: skip
    path = tmp_path / "int32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    fake_trt = fakes_tensorrt.install(monkeypatch)
    parser = fake_trt.OnnxParser(fake_trt.Builder(None).create_network(0), None)
    assert not parser.parse_from_file(str(path))
    assert "INT32" in parser.get_error(0)


def test_fp8_tensorrt_export_calibrates(root, loaded):
    """MinMax is refused for float types by ONNX Runtime; the fp8 graph uses Distribution calibration."""
    folder = export_int8(loaded, image_size=SIZE, target="trt", calibration=CALIB, fp8=True)
    manifest = read_manifest(folder)
    assert manifest.precision == "fp8" and manifest.verification["passed"] and folder.name.endswith("fp8-trt")
    model = onnx.load(str(folder / "backbone.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.data_type == onnx.TensorProto.FLOAT8E4M3FN for z in zero_points)


def test_quantizer_refusals_are_typed_errors(root, loaded, monkeypatch):
    import onnxruntime.quantization

    def refuse(*args, **kwargs):
        raise ValueError("Only Distribution calibration method is supported for float quantization.")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", refuse)
    with pytest.raises(ExportError, match="Distribution calibration"):
        export_int8(loaded, image_size=SIZE, target="trt", calibration=CALIB, output_dir=root / "refused")
    assert not (root / "refused").exists()


def test_fp8_needs_the_tensorrt_target_and_targets_are_checked():
    from typer.testing import CliRunner

    from dip_export.cli import export_app

    for args, message in ((["--precision", "fp8"], "--target trt"), (["--target", "gpu"], "must be one of onnx, trt")):
        result = CliRunner().invoke(export_app, ["onnx", *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_dip_export_trt_int8_builds_from_the_target_trt_file(trt_int8, monkeypatch):
    """`dip-export trt --int8` on a `--precision int8 --target trt` folder builds that very file (fake TensorRT)."""
    import torch
    from rich.console import Console

    from dip_export.export.trt_build import BatchProfile, build_trt
    from tests.fakes.cuda import FakeCuda

    FakeCuda().install(monkeypatch)
    trt = fakes_tensorrt.install(monkeypatch)
    entry = build_trt(precision="int8", output_dir=trt_int8, root=trt_int8.parent, profile=BatchProfile(1, 1, 2),
                      timing_cache=None, opt_level=4, console=Console(quiet=True), device=torch.device("cpu"))  # fmt: skip
    assert entry["onnx"] == "." and entry["verification"]["passed"]
    errors = [r["rel_err"] for r in entry["verification"]["rows"]]
    assert 1e-3 < max(errors) < 1e-1  # int8 GEMMs rescaled once vs ONNX Runtime's fp16 dequantise-then-multiply
    assert [b["onnx"] for b in trt.built] == [str(trt_int8 / "backbone.onnx"), str(trt_int8 / "detailer.onnx")]
    for name in entry["files"].values():
        (trt_int8 / name).unlink()
