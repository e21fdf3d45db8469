"""A path read from a file the tool did not write (a manifest's `files`, an ONNX graph's external-data `location`)
may hold a name no file system takes: a NUL or control character, text that does not encode, a name or path
too long. `untrusted.contained`, the one check of every path inside a folder, refuses it in one line naming the
file that held it, before anything is looked up: the same on the CLI (dip-sample) and the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.errors import ExportError
from dip_export.export.manifest import _external_problem
from dip_export.untrusted import MAX_NAME_BYTES, UntrustedFileError, contained, graph_files, name_problem
from tests.test_hostile import one_line, sample, tamper

CONTROL = st.characters(max_codepoint=31) | st.just("\x7f")
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), max_size=20)
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF).filter(lambda c: not 0xDC80 <= ord(c) <= 0xDCFF)


@st.composite
def bad_names(draw: st.DrawFn) -> str:
    """A relative path with one thing in it the file system cannot take."""
    before, after = draw(TEXT), draw(TEXT)
    kind = draw(st.sampled_from(["control", "surrogate", "long name", "long path"]))
    if kind == "control":
        return before + draw(CONTROL) + after
    if kind == "surrogate":
        return before + draw(SURROGATE) + after
    if kind == "long name":
        return before + "x" * (MAX_NAME_BYTES + 1 + draw(st.integers(0, 300))) + after
    return "/".join(["d" * 200] * draw(st.integers(21, 30)))  # every name fits, the whole path does not


def _no_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    def looked_up(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file system was asked about a name it cannot take")

    for method in ("is_symlink", "resolve", "stat", "lstat", "exists", "is_file"):
        monkeypatch.setattr(Path, method, looked_up)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=bad_names())
def test_a_name_the_file_system_cannot_take_is_refused_before_any_lookup(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "manifest.json"
    with monkeypatch.context() as patched:
        _no_lookups(patched)
        with pytest.raises(UntrustedFileError) as raised:
            contained(tmp_path, name, "backbone file", source=source)
    text = str(raised.value)
    assert text.startswith(f"{source}: ") and "not a valid file name" in text
    assert len(text.splitlines()) == 1
    assert name not in text and (len(after := name.strip("x")) < 3 or after not in text)


@settings(max_examples=150, deadline=None)
@given(name=TEXT.filter(lambda n: n not in ("", ".", "..")))
def test_every_name_a_file_system_takes_passes_the_name_check(name: str) -> None:
    assert name_problem(name) is None
    assert name_problem(f"sub/{name}") is None


def test_the_folder_is_named_when_no_file_is(tmp_path: Path) -> None:
    with pytest.raises(UntrustedFileError, match=rf"^{tmp_path}: the graph path it names is not a valid file name"):
        contained(tmp_path, "a\x00b", "graph")


NO_TEXT = ("a text in it holds a NUL character or a lone surrogate",)  # refused as JSON, before any name is used
NO_NAME = ("backbone file path", "not a valid file name")


@pytest.mark.parametrize(
    ("name", "words"),
    [("back\x00bone.onnx", NO_TEXT), ("back\nbone.onnx", NO_NAME), ("x" * 300 + ".onnx", NO_NAME), ("\ud800.onnx", NO_TEXT)],
)
def test_a_manifest_naming_an_impossible_file_is_one_line_on_every_surface(
    tmp_path: Path, export: Path, no_sampling, name: str, words: tuple[str, ...]
) -> None:
    tamper(export, files__backbone=name)
    json.loads((export / "manifest.json").read_text())  # still valid JSON: only the name is wrong
    code, err = sample(export, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, f"{export / 'manifest.json'}", *words)
    assert "Traceback" not in err and "bone.onnx" not in err
    with pytest.raises(ExportError, match=words[-1]):
        DiPPipeline.load(export, device="cpu")
    assert not (tmp_path / "o.npz").exists()


def _external_location(export: Path, location: str) -> None:
    """The backbone's weights moved to external data, the first external tensor's location set to `location`."""
    graph = export / "backbone.onnx"
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, location="backbone.onnx.data")
    model = onnx.load(str(graph), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, str(graph))


@pytest.mark.parametrize("location", ["w\x00.bin", "w\x1b.bin", "y" * 256])
def test_external_data_at_an_impossible_name_is_one_line(tmp_path: Path, export: Path, no_sampling, location: str) -> None:
    _external_location(export, location)
    graph = onnx.load(str(export / "backbone.onnx"), load_external_data=False).graph
    problem, _ = _external_problem(graph, export)
    assert problem.endswith("is named by a path that is not a valid file name; refusing to follow it"), problem
    with pytest.raises(UntrustedFileError, match=rf"^{export / 'backbone.onnx'}: the external data path it names"):
        graph_files(export, ["backbone.onnx"])
    code, err = sample(export, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "backbone.onnx", "not a valid file name")
    assert "Traceback" not in err and location not in err
    with pytest.raises(ExportError, match="not a valid file name"):
        DiPPipeline.load(export, device="cpu")
