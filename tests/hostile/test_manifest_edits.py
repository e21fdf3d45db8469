"""A manifest is the tool's only as written: its owner mark covers every field (not only the file list), so a manifest
edited by hand makes its folder foreign (never replaced); a manifest whose verification did not pass is refused when
read; a missing field is named as one.

`marked_fields` (what the mark covers) is property-tested over edits of every field; `dip-export onnx` over an edited
export, and dip-sample / DiPPipeline.load on a failed verification, are the surfaces.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import ExportError
from dip_export.export.manifest import manifest_error, marked_fields, ownership_problem
from tests.test_hostile import one_line, run


def _edit(folder: Path, change: Any) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


EDITS = {
    "verification.passed": lambda d: d["verification"].update(passed=False),
    "verification.worst_rel": lambda d: d["verification"].update(worst_rel=0.5),
    "config.image_size": lambda d: d["config"].update(image_size=d["config"]["image_size"] * 2),
    "name": lambda d: d.update(name=d["name"] + "x"),
    "sampling.cfg": lambda d: d["sampling"].update(cfg=2.0),
    "source.path": lambda d: d["source"].update(path="/elsewhere/model.pt"),
    "versions": lambda d: d["versions"].update(torch="0.0"),
    "extra": lambda d: d["extra"].update(export_seconds=1.0),
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(EDITS)), st.sampled_from(["marked", "other order"]))
def test_any_edit_changes_what_the_mark_covers(pristine: Path, edit: str, form: str) -> None:
    data = json.loads((pristine / "manifest.json").read_text())
    changed = json.loads(json.dumps(data))
    EDITS[edit](changed)
    assert marked_fields(changed) != marked_fields(data)
    if form == "other order":  # the file's key order and layout are no part of it
        assert marked_fields(dict(reversed(list(data.items())))) == marked_fields(data)
    assert "owner_mac" not in marked_fields(data)


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_manifest_makes_the_folder_foreign(pristine: Path, tmp_path: Path, edit: str) -> None:
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    assert ownership_problem(folder) is None
    _edit(folder, EDITS[edit])
    assert "no valid mark" in (ownership_problem(folder) or "") or "did not match PyTorch" in (ownership_problem(folder) or "")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, err = run(cli.export_main, "onnx", "--output-dir", folder)
    one_line(code, err, 2, "is not an export of this tool")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing replaced


@pytest.mark.parametrize("edit", ["verification.passed", "verification.worst_rel"])
def test_an_export_whose_verification_failed_is_refused_when_read(pristine: Path, tmp_path: Path, edit: str) -> None:
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    _edit(folder, EDITS[edit])
    with pytest.raises(ExportError, match="did not match PyTorch"):
        DiPPipeline.load(folder)
    code, err = run(cli.sample_main, folder, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "invalid manifest (verification.", "did not match PyTorch")
    assert not (tmp_path / "o.npz").exists()


@given(st.sampled_from(["files", "source", "versions", "precision", "image_size", "config", "name", "opset"]))
def test_a_missing_field_is_named_as_missing(field):
    assert manifest_error(KeyError(field)) == f"the field {field} is missing"


def test_a_manifest_without_files_says_so(pristine: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    _edit(folder, lambda d: d.pop("files"))
    code, err = run(cli.sample_main, folder, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "invalid manifest (the field files is missing)")
