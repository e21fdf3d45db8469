"""Messages name a model as it was typed: `org//x.pt/` is shown as given, not as the normalised `org/x.pt`.

The rewrite (`as_typed`) is property-tested; two surfaces (dip-sample, DiPPipeline.load) and the export command
are run with names that pathlib would normalise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from dip_export import DiPPipeline
from dip_export.checkpoint import as_typed
from dip_export.cli import export_app, sample_app
from dip_export.errors import CheckpointError, DipError, MissingDependencyError, UsageError

PART = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True).filter(lambda p: p not in (".", ".."))
REST = st.sampled_from([": no such checkpoint file", " is not an export folder", ""])


@given(st.lists(PART, min_size=1, max_size=4), st.lists(st.sampled_from(["/", "//", "/./"]), min_size=3, max_size=3),
       st.booleans(), REST, st.sampled_from([CheckpointError, UsageError, DipError]))  # fmt: skip
def test_a_normalised_name_at_the_start_is_given_back_as_typed(parts, seps, trailing, rest, kind):
    typed = parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=False)) + ("/" if trailing else "")
    shown = str(Path(typed))
    err = as_typed(kind(shown + rest), shown, typed)
    assert type(err) is kind and str(err) == typed + rest


@given(PART, PART)
def test_only_a_whole_leading_name_is_replaced(a, b):
    shown, typed = f"{a}/{b}", f"{a}//{b}"
    for text in (f"{a}/{b}x: other file", f"the file {a}/{b}: gone", f"{a}/{b}"[:-1] + ": cut"):
        assert str(as_typed(UsageError(text), shown, typed)) == text  # another name, or the name not at the start
    err = as_typed(MissingDependencyError("onnx", "pip", f"{shown}: needs onnx"), shown, typed)
    assert str(err) == f"{typed}: needs onnx" and err.package == "onnx"  # the error's own fields are kept


@pytest.mark.parametrize("name", ["org//name.pt", "org/name.pt/", "./org//x.pt", "org/./x.safetensors"])
def test_the_cli_and_the_api_name_a_missing_file_as_typed(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    result = CliRunner().invoke(sample_app, [name, "--num-samples", "1", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code != 0 and result.output.strip().splitlines()[-1] == f"error: {name}: no such checkpoint file"
    result = CliRunner().invoke(export_app, ["onnx", name])
    assert result.exit_code != 0 and result.output.strip().splitlines()[-1] == f"error: {name}: no such checkpoint file"
    with pytest.raises(CheckpointError) as caught:
        DiPPipeline.load(name)
    assert str(caught.value) == f"{name}: no such checkpoint file"


def test_a_file_that_is_no_checkpoint_is_named_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "bad.pt").write_text("x")
    with pytest.raises(CheckpointError) as caught:
        DiPPipeline.load("org//bad.pt")
    assert str(caught.value).startswith("org//bad.pt: ")
