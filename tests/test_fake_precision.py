"""The fake engine computes in its engine's precision, so verification meets real errors and catches a wrong build."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dip_export.errors import ExportError
from dip_export.export.manifest import read_manifest
from dip_export.export.spec import io_specs
from dip_export.export.trt_build import ENGINE_TOLERANCES, BatchProfile, build_trt, verify_engines
from tests.fakes import tensorrt as fake_tensorrt
from tests.fakes.cuda import FakeCuda

SIZE = (32, 64)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, golden):
    from dip_export.checkpoint import LoadedModel, build_model
    from dip_export.export.onnx_export import export_onnx

    loaded = LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")
    root = tmp_path_factory.mktemp("precision")
    quiet = Console(quiet=True)
    return {p: export_onnx(loaded, precision=p, image_size=SIZE, output_dir=root / p, console=quiet) for p in ("fp32", "fp16")}


@pytest.fixture()
def fakes(monkeypatch):
    FakeCuda().install(monkeypatch)
    return fake_tensorrt.install(monkeypatch)


def _build(folder, precision):
    return build_trt(precision=precision, output_dir=folder, root=folder.parent, profile=BatchProfile(1, 1, 2),
                     timing_cache=None, opt_level=3, console=Console(quiet=True), device="cpu")  # fmt: skip


def _max_rel(entry):
    return max(r["rel_err"] for r in entry["verification"]["rows"])


def test_fp16_engines_differ_from_onnx_runtime_by_fp16_rounding_and_pass(exports, tmp_path, fakes):
    """Split-K fp16 products: an error of the size a real fp16 engine shows (~1e-3), inside the fp16 tolerance."""
    folder = Path(shutil.copytree(exports["fp16"], tmp_path / "fp16"))
    entry = _build(folder, "fp16")
    assert entry["verification"]["passed"]
    assert 1e-4 < _max_rel(entry) < ENGINE_TOLERANCES["fp16"]


def test_an_fp32_engine_that_computes_in_fp16_is_refused(exports, tmp_path, fakes):
    """A wrong build (an fp32 entry whose plans run the fp16 graph) fails verification at the fp32 tolerance."""
    folder = Path(shutil.copytree(exports["fp32"], tmp_path / "fp32"))
    entry = _build(folder, "fp32")
    assert _max_rel(entry) == 0.0  # fp32 without TF32: what ONNX Runtime computes
    for role, name in entry["files"].items():
        plan = folder / name
        body = json.loads(plan.read_bytes()[len(fake_tensorrt.PLAN_MAGIC) :])
        body["onnx"] = str(exports["fp16"] / f"{role}.onnx")
        plan.write_bytes(fake_tensorrt.PLAN_MAGIC + json.dumps(body).encode())
    manifest = read_manifest(folder)
    with pytest.raises(ExportError, match=r"does not match ONNX Runtime: .*relative error .* > 0\.001"):
        verify_engines(folder, entry, folder, manifest, io_specs(manifest.config, *SIZE), "cpu")


def test_fake_int8_engine_runs_integer_gemms_not_the_graph_as_written(tmp_path):
    """DQ -> MatMul becomes an int8 GEMM rescaled once: it differs from ONNX Runtime's fp16 dequantise-then-multiply."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.integers(-127, 128, (64, 8)).astype(np.int8), "w")
    sw = numpy_helper.from_array(np.full(8, 0.0137, np.float16), "sw")
    sx = numpy_helper.from_array(np.array(2**-5, np.float16), "sx")  # x on its grid: quantisation is exact
    zx = numpy_helper.from_array(np.array(0, np.int8), "zx")
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node("QuantizeLinear", ["xh", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw"], ["wd"], axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["yh"]),
             helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)]  # fmt: skip
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], [w, sw, sx, zx])  # fmt: skip
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), path)
    xq = rng.integers(-127, 128, (4, 64))
    x = (xq * 2.0**-5).astype(np.float32)
    run = {m: onnxruntime.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for m in (str(path), fake_tensorrt._engine_model(str(path), tf32=True))}  # fmt: skip
    written, engine = run.values()
    exact = (xq @ numpy_helper.to_array(w).astype(np.float64)) * 2.0**-5 * float(np.float16(0.0137))
    assert np.all(np.abs(engine - exact) <= np.abs(exact) * 2**-11)  # one fp16 rounding of the exact int8 product
    assert np.abs(engine - written).max() > 0  # and not the graph as ONNX Runtime runs it
