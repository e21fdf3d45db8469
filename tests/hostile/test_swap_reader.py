"""A reader of an export folder finishes or undoes a swap a killed run left, as writers do: after a kill at any step
of the swap, dip-sample EXPORT_DIR and DiPPipeline.load(EXPORT_DIR) find the old or the new export and sample from it;
nothing the journal does not prove is the tool's is deleted, and the path is never taken for a Hub name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dip_export.ownership
from dip_export import DiPPipeline, cli
from dip_export.errors import DipError
from dip_export.export.onnx_export import export_onnx
from dip_export.ownership import _write_journal, journal_path
from tests.hostile.test_swap_journal import backup_name, listing, signed
from tests.test_hostile import SIZE, one_line, run


class Killed(BaseException):
    """Stands in for SIGKILL: no handler of the tool catches it, so no rollback runs."""


def kill_swap(monkeypatch: pytest.MonkeyPatch, target: Path, renames_done: int) -> None:
    """os.replace as the swap of `target` sees it, killed once `renames_done` of its two renames (the old export
    to its backup, the new one into place) have happened; every other rename runs as usual."""
    real = os.replace
    done = 0

    def replace(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        nonlocal done
        name = Path(dst).name
        if Path(dst) != target and not (name.startswith(f".{target.name}.") and ".old." in name):
            return real(src, dst)
        if done == renames_done:
            raise Killed
        real(src, dst)
        done += 1
        if done == renames_done == 2:  # the new export is in place; the journal and the backup are still there
            raise Killed

    monkeypatch.setattr(dip_export.ownership.os, "replace", replace)


def interrupted(monkeypatch: pytest.MonkeyPatch, loaded, pristine: Path, target: Path, renames_done: int) -> int:
    """An export at `target` being replaced, killed after its journal is written and `renames_done` of the swap's
    renames; returns the inode of the old export's folder."""
    shutil.copytree(pristine, target)
    old = target.stat().st_ino
    with monkeypatch.context() as patch:
        kill_swap(patch, Path(os.path.abspath(target)), renames_done)
        with pytest.raises(Killed):
            export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=target)
    as_dead_run(target)
    assert journal_path(target).is_file()  # the state a kill leaves: the journal, and the backup where one was made
    assert target.is_dir() == (renames_done != 1)  # before the first rename, or after the second
    return old


def dead_pid() -> int:
    """The pid of a process that ran and is gone."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(child.stdout)


def as_dead_run(target: Path) -> None:
    """What the kill left, as a run that is no longer alive left it: the journal, the backup and the staging copy of
    the new export name that run's pid (the killed run here is this test's own, still alive), signed and named
    exactly as the tool does."""
    journal = journal_path(target)
    data = json.loads(journal.read_text())
    pid = dead_pid()
    backup = backup_name(target.name, pid=pid, tail=data["backup"].split(".old.")[1][:8])
    if os.path.lexists(target.parent / data["backup"]):
        os.rename(target.parent / data["backup"], target.parent / backup)
    journal.unlink()
    _write_journal(journal, signed(Path(os.path.abspath(target)), backup, pid=pid, new=data["new"]))
    staging = target.parent / backup_name(target.name, pid=pid, tail="staging_").replace(".old.", ".")
    shutil.copytree(target.parent / backup if os.path.lexists(target.parent / backup) else target, staging)
    # the new export as a SIGKILL leaves it beside the swap (the stand-in kill here lets the writer's clean-up run)


def swap_leftovers(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(".exp.")}


def read_cli(target: Path, out: Path) -> None:
    code, err = run(cli.sample_main, target, "--steps", "2", "--num-samples", "1", "--out", out)
    assert code == 0, err
    with np.load(out) as data:
        assert data["arr_0"].shape == (1, *SIZE, 3)


def read_api(target: Path, out: Path) -> None:
    images = DiPPipeline.load(str(target))(num_samples=1, steps=2)
    assert np.asarray(images).shape[0] == 1


READERS = {"dip-sample": read_cli, "api": read_api}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("renames_done", [0, 1, 2])
def test_reader_after_a_kill_finds_the_old_or_new_export(tmp_path, monkeypatch, loaded, pristine, reader, renames_done):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "notes.txt").write_text("mine")
    (work / ".exp.mine.tmp").mkdir()  # a user's folder that merely looks like a temporary: never touched
    target = work / "exp"
    old_inode = interrupted(monkeypatch, loaded, pristine, target, renames_done)
    left = swap_leftovers(work)
    assert any(".old." in name for name in left)  # the backup: made empty first, then holding the old export
    assert any(name.endswith(".staging_.tmp") for name in left)  # a killed run's copy of the new export

    READERS[reader](Path("exp"), work / "s.npz")

    assert target.is_dir() and not os.path.lexists(journal_path(target))
    assert (target.stat().st_ino == old_inode) == (renames_done < 2)  # the old export back, or the new one kept
    assert (work / "notes.txt").read_text() == "mine" and (work / ".exp.mine.tmp").is_dir()
    assert swap_leftovers(work) == {".exp.mine.tmp"}  # the swap's backup, journal and staging copy gone, no other


def test_reader_of_a_hub_shaped_path_asks_no_hub(tmp_path, monkeypatch, loaded, pristine, fake_hub):
    org = tmp_path / "org"
    org.mkdir()
    interrupted(monkeypatch, loaded, pristine, org / "exp", 1)
    read_api(Path("org/exp"), tmp_path / "s.npz")  # `org/exp` has the form of a Hub repo name
    assert fake_hub == [] and (org / "exp" / "manifest.json").is_file()


def test_reader_refuses_a_journal_this_tool_did_not_write_and_moves_nothing(tmp_path, monkeypatch, loaded, pristine):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "exp"
    interrupted(monkeypatch, loaded, pristine, target, 1)
    journal = journal_path(target)
    data = json.loads(journal.read_text())
    journal.write_text(json.dumps({**data, "mac": "0" * 64}))  # the same journal, its mark not this user's
    before = listing(tmp_path)
    code, err = run(cli.sample_main, "exp", "--steps", "2", "--num-samples", "1", "--out", tmp_path / "s.npz")
    one_line(code, err, 1, str(journal), "is not a swap journal this tool wrote")
    with pytest.raises(DipError, match="is not a swap journal this tool wrote"):
        DiPPipeline.load("exp")
    assert listing(tmp_path) == before


def test_a_tensorrt_build_for_an_interrupted_export_finds_it(tmp_path, monkeypatch, loaded, pristine):
    """dip-export trt --output-dir EXPORT_DIR (`build_trt`, on the fake TensorRT): the old export is back and built for."""
    from rich.console import Console

    from dip_export.export.trt_build import BatchProfile, build_trt
    from tests.fakes import tensorrt as fake_tensorrt
    from tests.fakes.cuda import FakeCuda

    target = tmp_path / "exp"
    old_inode = interrupted(monkeypatch, loaded, pristine, target, 1)
    FakeCuda().install(monkeypatch)
    fake_tensorrt.install(monkeypatch)
    entry = build_trt(precision="fp32", output_dir=target, root=tmp_path, profile=BatchProfile.parse("1,1,2"),
                      timing_cache=None, opt_level=3, console=Console(quiet=True), device="cpu")  # fmt: skip
    assert target.stat().st_ino == old_inode and all((target / f).is_file() for f in entry["files"].values())
    assert swap_leftovers(tmp_path) == set()


IN_THE_WAY = {
    "empty folder": lambda p: p.mkdir(),
    "user folder": lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")),
    "file": lambda p: p.write_text("mine"),
    "dangling link": lambda p: p.symlink_to("nowhere"),
    "export plus a file": lambda p: (shutil.copytree(p.parent / "pristine", p), (p / "notes.txt").write_text("mine")),
    "another export": lambda p: shutil.copytree(p.parent / "other", p),
}


@pytest.fixture(scope="module")
def other(tmp_path_factory, loaded) -> Path:
    """A valid export of this tool that is not the one a killed run was putting in place."""
    folder = tmp_path_factory.mktemp("other") / "other"
    export_onnx(loaded, precision="fp32", image_size=(SIZE[0] * 2, SIZE[1]), output_dir=folder)
    return folder


# every thing in the way once, every reader more than once (each case is two exports and a sampling run)
CASES = [("empty folder", "dip-export onnx"), ("empty folder", "api"), ("user folder", "api"), ("file", "dip-sample"),
         ("dangling link", "dip-export onnx"), ("export plus a file", "dip-sample"), ("another export", "api"),
         ("another export", "dip-export onnx")]  # fmt: skip
assert {thing for thing, _ in CASES} == set(IN_THE_WAY)


@pytest.mark.parametrize(("thing", "reader"), CASES)
def test_something_put_where_a_killed_swap_left_no_export_keeps_the_backup(tmp_path, monkeypatch, loaded, pristine,
                                                                          other, reader, thing):  # fmt: skip
    """Killed between the renames (the old export only in its backup), then anything at the export's name before the
    next run: that run refuses, naming the backup, and deletes nothing; once the thing is moved away the old export
    comes back."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    shutil.copytree(pristine, work / "pristine")
    shutil.copytree(other, work / "other")
    target = work / "exp"
    old_inode = interrupted(monkeypatch, loaded, pristine, target, 1)
    IN_THE_WAY[thing](target)
    before = listing(work)
    words = (
        "is not the export an unfinished replacement was putting in place",
        "the earlier export is kept",
        "away and run again",
    )
    if reader == "api":
        with pytest.raises(DipError, match=words[0]):
            DiPPipeline.load("exp")
    else:
        args = ["onnx", "--output-dir", "exp"] if reader == "dip-export onnx" else ["exp", "--steps", "2", "--out", "s.npz"]
        code, err = run(cli.export_main if reader == "dip-export onnx" else cli.sample_main, *args)
        if reader == "dip-export onnx" and thing != "empty folder":  # refused as an output before the journal is read
            assert code in (1, 2)
            one_line(code, err, code, "exp")
        else:
            one_line(code, err, 1, *words)
    assert listing(work) == before  # nothing deleted, renamed or written

    (target.rename(work / "moved") if thing != "dangling link" else target.unlink())
    read_cli(Path("exp"), work / "s.npz")
    assert target.stat().st_ino == old_inode and not os.path.lexists(journal_path(target))


def test_a_backup_whose_journal_was_moved_away_is_kept(tmp_path, monkeypatch, loaded, pristine):
    """Killed between the renames, then the journal moved away: the next export to that name keeps the backup (it
    may hold the only copy of the old export), though it is a temporary of a dead run."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    interrupted(monkeypatch, loaded, pristine, work / "exp", 1)
    journal_path(work / "exp").rename(tmp_path / "journal.json")
    backups = {name for name in swap_leftovers(work) if ".old." in name}
    before = {name: listing(work / name) for name in backups}
    export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=work / "exp")
    assert {name: listing(work / name) for name in backups} == before and backups
