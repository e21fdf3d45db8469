"""An output path with '..' after a folder's name (`o/sub/../x.npz`) is refused before anything is made: read by name
it drops `sub`, the file system goes through it (a folder to make, a link to follow). Leading '..' parts are plain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.ownership import check_output_name
from tests.test_hostile import one_line, run

PART = st.sampled_from(["a", "sub", "..", ".", "x y", "é"])


@settings(max_examples=200, deadline=None)
@given(st.lists(PART, min_size=1, max_size=6), st.booleans())
def test_a_dotdot_after_a_name_is_refused_and_leading_ones_are_plain(tmp_path_factory, parts: list[str], absolute: bool) -> None:
    path = Path(*parts, "x.npz")
    if absolute:
        path = tmp_path_factory.getbasetemp() / path
    if os.path.normpath(path) != str(path):  # Path has dropped '.' parts: what is left to fold is a 'name/..'
        assert ".." in path.parts
        with pytest.raises(UsageError, match="goes into a folder and back out"):
            check_output_name(path)
    else:
        check_output_name(path)


@pytest.mark.parametrize("option", ["--out", "--png-dir"])
def test_dip_sample_makes_no_folder_for_a_path_that_goes_back_out(tmp_path: Path, monkeypatch, no_sampling, option: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").mkdir()
    args = ["--out", "o/./sub/../x.npz"] if option == "--out" else ["--out", "x.npz", "--png-dir", "o/sub/../pics"]
    code, err = run(cli.sample_main, "--num-samples", "1", "--steps", "1", *args)
    one_line(code, err, 2, "goes into a folder and back out")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["o"]


def test_dip_export_refuses_an_output_folder_that_goes_back_out(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.export_main, "onnx", "--output-dir", "a/b/../c", "--image-size", "32")
    one_line(code, err, 2, "goes into a folder and back out")
    assert list(tmp_path.iterdir()) == []
