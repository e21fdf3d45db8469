"""Replacing an export deletes the old export's own files only, each while it is still as its manifest lists it
(`ownership.remove_listed`): a file put into the old export after the last check (another process, in the moment
before the swap) or changed there is never deleted with it; it stays beside the new export, and is said."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dip_export.io
from dip_export.export.manifest import ownership_problem
from dip_export.export.onnx_export import export_onnx
from dip_export.ownership import remove_listed
from tests.test_hostile import SIZE

NAMES = st.sampled_from(["a.onnx", "b.onnx.data", "sub/c.bin", "sub/deep/d.bin", "e"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(listed=st.sets(NAMES, min_size=1), extra=st.sets(NAMES), changed=st.sets(NAMES))
def test_only_listed_files_as_listed_go(tmp_path_factory, listed: set[str], extra: set[str], changed: set[str]) -> None:
    folder = tmp_path_factory.mktemp("old")
    contents = {}
    for rel in sorted(listed):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rel.encode())
        contents[rel] = {"size": len(rel.encode()), "sha256": hashlib.sha256(rel.encode()).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"format": "dip-export/1", "contents": contents}))
    extra, changed = extra - listed, changed & listed
    for rel in sorted(extra):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("mine")
    for rel in sorted(changed):
        (folder / rel).write_text("changed by someone")
    left = remove_listed(folder)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()
    assert files == extra | changed
    assert set(left) >= files and folder.exists() == bool(files)


def test_a_file_put_into_the_old_export_just_before_the_swap_is_kept(tmp_path: Path, monkeypatch, loaded, pristine) -> None:
    import shutil

    target = tmp_path / "exp"
    shutil.copytree(pristine, target)
    real, calls = dip_export.io.check_replaceable_folder, []

    def racing(folder: Path, problem_of) -> None:  # the last check passes, then another process writes
        real(folder, problem_of)
        calls.append(folder)
        if len(calls) == 2:
            (Path(folder) / "user_race.txt").write_text("years of work")

    monkeypatch.setattr(dip_export.io, "check_replaceable_folder", racing)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        export_onnx(loaded, image_size=SIZE, output_dir=target)
    assert len(calls) == 2 and ownership_problem(target) is None  # the new export in place, the tool's own
    kept = tmp_path / f"exp.kept-{os.getpid()}"
    assert (kept / "user_race.txt").read_text() == "years of work" and sorted(p.name for p in kept.rglob("*")) == [
        "user_race.txt"
    ]
    assert any("user_race.txt" in str(w.message) and "kept" in str(w.message) for w in said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", kept.name]


def test_without_a_race_the_old_export_goes_entirely(tmp_path: Path, loaded, pristine) -> None:
    import shutil

    target = tmp_path / "exp"
    shutil.copytree(pristine, target)
    export_onnx(loaded, image_size=SIZE, output_dir=target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"] and ownership_problem(target) is None


def test_dip_export_says_the_kept_files_in_one_line(tmp_path: Path, monkeypatch, ckpt: Path, pristine: Path) -> None:
    import shutil

    from dip_export import cli
    from tests.test_hostile import run

    target = tmp_path / "exp"
    shutil.copytree(pristine, target)
    real, calls = dip_export.io.check_replaceable_folder, []

    def racing(folder: Path, problem_of) -> None:
        real(folder, problem_of)
        calls.append(folder)
        if len(calls) == 2:
            (Path(folder) / "notes\x1b[2J.txt").write_text("mine")

    monkeypatch.setattr(dip_export.io, "check_replaceable_folder", racing)
    code, err = run(cli.export_main, "onnx", ckpt, "--output-dir", target, "--image-size", "32x64")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "notes\\x1b[2J.txt" in warned[0] and "\x1b" not in err, err
    assert (tmp_path / f"exp.kept-{os.getpid()}" / "notes\x1b[2J.txt").read_text() == "mine"


def test_a_folder_put_at_the_exports_name_between_the_renames_is_named_and_nothing_is_lost(
    tmp_path: Path, monkeypatch, loaded, pristine
) -> None:
    import shutil

    import dip_export.ownership
    from dip_export.errors import DipError

    target = tmp_path / "exp"
    shutil.copytree(pristine, target)
    real = os.replace

    def intruding(src, dst) -> None:  # another process renames its own folder onto the name, just before ours
        if Path(dst) == target and Path(src).name.startswith(".exp.") and ".old." not in Path(src).name:
            (target / "theirs").mkdir(parents=True, exist_ok=True)
            (target / "theirs" / "data.txt").write_text("theirs")
        real(src, dst)

    monkeypatch.setattr(dip_export.ownership.os, "replace", intruding)
    with pytest.raises(DipError, match="something was put at this name while the export was being replaced") as caught:
        export_onnx(loaded, image_size=SIZE, output_dir=target)
    assert "Directory not empty" not in str(caught.value)
    monkeypatch.setattr(dip_export.ownership.os, "replace", real)
    assert (target / "theirs" / "data.txt").read_text() == "theirs"  # theirs untouched
    backups = [p for p in tmp_path.iterdir() if ".old." in p.name]
    assert len(backups) == 1 and ownership_problem(backups[0]) is None  # the earlier export, whole
