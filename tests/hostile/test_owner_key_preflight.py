"""The owner key is obtained (made or read, every check) before any work, and kept apart from the run's outputs.

`check_outputs_apart`, the pre-flight of every command, makes or reads the key: a key that cannot be made (its
parent is a file), or that is, lies inside or holds an output, is refused in one line before a model is traced,
a picture sampled or a file written; the run never makes its own obstacle at an output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import DipError, UsageError
from dip_export.export import onnx_export
from dip_export.export.onnx_export import export_onnx
from dip_export.ownership import KEY_ENV, check_outputs_apart
from tests.test_hostile import SIZE, one_line, run

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PART = st.sampled_from(["a", "b", "k"])


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an export started")

    monkeypatch.setattr(onnx_export, "export_submodel", refuse)


@FAST
@given(key=st.lists(PART, min_size=1, max_size=3), outputs=st.lists(st.lists(PART, min_size=1, max_size=3), max_size=3))
def test_the_key_is_refused_exactly_when_it_meets_an_output(tmp_path: Path, monkeypatch, key: list[str],
                                                            outputs: list[list[str]]) -> None:  # fmt: skip
    base = tmp_path / "t"
    base.mkdir(exist_ok=True)
    outs = [tuple(p) for p in outputs]
    if any(a[: len(b)] == b or b[: len(a)] == a for i, a in enumerate(outs) for b in outs[i + 1 :]):
        return  # outputs clashing among themselves: another test's business
    key_path = base.joinpath(*key)
    monkeypatch.setenv(KEY_ENV, str(key_path))
    meets = any(o[: len(key)] == tuple(key) or tuple(key)[: len(o)] == o for o in outs)
    before = sorted(p.relative_to(base).as_posix() for p in base.rglob("*"))
    pairs = [(f"output {i}", base.joinpath(*o)) for i, o in enumerate(outs)]
    if meets:
        with pytest.raises(UsageError, match=KEY_ENV) as caught:
            check_outputs_apart(pairs)
        assert "\n" not in str(caught.value)
        assert sorted(p.relative_to(base).as_posix() for p in base.rglob("*")) == before  # nothing made
    else:
        check_outputs_apart(pairs)
        assert key_path.is_file() and len(key_path.read_bytes()) == 65  # made now, before any work
        key_path.unlink()
        for parent in key_path.relative_to(base).parents:
            if parent != Path(".") and not any((base / parent).iterdir()):
                (base / parent).rmdir()


def test_a_key_whose_parent_is_a_file_is_refused_with_that_reason(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("mine")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "file" / "x.key"))
    with pytest.raises(DipError, match=r"file is not a folder") as caught:
        check_outputs_apart([("--out", tmp_path / "a.npz")])
    assert "File exists" not in str(caught.value)
    assert (tmp_path / "file").read_text() == "mine"


def test_dip_export_onnx_refuses_an_unmakeable_key_before_the_export(tmp_path: Path, monkeypatch, no_export) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "file" / "x.key"))
    code, err = run(cli.export_main, "onnx", "--output-dir", tmp_path / "exp")
    one_line(code, err, 1, "owner key", "is not a folder")
    assert not (tmp_path / "exp").exists()


def test_dip_export_onnx_refuses_the_key_at_its_output_folder(tmp_path: Path, monkeypatch, no_export) -> None:
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "exp"))
    code, err = run(cli.export_main, "onnx", "--output-dir", tmp_path / "exp")
    one_line(code, err, 2, "owner key", KEY_ENV, "--output-dir")
    assert not os.path.lexists(tmp_path / "exp")  # no key made where the export goes


def test_dip_sample_refuses_the_key_at_its_outputs_before_sampling(tmp_path: Path, monkeypatch, no_sampling) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--classes", "1", "--seeds", "0", "--steps", "1", "--out", tmp_path / "a.npz"]
    for key, words in ((tmp_path / "a.npz", ["--out"]), (tmp_path / "a.png", ["the grid"]),
                       (tmp_path / "engines" / "dip-digits-32x32-fp32" / "owner.key", ["the export folder"])):  # fmt: skip
        monkeypatch.setenv(KEY_ENV, str(key))
        code, err = run(cli.sample_main, *argv, "--backend", "onnx")
        one_line(code, err, 2, "owner key", *words)
        assert not os.path.lexists(key)
    assert not (tmp_path / "engines").exists()


def test_the_python_api_refuses_a_key_inside_the_export_folder_before_tracing(tmp_path: Path, monkeypatch, loaded,
                                                                              no_export) -> None:  # fmt: skip
    out = tmp_path / "exp"
    monkeypatch.setenv(KEY_ENV, str(out / "owner.key"))
    with pytest.raises(UsageError, match=r"owner key .* lies inside the output folder"):
        export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=out)
    assert not out.exists()


def test_a_key_that_is_not_a_key_is_refused_before_the_export(tmp_path: Path, monkeypatch, loaded, no_export) -> None:
    key = tmp_path / "owner.key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    monkeypatch.setenv(KEY_ENV, str(key))
    with pytest.raises(DipError, match=r"not an owner key"):
        export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
