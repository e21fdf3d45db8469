"""A model's name names the tool's folders and is printed as it is: one rule (`naming.model_name_problem`) takes it
wherever it comes from, a checkpoint's file name (before the file is read), a model made by a caller, or a
manifest's `name`, so no folder or line of the tool carries a character that is not seen as itself."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.checkpoint import LoadedModel, load_checkpoint
from dip_export.config import DiPConfig
from dip_export.errors import CheckpointError, UsageError
from dip_export.export.naming import export_folder_name, is_export_folder_name, model_name_problem
from dip_export.model import DiP
from tests.test_hostile import one_line, run

UNSEEN = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=240))
def test_a_name_taken_is_one_printable_part_of_a_folder_name(name: str) -> None:
    problem = model_name_problem(name)
    unseen = any(unicodedata.category(c) in UNSEEN for c in name)
    if unseen or "/" in name or name in ("", ".", "..") or len(name) > 200:
        assert problem and "\n" not in problem and len(problem) < 200
        return
    if problem:  # taken text refused only for a mark with no letter under it
        assert "not printed as itself" in problem, problem
        return
    folder = export_folder_name(name, (32, 64), "fp32")
    assert Path(folder).name == folder and is_export_folder_name(folder)


@pytest.mark.parametrize("name", ["dip\x1b]0;x\x07", "a\nb", "x\u202ey", "\u0301acute", "", "..", "a/b", "n" * 201])
def test_a_model_made_by_a_caller_with_such_a_name_is_refused(name: str) -> None:
    config = DiPConfig(image_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=4)
    LoadedModel(DiP(config), config, name="plain-name", source="mine")  # taken
    with pytest.raises(UsageError, match="the model's name") as caught:
        LoadedModel(DiP(config), config, name=name, source="mine")
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)


@pytest.mark.parametrize("stem", ["dip\x1b[2Jx", "new\nline", "rtl\u202eckpt", "zw\u200bsp"])
def test_a_checkpoint_whose_name_cannot_name_a_model_is_refused_before_it_is_read(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch, stem: str
) -> None:
    path = tmp_path / f"{stem}.ckpt"
    shutil.copy(ckpt, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("read a checkpoint whose name is refused"))
    with pytest.raises(CheckpointError, match="rename the file") as caught:
        load_checkpoint(path)
    assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, path, "--num-samples", "1", "--steps", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "rename the file")
    code, err = run(cli.export_main, "onnx", path, "--image-size", "32")
    one_line(code, err, 1, "rename the file")
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "engines").exists()


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("name", "../../evil", "one part of a folder name"), ("name", 5, "must be a string"),
     ("name", "a\x1bb", "not printed as itself"), ("sampling", {"steps": 10**9}, "sampling defaults are refused"),
     ("sampling", [], "must be a dict"), ("weights", "bogus", "weights must be one of")],
)  # fmt: skip
def test_a_field_that_names_folders_is_checked_when_set_later_too(tmp_path: Path, monkeypatch, loaded, field, value, words):
    """A caller's later change is checked as the creation's: an export never lands outside engines/ or is written
    with what the tool's reader refuses."""
    from dip_export.export.onnx_export import ensure_export

    monkeypatch.chdir(tmp_path)
    before = getattr(loaded, field)
    with pytest.raises(UsageError, match=words):
        setattr(loaded, field, value)
    assert getattr(loaded, field) == before
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("traced"))
    with pytest.raises(pytest.fail.Exception):  # the model as it was: its export would go ahead
        ensure_export(loaded, precision="fp32", image_size=(32, 64))
    assert sorted(p.name for p in tmp_path.parent.iterdir() if "evil" in p.name) == []


@pytest.mark.parametrize(
    ("field", "value"), [("model", None), ("config", {}), ("source", 5), ("size_assumed", "no"), ("stamp", "x")]
)
def test_every_other_field_keeps_its_type(loaded, field, value) -> None:
    before = getattr(loaded, field)
    with pytest.raises(UsageError, match=f"a model's {field} must be a"):
        setattr(loaded, field, value)
    assert getattr(loaded, field) is before
