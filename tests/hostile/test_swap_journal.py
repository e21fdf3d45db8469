"""The swap journal is acted on only when this tool provably wrote it; any other is refused, and nothing moves."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import DipError
from dip_export.export.manifest import ownership_problem
from dip_export.ownership import _journal_fields, _write_journal, folder_fingerprint, journal_path, recover_swap
from tests.test_hostile import one_line, run

REFUSAL = "is not a swap journal this tool wrote"


def listing(folder: Path) -> dict[str, Any]:
    """Everything below `folder`: links as their target, files as their bytes, folders as such."""
    out: dict[str, Any] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
    return out


def backup_name(target: str, pid: int = 999_999, tail: str = "abcdefgh") -> str:
    """A name of exactly the form the tool gives the backup of `target` (on this host)."""
    from dip_export.io import _tmp_tag

    host = socket.gethostname()
    return f".{target}.{host}-{pid}-{_tmp_tag(target, host, pid, create=True)}.old.{tail}.tmp"


def user_folder(path: Path) -> None:
    path.mkdir()
    (path / "precious.txt").write_text("years of work")


def signed(target: Path, backup: str, host: str | None = None, pid: int = 999_999, new: str = "") -> dict[str, Any]:
    """A journal marked with this user's key, as the tool writes them (`new`: the fingerprint of the export put in
    place)."""
    return _journal_fields(target, backup, host if host is not None else socket.gethostname()[:32], pid, new)


def refused(target: Path) -> None:
    with pytest.raises(DipError) as caught:
        recover_swap(target, lambda pid: False, ownership_problem)
    message = str(caught.value)
    assert "\n" not in message and REFUSAL in message and str(journal_path(target)) in message


# ---------------------------------------------------------------- forged journals, through the mechanism

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
NAMES = st.sampled_from(["backup", "host", "pid", "mac"]) | st.text(max_size=8)
RANDOM_OBJECTS = st.dictionaries(NAMES, JSON_VALUES, max_size=5)
TAILS = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=8, max_size=8)


@st.composite
def forged(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(what the journal names, what lies at that name: user / export / link / none, the journal's content)."""
    kind = draw(st.sampled_from(["random", "wrong mac", "user folder", "bad name", "symlink", "bad types"]))
    name = backup_name("E", draw(st.integers(1, 2**22)), draw(TAILS))
    if kind == "random":
        data = draw(RANDOM_OBJECTS)
        if draw(st.booleans()):
            data["backup"] = name
        return name, "user", data
    if kind == "wrong mac":
        mac = draw(st.text("0123456789abcdef", min_size=64, max_size=64) | st.text(max_size=64))
        pid = int(re.search(r"-([0-9]+)-[0-9a-f]{16}\.old\.", name).group(1))
        return name, draw(st.sampled_from(["user", "export"])), {"backup": name, "host": HOST, "pid": pid, "mac": mac}
    if kind == "user folder":
        return name, draw(st.sampled_from(["user", "dressed"])), "sign"
    if kind == "symlink":
        return name, "link", "sign"
    if kind == "bad types":
        return name, "export", draw(st.sampled_from(["pid as text", "pid as bool", "host as number", "extra field"]))
    bad = draw(st.sampled_from(["../victim", "sub/x", "..", ".", "", "/tmp", f"{name}/..", f"../work/{name}"]))
    return bad, "none", "sign"


HOST = socket.gethostname()[:32]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=forged(), has_export=st.booleans())
def test_a_forged_journal_is_refused_and_nothing_moves(pristine: Path, case: tuple[str, str, Any],
                                                       has_export: bool) -> None:  # fmt: skip
    name, lying, data = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        (work / "sub").mkdir()
        user_folder(root / "victim")
        target = work / "E"
        if has_export:
            shutil.copytree(pristine, target)
        backup = work / name
        if lying == "user":
            user_folder(backup)
        elif lying == "dressed":  # a user folder dressed as an export: a manifest whose files are not there
            user_folder(backup)
            shutil.copy(pristine / "manifest.json", backup / "manifest.json")
        elif lying == "export":
            shutil.copytree(pristine, backup)
        elif lying == "link":
            shutil.copytree(pristine, root / "elsewhere")
            backup.symlink_to(root / "elsewhere", target_is_directory=True)
        if isinstance(data, str):
            pid = int(re.search(r"-([0-9]+)-[0-9a-f]{16}\.old\.", name).group(1)) if lying != "none" else 999_999
            signed_data = signed(target, name, pid=pid)
            if data == "pid as text":
                signed_data["pid"] = str(pid)
            elif data == "pid as bool":
                signed_data["pid"] = True
            elif data == "host as number":
                signed_data["host"] = 7
            elif data == "extra field":
                signed_data["extra"] = 1
            data = signed_data
        journal_path(target).write_text(json.dumps(data))
        before = listing(root)
        refused(target)
        assert listing(root) == before


def test_a_signed_journal_naming_a_user_folder_is_refused(tmp_path: Path, export: Path) -> None:
    """Even with the right mark, a backup that is not an export the tool wrote is never deleted."""
    name = backup_name(export.name)
    user_folder(tmp_path / name)
    journal_path(export).write_text(json.dumps(signed(export, name)))
    before = listing(tmp_path)
    refused(export)
    assert listing(tmp_path) == before
    shutil.rmtree(export)
    before = listing(tmp_path)
    refused(export)  # nor renamed into the export's place
    assert listing(tmp_path) == before


@pytest.mark.parametrize("field", ["host", "pid"])
def test_a_signed_journal_whose_name_disagrees_with_its_run_is_refused(tmp_path: Path, export: Path,
                                                                        field: str) -> None:  # fmt: skip
    name = backup_name(export.name, pid=4242)
    shutil.copytree(export, tmp_path / name)
    data = signed(export, name, host="otherhost" if field == "host" else None, pid=4243 if field == "pid" else 4242)
    journal_path(export).write_text(json.dumps(data))
    before = listing(tmp_path)
    refused(export)
    assert listing(tmp_path) == before


# ---------------------------------------------------------------- the reported cases, through the CLI

F1_JOURNAL = {"backup": ".E.mine.old.abcdefgh.tmp", "host": "otherhost", "pid": 1}


def _cli(ckpt: Path, target: Path) -> tuple[int, str]:
    return run(cli.export_main, "onnx", ckpt, "--output-dir", target, "--image-size", "32x64")


@pytest.mark.parametrize("case", ["F1 export and user folder", "F2 user folder only", "F3 invalid journal"])
def test_the_cli_refuses_a_journal_it_did_not_write(tmp_path: Path, ckpt: Path, pristine: Path, case: str) -> None:
    target = tmp_path / "E"
    if not case.startswith("F2"):
        shutil.copytree(pristine, target)
    if case.startswith("F3"):
        journal_path(target).write_text('{"backup": ".E.mine.old.abcdefgh.tmp", "host": ')
    else:
        user_folder(tmp_path / ".E.mine.old.abcdefgh.tmp")
        journal_path(target).write_text(json.dumps(F1_JOURNAL))
    before = listing(tmp_path)
    code, err = _cli(ckpt, target)
    one_line(code, err, code or 1, REFUSAL, str(journal_path(target)), "move it away")
    assert code != 0
    assert listing(tmp_path) == before


# ---------------------------------------------------------------- a swap the tool began still recovers


@pytest.mark.parametrize("state", ["old moved away", "new in place", "journal only"])
def test_a_crashed_swap_of_this_tool_recovers(tmp_path: Path, pristine: Path, state: str) -> None:
    target = tmp_path / "E"
    name = backup_name("E")
    backup = tmp_path / name
    if state == "journal only":  # killed after the journal, before the first rename
        shutil.copytree(pristine, target)
        backup.mkdir()
    else:
        shutil.copytree(pristine, backup)
        if state == "new in place":  # killed after the second rename: the new export (an export of the tool) in place
            shutil.copytree(pristine, target)
            new_inode = target.stat().st_ino
    _write_journal(journal_path(target), signed(target, name, new=folder_fingerprint(pristine)))
    old = listing(pristine)
    recover_swap(target, lambda pid: False, ownership_problem)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E"]
    if state == "new in place":
        assert target.stat().st_ino == new_inode and listing(target) == old
    else:
        assert listing(target) == old


def test_the_cli_finishes_a_crashed_swap_then_exports(tmp_path: Path, ckpt: Path, pristine: Path) -> None:
    target = tmp_path / "E"
    name = backup_name("E")
    shutil.copytree(pristine, tmp_path / name)
    _write_journal(journal_path(target), signed(target, name))
    code, err = _cli(ckpt, target)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["E"] and ownership_problem(target) is None
