"""Ownership you can prove: replace only what the tool wrote; a crash-safe swap; outputs checked first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.export.manifest import check_export_target, ownership_problem
from dip_export.io import remove_stale_temporaries
from dip_export.ownership import check_not_input, check_output_name, journal_path, recover_swap
from tests.test_hostile import one_line, run


def test_a_fresh_export_is_provably_ours(export: Path) -> None:
    assert ownership_problem(export) is None


@pytest.mark.parametrize("change", ["extra file", "changed file", "format only", "no contents"])
def test_anything_but_exactly_the_listed_files_is_not_ours(export: Path, change: str) -> None:
    manifest = export / "manifest.json"
    if change == "extra file":
        (export / "notes.txt").write_text("mine")
    elif change == "changed file":
        with (export / "detailer.onnx").open("ab") as f:
            f.write(b"\0")
    elif change == "format only":
        manifest.write_text(json.dumps({"format": "dip-export/1"}))
    else:
        data = json.loads(manifest.read_text())
        data.pop("contents")
        manifest.write_text(json.dumps(data))
    assert ownership_problem(export) is not None
    with pytest.raises(UsageError, match="not an export of this tool"):
        check_export_target(export)


def test_reexport_into_a_folder_holding_the_checkpoint_keeps_it(tmp_path: Path, ckpt: Path, export: Path) -> None:
    inside = export / "last.ckpt"
    inside.write_bytes(ckpt.read_bytes())
    code, err = run(cli.export_main, "onnx", inside, "--output-dir", export, "--image-size", "32x64")
    one_line(code, err, 2, "not an export of this tool")
    assert inside.read_bytes() == ckpt.read_bytes()


def test_symlinked_output_dir_to_the_working_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("years")
    os.symlink(work, tmp_path / "link")
    monkeypatch.chdir(work)
    with pytest.raises(UsageError):
        check_export_target(tmp_path / "link" / ".." / "work")
    assert (work / "thesis.tex").read_text() == "years"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(200, 400))
def test_output_names_too_long_are_refused_before_work(n: int) -> None:
    with pytest.raises(UsageError, match="too long"):
        check_output_name(Path("/tmp") / ("x" * n))


def test_cli_too_long_out_name_is_refused_before_sampling(tmp_path: Path, no_sampling) -> None:
    code, err = run(cli.sample_main, "--out", tmp_path / ("s" * 240 + ".npz"))
    one_line(code, err, 2, "too long")


def test_an_output_that_holds_an_input_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "runs" / "m.pt"
    model.parent.mkdir()
    model.write_bytes(b"x")
    with pytest.raises(UsageError, match="holds the input"):
        check_not_input(tmp_path / "runs", [model])
    os.symlink(model, tmp_path / "alias.npz")
    with pytest.raises(UsageError, match="is or holds the input"):
        check_not_input(tmp_path / "alias.npz", [model])


# ---------------------------------------------------------------- the swap, killed at every instant

KILLER = r"""
import os, sys, shutil
from pathlib import Path
import dip_export.io as io_mod
import dip_export.ownership as own
count = [0]
kill_at = int(sys.argv[2])
real_replace, real_rmtree, real_unlink = os.replace, shutil.rmtree, Path.unlink
def step(fn):
    def wrapped(*a, **k):
        count[0] += 1
        if count[0] == kill_at:
            os._exit(9)
        return fn(*a, **k)
    return wrapped
own.os.replace = step(real_replace)
own.shutil.rmtree = step(real_rmtree)
own.Path.unlink = step(real_unlink)
with io_mod.atomic_dir(Path(sys.argv[1]), problem_of=lambda target: None) as tmp:
    (tmp / "model.onnx").write_text("new")
"""


@pytest.mark.parametrize("kill_at", range(1, 8))
def test_a_kill_at_any_step_of_the_swap_loses_no_export(tmp_path: Path, kill_at: int) -> None:
    target = tmp_path / "exp"
    target.mkdir()
    (target / "model.onnx").write_text("old")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    subprocess.run([sys.executable, "-c", KILLER, str(target), str(kill_at)], env=env, check=False, timeout=120)
    recover_swap(target, lambda pid: False, lambda folder: None)  # what the next run does first
    remove_stale_temporaries(target)
    assert (target / "model.onnx").read_text() in ("old", "new")
    assert not journal_path(target).exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "exp" and ".old." in p.name]
    assert leftovers == []


# ---------------------------------------------------------------- a forged manifest proves nothing


def _forge(folder: Path, **changes: object) -> None:
    """Rewrite the manifest with the folder's true file list (names, sizes, sha256), as anyone could."""
    from dip_export.ownership import folder_contents

    manifest = folder / "manifest.json"
    data = json.loads(manifest.read_text())
    data["contents"] = folder_contents(folder)
    data.update(changes)
    if data.get("owner_mac") is None:
        data.pop("owner_mac")
    manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("mac", [None, "", "0" * 64, "other key"])
def test_a_manifest_listing_a_users_files_does_not_make_them_replaceable(export: Path, mac: str | None) -> None:
    from dip_export.ownership import contents_mac, folder_contents

    (export / "thesis.tex").write_text("years")  # the user's file, listed with its true size and hash
    if mac == "other key":
        mac = contents_mac(folder_contents(export), b"another user's key")
    _forge(export, owner_mac=mac)
    assert "no valid mark" in (ownership_problem(export) or "")
    before = {p.name: p.read_bytes() for p in export.iterdir()}
    with pytest.raises(UsageError, match="not an export of this tool"):
        check_export_target(export)
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mac=st.text(max_size=70))
def test_no_guessed_mark_makes_a_folder_replaceable(export: Path, mac: str) -> None:
    from dip_export.ownership import contents_mac, owner_key

    listed = json.loads((export / "manifest.json").read_text())["contents"]
    assume(mac != contents_mac(listed, owner_key(create=False) or b""))
    _forge(export, owner_mac=mac)
    assert ownership_problem(export) is not None


def test_the_cli_refuses_to_export_over_a_forged_folder(tmp_path: Path, ckpt: Path, export: Path) -> None:
    (export / "thesis.tex").write_text("years")
    _forge(export)
    code, err = run(cli.export_main, "onnx", ckpt, "--output-dir", export, "--image-size", "32x64")
    one_line(code, err, 2, "not an export of this tool")
    assert (export / "thesis.tex").read_text() == "years"


def test_an_export_is_read_without_the_key_but_not_replaced(export: Path, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:  # fmt: skip
    from dip_export.export.manifest import read_manifest
    from dip_export.ownership import KEY_ENV

    monkeypatch.setenv(KEY_ENV, str(tmp_path / "another-user" / "owner.key"))
    assert read_manifest(export).name  # reading for use needs no key
    assert "no valid mark" in (ownership_problem(export) or "")
    assert not (tmp_path / "another-user").exists()  # checking makes no key


def test_the_owner_key_is_made_once_private_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dip_export.errors import DipError
    from dip_export.ownership import KEY_ENV, owner_key, owner_key_path

    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = tmp_path / "cfg" / "dip-export" / "owner.key"
    assert owner_key_path() == path and owner_key(create=False) is None
    key = owner_key(create=True)
    assert key is not None and len(key) == 32 and owner_key(create=True) == key
    assert path.stat().st_mode & 0o777 == 0o600 and os.listdir(path.parent) == ["owner.key"]
    path.chmod(0o644)
    with pytest.raises(DipError, match="not yours alone"):
        owner_key(create=False)
    path.chmod(0o600)
    path.rename(tmp_path / "real.key")
    path.symlink_to(tmp_path / "real.key")
    with pytest.raises(DipError, match="not a regular file"):
        owner_key(create=False)


def test_a_link_at_the_journal_name_is_never_written_through(tmp_path: Path) -> None:
    from dip_export.errors import DipError
    from dip_export.io import atomic_dir
    from dip_export.ownership import swap_in

    target = tmp_path / "exp"
    target.mkdir()
    (target / "model.onnx").write_text("old")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    journal_path(target).symlink_to(victim)
    with pytest.raises(DipError), atomic_dir(target, problem_of=lambda folder: None) as tmp:
        (tmp / "model.onnx").write_text("new")
    new, backup = tmp_path / "new", tmp_path / ".exp.old.tmp"
    new.mkdir()
    backup.mkdir()
    with pytest.raises(DipError, match="in the way"):
        swap_in(new, target, backup)  # even past the recovery: the journal is made new, never through a link
    assert victim.read_text() == "mine" and (target / "model.onnx").read_text() == "old" and not backup.exists()
