"""An output named with bytes that are not UTF-8 text (a shell's `$(printf '\\xff')`, read by Python as surrogate
escapes) is refused in one line before any work, on every surface: the commands' output options, the writers, the
exporter. The tool writes its outputs' names into journals, tags and manifests as UTF-8; the file system would take
the bytes, the tool's own records would not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.checkpoint import resolve_model
from dip_export.errors import UsageError
from dip_export.export.onnx_export import export_onnx
from dip_export.io import check_outputs, save_json, save_npz, save_png
from tests.test_hostile import one_line, run

FEW = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
UNDECODABLE = st.binary(min_size=1, max_size=4).filter(lambda b: _not_utf8(b))


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _name(before: str, raw: bytes, after: str) -> str:
    """A name as Python reads one from argv or the file system: undecodable bytes as surrogate escapes."""
    return os.fsdecode(before.encode() + raw.replace(b"/", b"_").replace(b"\x00", b"_") + after.encode())


PARTS = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=0, max_size=6)


@FEW
@given(before=PARTS, raw=UNDECODABLE, after=PARTS, in_folder=st.booleans(), writer=st.sampled_from(["npz", "png", "json"]))
def test_every_writer_refuses_a_name_that_is_not_utf8(tmp_path_factory, before, raw, after, in_folder, writer) -> None:
    if _not_utf8(before.encode() + raw.replace(b"/", b"_").replace(b"\x00", b"_") + after.encode()) is False:
        return  # the replacements made it text
    root = tmp_path_factory.mktemp("w")
    name = _name(before, raw, after)
    path = root / name / "out.bin" if in_folder else root / f"{name}.bin"
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(UsageError, match="not UTF-8 text") as err:
        if writer == "npz":
            save_npz(path, image[None])
        elif writer == "png":
            save_png(path, image, "samples-grid")
        else:
            save_json(path, {"a": 1}, "bench-report")
    assert "\n" not in str(err.value)
    assert os.listdir(root) == []
    with pytest.raises(UsageError, match="not UTF-8 text"):
        check_outputs([("--out", path)])


def test_the_exporter_refuses_one_before_tracing(tmp_path: Path) -> None:
    out = tmp_path / _name("bad", b"\xff\xfe", "")
    started = time.perf_counter()
    with pytest.raises(UsageError, match="not UTF-8 text"):
        export_onnx(resolve_model(None), image_size=(32, 32), output_dir=out)
    assert time.perf_counter() - started < 5 and os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("main", "option", "suffix", "args"),
    [
        (cli.sample_main, "--out", ".npz", ["--classes", "1", "--steps", "2"]),
        (cli.sample_main, "--png-dir", "", ["--classes", "1", "--steps", "2"]),
        (cli.export_main, "--output", ".safetensors", ["schedule"]),
        (cli.bench_main, "--json", ".json", ["--steps", "2", "--backends", "torch", "--image-size", "32"]),
        (cli.bench_main, "--plot", ".png", ["--samplers", "euler", "--image-size", "32"]),
        (cli.export_main, "--output-dir", "", ["onnx"]),
    ],
)
@pytest.mark.parametrize("raw", [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"caf\xe9"])
def test_every_command_refuses_one_before_work(tmp_path: Path, monkeypatch, main, option, suffix, args, raw) -> None:
    monkeypatch.chdir(tmp_path)
    name = str(tmp_path / _name("o", raw, suffix))
    code, err = run(main, *args, option, name)
    if option == "--output":  # a model file: named after it, its name is refused first (as its reader refuses it)
        one_line(code, err, 2, "not printed as itself")
    else:
        one_line(code, err, 2, "not UTF-8 text")
    assert os.listdir(tmp_path) == []
