"""Ownership you can prove: replace only what the tool wrote; a crash-safe swap; outputs checked first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
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
    recover_swap(target, lambda pid: False)  # what the next run does first
    remove_stale_temporaries(target)
    assert (target / "model.onnx").read_text() in ("old", "new")
    assert not journal_path(target).exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "exp" and ".old." in p.name]
    assert leftovers == []
