"""An option given an empty value is refused in one line before any work, for every option of every command (a
path option would otherwise be read as the current folder); an output folder that is a symlink is named as one.

The check (`cli.refuse_repeated_options`, run on every command line) is tried on every option the commands
declare, in both spellings (`--opt ""` and `--opt=`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

from dip_export import cli
from tests.test_hostile import one_line, run

COMMANDS = [(cli.sample_main, cli.sample_app, []), (cli.bench_main, cli.bench_app, [])]
COMMANDS += [(cli.export_main, cli.export_app, [name]) for name in ("onnx", "trt", "schedule")]


def _options() -> list[tuple[object, list[str], str]]:
    found = []
    for main, app, sub in COMMANDS:
        command = typer.main.get_command(app)
        if sub:
            command = command.commands[sub[0]]  # type: ignore[attr-defined]
        for param in command.params:
            if param.param_type_name == "option" and not (param.is_flag or param.count) and param.opts[0] != "--help":
                found.append((main, sub, param.opts[0]))
    return found


OPTIONS = _options()


def test_every_command_declares_options_to_try():
    assert len(OPTIONS) > 40 and {"--out", "--output-dir", "--json", "--class-file"} <= {o for _, _, o in OPTIONS}


@pytest.mark.parametrize(("main", "sub", "option"), OPTIONS, ids=[f"{m.__name__}{s}{o}" for m, s, o in OPTIONS])
def test_an_empty_value_is_refused_before_any_work(tmp_path, monkeypatch, main, sub, option):
    monkeypatch.chdir(tmp_path)
    for spelled in ([option, ""], [f"{option}="]):
        code, err = run(main, *sub, *spelled)
        one_line(code, err, 2, f"{option} is given an empty value")
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder made


@pytest.mark.parametrize(("main", "sub"), [(m, s) for m, _, s in COMMANDS], ids=[f"{m.__name__}{s}" for m, _, s in COMMANDS])
def test_an_empty_argument_is_refused_before_any_work(tmp_path, monkeypatch, main, sub):
    monkeypatch.chdir(tmp_path)
    code, err = run(main, *sub, "")
    one_line(code, err, 2, "an argument is given empty")
    assert list(tmp_path.iterdir()) == []


def test_a_symlinked_output_folder_is_named_as_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    os.symlink("real", "link")
    code, err = run(cli.export_main, "onnx", "--output-dir", Path("link"))
    one_line(code, err, 2, "link is a symlink; an output folder is never written through one")
    assert list((tmp_path / "real").iterdir()) == []
