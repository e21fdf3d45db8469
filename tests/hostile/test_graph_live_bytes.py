"""A graph may compute no tensor past the exporter's envelope, and may keep no more bytes alive at once than a small
multiple of it (`manifest._live_peak`, checked with every graph before ONNX Runtime sees it): thousands of tensors,
each small enough, held together had taken a run to GBs past its memory estimate and DIP_MEMORY_LIMIT.

The peak is checked against a step-by-step simulation on random graphs, then through dip-sample and the API."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from dip_export import DiPPipeline
from dip_export.errors import ExportError
from dip_export.export.manifest import _live_peak
from tests.test_hostile import one_line, sample


@st.composite
def graphs(draw):
    """Random topologically ordered graphs: each node reads up to three earlier tensors (or the input)."""
    count = draw(st.integers(1, 30))
    nodes, sizes = [], {}
    for i in range(count):
        earlier = [f"t{j}" for j in range(i)] or ["x"]
        reads = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=3))
        nodes.append(helper.make_node("Sum", reads, [f"t{i}"]))
        sizes[f"t{i}"] = draw(st.integers(0, 1000))
    outputs = draw(st.lists(st.sampled_from(sorted(sizes)), min_size=1, max_size=2, unique=True))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, [1]) for o in outputs])  # fmt: skip
    return graph, sizes


def _simulated(graph, sizes) -> int:
    """Reference counts: a tensor is freed once every reader has run, unless it is a graph output."""
    readers = {name: sum(list(n.input).count(name) > 0 for n in graph.node) for name in sizes}
    outputs = {o.name for o in graph.output}
    alive, peak = {}, 0
    for node in graph.node:
        for name in node.output:
            alive[name] = sizes[name]
        peak = max(peak, sum(alive.values()))
        for name in set(node.input):
            if name in readers:
                readers[name] -= 1
                if readers[name] == 0 and name not in outputs:
                    alive.pop(name, None)
        for name in node.output:
            if readers[name] == 0 and name not in outputs:
                alive.pop(name, None)
    return peak


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_the_live_peak_is_the_simulated_one(case):
    graph, sizes = case
    assert _live_peak(graph, sizes) == _simulated(graph, sizes)


def _fan_out(export: Path, count: int) -> None:
    """`count` copies of a widened input, each read again at the end: all alive together."""
    model = onnx.load(str(export / "backbone.onnx"))
    graph = model.graph
    x, out = graph.input[0].name, graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = out + "_pre"
    nodes = [helper.make_node("Concat", [x] * 8, ["fo_wide"], axis=1)]
    parts = []
    for i in range(count):
        graph.initializer.append(numpy_helper.from_array(np.array(1.0 + i, np.float32), f"fo_k{i}"))
        nodes.append(helper.make_node("Mul", ["fo_wide", f"fo_k{i}"], [f"fo_m{i}"]))
        parts.append(f"fo_m{i}")
    total = parts[-1]
    for i in range(count - 2, -1, -1):  # the newest first: the first copy is read last, so all are alive together
        nodes.append(helper.make_node("Add", [total, parts[i]], [f"fo_s{i}"]))
        total = f"fo_s{i}"
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "fo_zero"))
    nodes += [helper.make_node("ReduceMean", [total], ["fo_mean"], keepdims=0),
              helper.make_node("Mul", ["fo_mean", "fo_zero"], ["fo_z"]),
              helper.make_node("Add", [out + "_pre", "fo_z"], [out])]  # fmt: skip
    graph.node.extend(nodes)
    onnx.save(model, str(export / "backbone.onnx"))
    manifest = json.loads((export / "manifest.json").read_text())
    graph_bytes = (export / "backbone.onnx").read_bytes()  # listed as written, so only the graph's form is judged
    manifest["contents"]["backbone.onnx"] = {"size": len(graph_bytes), "sha256": hashlib.sha256(graph_bytes).hexdigest()}
    (export / "manifest.json").write_text(json.dumps(manifest))


def test_many_small_tensors_alive_together_are_refused_before_any_run(tmp_path, export, no_sampling):
    _fan_out(export, 200)
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", out)
    one_line(code, err, 1, "keeps", "alive at once", "backbone.onnx")
    with pytest.raises(ExportError, match="alive at once"):
        DiPPipeline.load(export, device="cpu")
    assert not out.exists()


def test_a_few_extra_tensors_within_the_envelope_still_run(tmp_path, export):
    _fan_out(export, 1)
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", out)
    assert code == 0, err


def _squared(export: Path) -> None:
    """A tensor of (batch x 16) x (batch x 16): small at the sizing batch, the batch's square at a run's."""
    model = onnx.load(str(export / "backbone.onnx"))
    graph = model.graph
    x, out = graph.input[0].name, graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = out + "_pre"
    graph.initializer.extend([numpy_helper.from_array(np.array([-1, 16], np.int64), "sq_shape"),
                              numpy_helper.from_array(np.array(0.0, np.float32), "sq_zero")])  # fmt: skip
    graph.node.extend([
        helper.make_node("Slice", [x, "sq_s", "sq_e", "sq_a"], ["sq_part"]),
        helper.make_node("Reshape", ["sq_part", "sq_shape"], ["sq_q"]),
        helper.make_node("Transpose", ["sq_q"], ["sq_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["sq_q", "sq_t"], ["sq_square"]),
        helper.make_node("ReduceMean", ["sq_square"], ["sq_mean"], keepdims=0),
        helper.make_node("Mul", ["sq_mean", "sq_zero"], ["sq_z"]),
        helper.make_node("Add", [out + "_pre", "sq_z"], [out]),
    ])  # fmt: skip
    graph.initializer.extend([numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "sq_s"),
                              numpy_helper.from_array(np.array([2**62, 1, 4, 4], np.int64), "sq_e"),
                              numpy_helper.from_array(np.array([0, 1, 2, 3], np.int64), "sq_a")])  # fmt: skip
    onnx.save(model, str(export / "backbone.onnx"))
    manifest = json.loads((export / "manifest.json").read_text())
    graph_bytes = (export / "backbone.onnx").read_bytes()  # listed as written, so only the graph's form is judged
    manifest["contents"]["backbone.onnx"] = {"size": len(graph_bytes), "sha256": hashlib.sha256(graph_bytes).hexdigest()}
    (export / "manifest.json").write_text(json.dumps(manifest))


def test_a_tensor_growing_faster_than_the_batch_is_refused(tmp_path, export, no_sampling):
    _squared(export)
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "grows faster than the batch", "backbone.onnx")
    with pytest.raises(ExportError, match="grows faster than the batch"):
        DiPPipeline.load(export, device="cpu")
