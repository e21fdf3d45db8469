"""External data is checked by the export reader before ONNX Runtime sees a graph (every tensor's offset and length
against the file's size), and what ONNX Runtime still refuses is said in the tool's words: no names from the file."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from dip_export import DiPPipeline
from dip_export.errors import ExportError
from dip_export.export.manifest import _external_problem, _tensor_bytes
from dip_export.runtime.ort_engine import make_session
from tests.test_hostile import one_line, sample

SECRET = "model.t_embedder.mlp.0.weightSECRET"
FILE_BYTES = 64
ODD = ["1000000000000", "-1", "1e12", "", "0x10", "9" * 30]  # what a hand-edited graph may declare
DIGITS = st.one_of(st.integers(0, 2 * FILE_BYTES).map(str), st.sampled_from(ODD))


def _graph(folder: Path, entries: dict[str, str], dims: tuple[int, ...] = (4,)) -> onnx.GraphProto:
    """A graph of one float initializer (named after the report) whose data lies in `w.bin` (FILE_BYTES bytes)."""
    (folder / "w.bin").write_bytes(bytes(FILE_BYTES))
    tensor = TensorProto(name=SECRET, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", **entries}.items():
        tensor.external_data.add(key=key, value=value)
    return helper.make_graph([], "g", [], [], initializer=[tensor])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.none() | DIGITS, length=st.none() | DIGITS, elements=st.integers(0, 20))
def test_offset_and_length_must_fit_in_the_file(tmp_path: Path, offset: str | None, length: str | None, elements: int) -> None:
    entries = {k: v for k, v in (("offset", offset), ("length", length)) if v is not None}
    problem, _ = _external_problem(_graph(tmp_path, entries, (elements,)), tmp_path)
    numbers = [int(v) if v.isdigit() and len(v) < 20 else None for v in ("0" if v is None else v for v in (offset, length))]
    fits = None not in numbers and numbers[0] + max(numbers[1], 4 * elements) <= FILE_BYTES  # type: ignore[operator]
    exact = length is None or numbers[1] == 4 * elements  # a length given is the tensor's bytes
    assert (problem == "") == (fits and exact), problem
    assert SECRET not in problem and len(problem.splitlines()) <= 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spans=st.lists(st.tuples(st.integers(0, 15), st.integers(1, 4)), min_size=1, max_size=4))
def test_two_tensors_sharing_bytes_of_one_file_are_refused(tmp_path: Path, spans: list[tuple[int, int]]) -> None:
    """Tensors of `elements` floats at `offset` (in floats) in one 64-byte file: taken exactly when no two share a byte."""
    graph = _graph(tmp_path, {})
    del graph.initializer[:]
    for number, (offset, elements) in enumerate(spans):
        tensor = TensorProto(name=f"w{number}", data_type=TensorProto.FLOAT, dims=(elements,))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in {"location": "w.bin", "offset": str(4 * offset), "length": str(4 * elements)}.items():
            tensor.external_data.add(key=key, value=value)
        graph.initializer.append(tensor)
    problem, _ = _external_problem(graph, tmp_path)
    used = [set(range(o, o + n)) for o, n in spans]
    fits = all(4 * (o + n) <= FILE_BYTES for o, n in spans)
    apart = all(not (a & b) for i, a in enumerate(used) for b in used[i + 1 :])
    assert (problem == "") == (fits and apart), problem
    if fits and not apart:
        assert "overlap in one file" in problem


def _external(export: Path, length: str) -> None:
    """The backbone's weights moved to external data, the first external tensor's length set to `length`."""
    model = onnx.load(str(export / "backbone.onnx"))
    onnx.save_model(model, str(export / "backbone.onnx"), save_as_external_data=True, location="backbone.onnx.data")
    model = onnx.load(str(export / "backbone.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    for entry in tensor.external_data:
        if entry.key == "length":
            entry.value = length
    onnx.save_model(model, str(export / "backbone.onnx"))


def test_a_huge_declared_length_is_the_tools_own_refusal(tmp_path: Path, export: Path, no_sampling) -> None:
    _external(export, str(10**12))
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", out)
    one_line(code, err, 1, "declares more bytes than backbone.onnx.data holds", "backbone.onnx")
    assert "ONNXRuntimeError" not in err and "t_embedder" not in err and not out.exists()
    with pytest.raises(ExportError, match=r"declares more bytes than backbone\.onnx\.data holds"):
        DiPPipeline.load(export, device="cpu")


def test_onnx_runtimes_own_text_never_reaches_the_message(tmp_path: Path, export: Path, no_sampling) -> None:
    """A graph ONNX Runtime refuses (an operator it does not know, named from the file): the reader refuses it
    first (not an operator the exporter writes), and a session made of it says so in the tool's words."""
    model = onnx.load(str(export / "detailer.onnx"))
    model.graph.node[0].op_type = "NoSuchOp" + SECRET
    model.graph.node[0].name = SECRET
    onnx.save_model(model, str(export / "detailer.onnx"))
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "detailer.onnx", "the exporter never writes")
    assert SECRET not in err and "ONNXRuntimeError" not in err
    with pytest.raises(ExportError) as raised:
        make_session(export / "detailer.onnx")
    assert "ONNX Runtime cannot load this graph" in str(raised.value)
    assert SECRET not in str(raised.value) and len(str(raised.value).splitlines()) == 1


def test_make_session_says_its_own_words(tmp_path: Path) -> None:
    path = tmp_path / "g.onnx"
    path.write_bytes(SECRET.encode() * 10)
    with pytest.raises(ExportError, match=r"g\.onnx: ONNX Runtime cannot load this graph \(") as raised:
        make_session(path)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize("change", ["no location", "short length"])
def test_an_external_tensor_without_its_file_or_bytes_is_the_tools_own_refusal(tmp_path: Path, export: Path, no_sampling,
                                                                                change: str) -> None:  # fmt: skip
    """Marked as external with no file named, or a length short of the tensor: one line of the tool's, naming the
    graph, before ONNX Runtime or onnx's loader sees it (they print their own log lines, or raise their own errors)."""
    _external(export, "4")
    model = onnx.load(str(export / "backbone.onnx"), load_external_data=False)
    if change == "no location":
        _external(export, str(next(_tensor_bytes(t) for t in model.graph.initializer if t.external_data)))
        model = onnx.load(str(export / "backbone.onnx"), load_external_data=False)
        tensor = next(t for t in model.graph.initializer if t.external_data)
        del tensor.external_data[:]  # data_location stays EXTERNAL
        onnx.save_model(model, str(export / "backbone.onnx"))
    words = "names no file" if change == "no location" else "bytes where the tensor has"
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", out)
    one_line(code, err, 1, words, "backbone.onnx")
    with pytest.raises(ExportError, match=words):
        DiPPipeline.load(export, device="cpu")
    assert not out.exists()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["{folder}/w.bin", "{folder}/./w.bin", "//{folder}/w.bin", "\\\\w.bin", "/w.bin"]))
def test_an_absolute_location_is_refused_even_inside_the_folder(tmp_path: Path, form: str) -> None:
    problem, _ = _external_problem(_graph(tmp_path, {"location": form.format(folder=tmp_path)}), tmp_path)
    assert "is named by an absolute path" in problem and SECRET not in problem


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["w.bin/", "./w.bin", "w.bin/.", "w.bin//", "sub/../w.bin", "sub//w.bin", ".", ""]))
def test_a_location_that_is_no_plain_relative_name_is_refused(tmp_path: Path, form: str) -> None:
    """onnx's loader refuses what `contained` would normalise (`w.bin/` is `w.bin` to the OS): a traceback then."""
    problem, _ = _external_problem(_graph(tmp_path, {"location": form}), tmp_path)
    assert problem and SECRET not in problem and len(problem.splitlines()) == 1


def test_an_absolute_location_inside_the_export_is_the_tools_own_refusal(tmp_path: Path, export: Path, no_sampling) -> None:
    """onnx's own loader raises its ValidationError on such a name (a traceback, a foreign error from the API)."""
    model = onnx.load(str(export / "backbone.onnx"))
    onnx.save_model(model, str(export / "backbone.onnx"), save_as_external_data=True, location="backbone.onnx.data",
                    size_threshold=0)  # fmt: skip
    model = onnx.load(str(export / "backbone.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str((export / "backbone.onnx.data").resolve())
    onnx.save_model(model, str(export / "backbone.onnx"))
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", out)
    one_line(code, err, 1, "is named by an absolute path", "backbone.onnx")
    with pytest.raises(ExportError, match="is named by an absolute path"):
        DiPPipeline.load(export, device="cpu")
    assert not out.exists()
