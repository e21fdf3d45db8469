"""What an export's graphs compute is checked by the export reader before ONNX Runtime sees them.

Every node is an operator the exporter writes (EXPORTER_OPS, kept true by exporting here); every tensor a node
computes has a size ONNX shape inference derives from the graph alone (batch at SIZING_BATCH), none larger than
the memory budget or than a few times what the exporter's graphs of the config compute; a graph the manifest
records is still the file it records (size, sha256).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from dip_export import DiPPipeline
from dip_export.config import DiPConfig
from dip_export.errors import ExportError
from dip_export.export.manifest import ENVELOPE_SLACK, EXPORTER_OPS, SIZING_BATCH, exporter_envelope, read_manifest
from dip_export.export.onnx_export import export_onnx
from tests.test_hostile import SIZE, one_line, sample

SECRET = "SECRETNAME"  # a node / tensor name from the file: never in a message
H, W = SIZE


def _edit_detailer(export: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], record: bool) -> None:
    """Route the detailer's output `v` through `nodes` (which end in `SECRET` + "_v"); `record`: the manifest's
    contents take the new file's size and sha256 (as a hand-edited manifest would)."""
    path = export / "detailer.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = [SECRET + "_raw" if name == "v" else name for name in node.output]
    graph.node.extend([*nodes, helper.make_node("Add", [SECRET + "_raw", SECRET + "_v"], ["v"])])
    graph.initializer.extend(inits)
    onnx.save_model(model, str(path))
    if record:
        manifest = json.loads((export / "manifest.json").read_text())
        data = path.read_bytes()
        manifest["contents"]["detailer.onnx"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (export / "manifest.json").write_text(json.dumps(manifest))


def _const(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _spread(stride: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Only exporter operators: a ConvTranspose of `x` with a 1x1 kernel and `stride` (a tensor of
    (B, 3, (H-1)*stride+1, (W-1)*stride+1) floats), sliced back to (B, 3, H, W) and multiplied by 0."""
    weight = numpy_helper.from_array(np.ones((3, 3, 1, 1), dtype=np.float32), SECRET + "_w")
    zero = numpy_helper.from_array(np.zeros((1,), dtype=np.float32), SECRET + "_zero")
    nodes = [
        helper.make_node("ConvTranspose", ["x", SECRET + "_w"], [SECRET + "_big"], strides=[stride, stride]),
        helper.make_node("Slice", [SECRET + "_big", SECRET + "_s0", SECRET + "_s1", SECRET + "_ax", SECRET + "_st"],
                         [SECRET + "_small"]),
        helper.make_node("Mul", [SECRET + "_small", SECRET + "_zero"], [SECRET + "_v"]),
    ]  # fmt: skip
    inits = [weight, zero, _const(SECRET + "_s0", [0, 0]), _const(SECRET + "_s1", [H * stride, W * stride]),
             _const(SECRET + "_ax", [2, 3]), _const(SECRET + "_st", [stride, stride])]  # fmt: skip
    return nodes, inits


def _spread_bytes(stride: int) -> int:
    return SIZING_BATCH * 3 * ((H - 1) * stride + 1) * ((W - 1) * stride + 1) * 4


FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _envelope(export: Path) -> int:
    """What the exporter's detailer may compute, by the reader's rule: its config's envelope, or a weight."""
    manifest = json.loads((export / "manifest.json").read_text())
    config = DiPConfig.from_dict(manifest["config"])
    graph = onnx.load(str(export / "detailer.onnx"), load_external_data=False).graph
    weight = max(int(np.prod(t.dims)) for t in graph.initializer)
    return ENVELOPE_SLACK * max(exporter_envelope(config, SIZE), 4 * weight)


@FAST
@given(stride=st.integers(1, 60) | st.integers(60, 3000), limit_mib=st.sampled_from([64, 512, 4096]))
def test_a_tensor_is_refused_exactly_when_it_exceeds_the_budget_or_the_exporters_envelope(
    tmp_path: Path, pristine: Path, monkeypatch: pytest.MonkeyPatch, stride: int, limit_mib: int
) -> None:
    shutil.rmtree(tmp_path / "e", ignore_errors=True)  # the folder of an earlier example
    export = Path(shutil.copytree(pristine, tmp_path / "e"))
    _edit_detailer(export, *_spread(stride), record=True)
    monkeypatch.setenv("DIP_MEMORY_LIMIT", f"{limit_mib}M")
    over_budget, over_envelope = _spread_bytes(stride) > limit_mib << 20, _spread_bytes(stride) > _envelope(export)
    if over_budget or over_envelope:
        what = "the memory budget" if over_budget else "the largest the exporter's graphs of this config compute"
        with pytest.raises(ExportError, match=rf"the graph computes a tensor of .* more than .*{what}") as err:
            read_manifest(export)
        assert SECRET not in str(err.value) and len(str(err.value).splitlines()) == 1
    else:
        read_manifest(export)  # every check passes: the edit is small and recorded


def test_the_reported_graph_is_refused_on_the_command_line_and_in_the_api(export: Path, no_sampling) -> None:
    """ConstantOfShape -> ReduceSum -> Mul 0 -> Add onto `v`: 2.4 GB computed by 4 nodes of a few bytes."""
    nodes = [
        helper.make_node("ConstantOfShape", [SECRET + "_n"], [SECRET + "_big"],
                         value=helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", [SECRET + "_big"], [SECRET + "_sum"], keepdims=0),
        helper.make_node("Mul", [SECRET + "_sum", SECRET + "_zero"], [SECRET + "_v"]),
    ]  # fmt: skip
    inits = [_const(SECRET + "_n", [600_000_000]), numpy_helper.from_array(np.zeros((1,), np.float32), SECRET + "_zero")]
    _edit_detailer(export, nodes, inits, record=True)
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", export.parent / "o.npz")
    one_line(code, err, 1, "detailer.onnx", "operator(s) the exporter never writes", "ConstantOfShape")
    assert SECRET not in err
    with pytest.raises(ExportError, match="the exporter never writes"):
        DiPPipeline.load(export)
    assert not (export.parent / "o.npz").exists()


def test_a_size_that_depends_on_data_is_refused(export: Path, no_sampling) -> None:
    """Exporter operators only, but the Reshape target comes from the input's values: its size is unknown."""
    nodes = [
        helper.make_node("Reshape", ["x", SECRET + "_flat"], [SECRET + "_f"]),
        helper.make_node("Slice", [SECRET + "_f", SECRET + "_a", SECRET + "_b"], [SECRET + "_four"]),
        helper.make_node("Cast", [SECRET + "_four"], [SECRET + "_shape"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["tokens", SECRET + "_shape"], [SECRET + "_odd"]),
        helper.make_node("ReduceMean", [SECRET + "_odd"], [SECRET + "_m"], keepdims=0),
        helper.make_node("Mul", [SECRET + "_m", SECRET + "_zero"], [SECRET + "_v"]),
    ]  # fmt: skip
    inits = [_const(SECRET + "_flat", [-1]), _const(SECRET + "_a", [0]), _const(SECRET + "_b", [4]),
             numpy_helper.from_array(np.zeros((1,), np.float32), SECRET + "_zero")]  # fmt: skip
    _edit_detailer(export, nodes, inits, record=True)
    with pytest.raises(ExportError, match=r"node #\d+ \(Reshape\) computes a tensor whose size depends on data") as err:
        read_manifest(export)
    assert SECRET not in str(err.value)
    code, stderr = sample(export, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", export.parent / "o.npz")
    one_line(code, stderr, 1, "depends on data")


def test_an_edited_graph_the_manifest_records_is_changed_since_export(export: Path, no_sampling) -> None:
    """A small, harmless edit of exporter operators: only the recorded sha256 tells it from the export."""
    _edit_detailer(export, *_spread(1), record=False)
    with pytest.raises(ExportError, match=r"detailer.onnx: changed since export"):
        read_manifest(export)
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", export.parent / "o.npz")
    one_line(code, err, 1, "changed since export")


def test_the_exporter_writes_only_the_listed_operators(tmp_path: Path, loaded, pristine: Path) -> None:
    """Fresh exports of the tiny model (fp32: the shared fixture; fp16, whose Casts are bf16's too) use only
    EXPORTER_OPS and read back; int8 adds QuantizeLinear / DequantizeLinear (tests/test_quantize.py reads its
    exports back through the same check)."""
    fp16 = export_onnx(loaded, precision="fp16", image_size=SIZE, output_dir=tmp_path / "fp16")
    for folder in (pristine, fp16):
        for name in ("backbone.onnx", "detailer.onnx"):
            graph = onnx.load(str(folder / name), load_external_data=False).graph
            assert {node.op_type for node in graph.node} <= EXPORTER_OPS, (folder, name)
            assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
        read_manifest(folder)
