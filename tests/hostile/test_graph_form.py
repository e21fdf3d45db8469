"""A graph holds its weights only as initializers, and its nodes only number and text attributes, as the exporter
writes them. A sparse initializer (ONNX Runtime densifies it: a few bytes may become gigabytes, and its external
data would sit outside the weights' checks and the export's content identity), a tensor- or graph-valued
attribute, a model-local function or training info is refused by the export reader, before ONNX Runtime sees it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dip_export import DiPPipeline
from dip_export.errors import ExportError
from dip_export.export.manifest import read_manifest
from dip_export.untrusted import graph_files
from tests.test_hostile import one_line, sample


def _sparse(model: onnx.ModelProto, folder: Path) -> None:
    """A weight moved into a sparse initializer whose values are external data in the folder (the form that was
    outside the identity), plus one that declares 475 million elements in a few bytes."""
    graph = model.graph
    weight = graph.initializer[-1]
    values = numpy_helper.to_array(weight).astype(np.float32).ravel()
    (folder / "w.bin").write_bytes(values.tobytes())
    graph.initializer.remove(weight)
    stored = helper.make_tensor(weight.name, TensorProto.FLOAT, [values.size], [0.0] * values.size)
    stored.ClearField("float_data")
    stored.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(values.nbytes))):
        entry = stored.external_data.add()
        entry.key, entry.value = key, value
    indices = numpy_helper.from_array(np.arange(values.size, dtype=np.int64), weight.name + "_i")
    graph.sparse_initializer.append(helper.make_sparse_tensor(stored, indices, list(weight.dims) or [values.size]))
    huge = helper.make_tensor("huge", TensorProto.FLOAT, [1], [1.0])
    graph.sparse_initializer.append(helper.make_sparse_tensor(huge, numpy_helper.from_array(np.zeros(1, np.int64), "hi"),
                                                              [475_000_000]))  # fmt: skip


def _tensor_attribute(model: onnx.ModelProto, folder: Path) -> None:
    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute("extra", numpy_helper.from_array(np.zeros((4,), np.float32))))


def _graph_attribute(model: onnx.ModelProto, folder: Path) -> None:
    node = model.graph.node[-1]
    node.attribute.append(helper.make_attribute("body", helper.make_graph([], "g", [], [])))


def _function(model: onnx.ModelProto, folder: Path) -> None:
    model.functions.append(helper.make_function("", "Add", ["a", "b"], ["c"], [helper.make_node("Sub", ["a", "b"], ["c"])],
                                                [helper.make_opsetid("", 17)]))  # fmt: skip


EDITS: dict[str, Callable[[onnx.ModelProto, Path], None]] = {
    "sparse initializer": _sparse, "tensor attribute": _tensor_attribute, "graph attribute": _graph_attribute,
    "local function": _function,
}  # fmt: skip


def _edit(export: Path, name: str, edit: Callable[[onnx.ModelProto, Path], None], listed: bool) -> None:
    """Edit the detailer; `listed`: the manifest's contents take the new files (as a hand-edited manifest would),
    else the manifest is kept as the export wrote it (its list no longer the files': the form is refused first)."""
    path = export / "detailer.onnx"
    model = onnx.load(str(path))
    edit(model, export)
    onnx.save_model(model, str(path))
    manifest = json.loads((export / "manifest.json").read_text())
    if listed:
        for file in sorted({path, *export.glob("w.bin")}):
            data = file.read_bytes()
            manifest["contents"][file.name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (export / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("listed", [True, False])
@pytest.mark.parametrize("name", sorted(EDITS))
def test_a_graph_of_another_form_is_refused_on_every_surface(export: Path, no_sampling, name: str, listed: bool) -> None:
    _edit(export, name, EDITS[name], listed)
    with pytest.raises(ExportError, match="which the exporter never writes; refusing to run it"):
        read_manifest(export)
    with pytest.raises(ExportError, match="which the exporter never writes"):
        DiPPipeline.load(export)
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", export.parent / "o.npz")
    one_line(code, err, 1, "detailer.onnx", "which the exporter never writes")
    assert not (export.parent / "o.npz").exists()


def test_a_sparse_initializers_external_data_is_part_of_the_identity(export: Path) -> None:
    _edit(export, "sparse initializer", _sparse, listed=True)
    assert export / "w.bin" in graph_files(export, ["backbone.onnx", "detailer.onnx"])
