"""A JSON file the tool did not write names each key of an object once (which of two values is meant is
unknowable, so neither is taken), at any depth; an export manifest's opset is in the range `--opset` takes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.errors import DipError
from dip_export.untrusted import UntrustedFileError, parse_json
from tests.test_hostile import one_line, sample

FAST = settings(max_examples=200, deadline=None, derandomize=True)
SLOW = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])

NAMEABLE = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])  # JSON texts refuse NUL and lone surrogates
keys = st.text(st.characters(codec="ascii", exclude_characters='"\\\x00'), max_size=4)  # NUL: refused (no name holds one)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-9, 9) | st.text(NAMEABLE, max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def nest(value: Any, path: list[int]) -> str:
    """`value` as JSON text, the repeated-key object placed `len(path)` levels down (in lists and objects)."""
    text = value
    for i, kind in enumerate(path):
        text = f"[{text}]" if kind else f'{{"k{i}": {text}}}'
    return text


@FAST
@given(data=values)
def test_json_without_a_repeated_key_reads_as_json_does(data: Any) -> None:
    assert parse_json(json.dumps(data), "f.json") == data


@FAST
@given(key=keys, first=values, second=values, others=st.dictionaries(keys, values, max_size=3),
       at=st.integers(0, 5), path=st.lists(st.integers(0, 1), max_size=6))  # fmt: skip
def test_an_object_naming_a_key_twice_is_refused_at_any_depth(key, first, second, others, at, path) -> None:
    members = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in others.items() if k != key]
    members[min(at, len(members)) : min(at, len(members))] = [f"{json.dumps(key)}: {json.dumps(first)}"]
    members.append(f"{json.dumps(key)}: {json.dumps(second)}")
    text = nest("{" + ", ".join(members) + "}", path)
    with pytest.raises(UntrustedFileError) as info:
        parse_json(text, "dir/f.json")
    message = str(info.value)
    assert message == "dir/f.json: not valid JSON: an object repeats a key"  # the file named, its content never shown


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    path.write_text(edit(path.read_text()))


def test_dip_sample_refuses_a_manifest_naming_a_key_twice(export: Path, no_sampling, tmp_path: Path) -> None:
    name = json.loads((export / "manifest.json").read_text())["name"]
    pair = f'"name": {json.dumps(name)}'
    _edit_manifest(export, lambda text: text.replace(pair, f'{pair}, "name": "other"', 1))
    code, err = sample(export, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "manifest.json", "repeats a key")
    assert "other" not in err
    assert not (tmp_path / "o.npz").exists()


def test_the_python_api_refuses_a_manifest_naming_a_nested_key_twice(export: Path) -> None:
    data = json.loads((export / "manifest.json").read_text())
    role, rel = next(iter(data["files"].items()))
    pair = f"{json.dumps(role)}: {json.dumps(rel)}"
    _edit_manifest(export, lambda text: text.replace(pair, f'{pair}, {json.dumps(role)}: "x.onnx"', 1))
    with pytest.raises(DipError, match=r"manifest\.json: not valid JSON: an object repeats a key"):
        DiPPipeline.load(str(export), backend="onnx")


@SLOW
@given(opset=st.one_of(st.integers(-5, 17), st.integers(21, 10**6)))
def test_a_manifest_opset_out_of_range_is_refused_on_both_surfaces(export: Path, tmp_path: Path, opset: int) -> None:
    data = json.loads((export / "manifest.json").read_text())
    data["opset"] = opset
    (export / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DipError, match=r"invalid manifest \(opset must be in 18\.\.20"):
        DiPPipeline.load(str(export), backend="onnx")
    code, err = sample(export, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "manifest.json", "opset must be in 18..20")
