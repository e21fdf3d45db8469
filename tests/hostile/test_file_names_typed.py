"""A file option's value that ends in '/' names a folder, as the file system reads it: refused in one line before
any work, on every command and by the writers below them (a Path would drop the slash and write the file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.io import atomic_path, check_output_file
from tests.test_hostile import one_line, run

NAME = st.text("abcxyz-_.", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize(
    ("main", "args", "option", "name"),
    [
        (cli.sample_main, ["--num-samples", "1", "--steps", "2"], "--out", "t.npz"),
        (cli.sample_main, ["--num-samples", "1", "--steps", "2"], "--class-file", "c.txt"),
        (cli.bench_main, ["--backends", "torch", "--steps", "1"], "--json", "r.json"),
        (cli.bench_main, ["--backends", "torch", "--steps", "1"], "--plot", "p.png"),
        (cli.export_main, ["schedule", "--sampler", "unipc", "--nfe", "4"], "--output", "s.safetensors"),
        (cli.export_main, ["trt"], "--timing-cache", "t.cache"),
    ],
)
@pytest.mark.parametrize("ending", ["/", "//", "/."])
def test_every_file_option_refuses_a_name_ending_in_a_slash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, main, args: list[str], option: str, name: str, ending: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(main, *args, option, name + ending)
    one_line(code, err, 2, option, "names a folder")
    assert list(tmp_path.iterdir()) == []  # nothing written, no folder made


def test_every_path_parameter_is_a_file_or_a_folder() -> None:
    """A Path option must say which it is (else its command cannot be made); a file's gets `file_path`."""
    assert not cli.FILE_PARAMS & cli.FOLDER_PARAMS
    with pytest.raises(TypeError, match="neither in FILE_PARAMS nor in FOLDER_PARAMS"):
        cli._path_parser("new_option", Path | None)
    for name in cli.FILE_PARAMS:
        assert cli._path_parser(name, Path | None) is cli.file_path and cli._path_parser(name, Path) is cli.file_path
    for name in cli.FOLDER_PARAMS:
        assert cli._path_parser(name, Path | None) is None
    assert cli._path_parser("out", str) is None  # only Path parameters


@FAST
@given(name=NAME, ending=st.sampled_from(["/", "/.", "//"]))
def test_the_writers_refuse_a_name_ending_in_a_slash(tmp_path: Path, name: str, ending: str) -> None:
    text = str(tmp_path / name) + ending
    with pytest.raises(UsageError, match="names a folder"):
        check_output_file(text)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="names a folder"), atomic_path(text) as tmp:  # type: ignore[arg-type]
        tmp.write_bytes(b"never")
    assert list(tmp_path.iterdir()) == []


@FAST
@given(name=NAME)
def test_a_plain_file_name_passes(tmp_path: Path, name: str) -> None:
    assert cli.file_path(name) == Path(name)
    check_output_file(str(tmp_path / name))  # type: ignore[arg-type]
    with pytest.raises(typer.BadParameter, match="names a folder"):
        cli.file_path(name + "/")
