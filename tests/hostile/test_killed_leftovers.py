"""What a killed run of this tool left beside an export (a half-written export, the staging copy of a swap) goes
when that export is next read or written, on every surface: an on-the-fly export under engines/ and an export folder
named to dip-sample. Only names the tool made, tagged under the owner key and of a process that is gone, are
removed; a user's folder that merely looks like one stays."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from dip_export import cli
from dip_export.export.onnx_export import default_export_dir, ensure_export
from tests.hostile.test_swap_journal import backup_name
from tests.hostile.test_swap_reader import dead_pid
from tests.test_hostile import SIZE, run


def _leftovers(target: Path) -> tuple[Path, Path, Path]:
    """A killed run's half-written export and a live-looking run's, both named as the tool names them, and a
    user's folder of a similar name, beside `target`."""
    dead = target.parent / backup_name(target.name, pid=dead_pid(), tail="abcdefgh").replace(".old.", ".")
    dead.mkdir(parents=True)
    (dead / "backbone.onnx").write_bytes(b"half")
    alive = target.parent / backup_name(target.name, pid=1, tail="abcdefgh").replace(".old.", ".")  # init: alive
    alive.mkdir()
    user = target.parent / f".{target.name}.mine.tmp"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    return dead, alive, user


def test_an_on_the_fly_exports_leftover_goes_when_it_is_next_needed(tmp_path: Path, monkeypatch, loaded, pristine) -> None:
    monkeypatch.chdir(tmp_path)
    folder = default_export_dir(loaded.name, "fp32", SIZE)
    shutil.copytree(pristine, folder)
    dead, alive, user = _leftovers(folder)
    assert ensure_export(loaded, precision="fp32", image_size=SIZE) == folder  # the export as it was: reused
    assert not dead.exists() and alive.is_dir() and (user / "notes.txt").read_text() == "mine"


def test_an_export_folders_leftover_goes_when_dip_sample_reads_it(tmp_path: Path, pristine) -> None:
    target = tmp_path / "exp"
    shutil.copytree(pristine, target)
    dead, alive, user = _leftovers(target)
    code, err = run(cli.sample_main, target, "--steps", "1", "--num-samples", "1", "--out", tmp_path / "o.npz")
    assert code == 0, err
    with np.load(tmp_path / "o.npz") as data:
        assert data["arr_0"].shape == (1, *SIZE, 3)
    assert not dead.exists() and alive.is_dir() and (user / "notes.txt").read_text() == "mine"
