"""The owner key is checked apart from every output of a run before it is made: a key placed inside, at or above
an output (the default export folder, --output-dir, the fp32 export an int8 run makes, an export made on the fly
by dip-sample, dip-bench or the API, --out, --png-dir, --json) is refused in one line, and the refused run creates
nothing: no folder, no key."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import DipError
from dip_export.export.naming import export_folder_name
from dip_export.ownership import KEY_ENV
from tests.hostile.test_swap_journal import listing
from tests.test_hostile import SIZE, one_line, run

EXAMPLES = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
SIZE_TEXT = f"{SIZE[0]}x{SIZE[1]}"


def default_export(precision: str = "fp32") -> Path:
    """The folder under engines/ the tool exports the test checkpoint (last.ckpt) into."""
    return Path("engines") / export_folder_name("last", SIZE, precision)


def export_default(ckpt: Path) -> tuple[int, str]:
    return run(cli.export_main, "onnx", ckpt, "--image-size", SIZE_TEXT)


def export_dir(ckpt: Path) -> tuple[int, str]:
    return run(cli.export_main, "onnx", ckpt, "--image-size", SIZE_TEXT, "--output-dir", "ex")


def export_int8(ckpt: Path) -> tuple[int, str]:
    return run(cli.export_main, "onnx", ckpt, "--image-size", SIZE_TEXT, "--precision", "int8", "--output-dir", "ex")


def sample_on_the_fly(ckpt: Path) -> tuple[int, str]:
    return run(cli.sample_main, ckpt, "--backend", "onnx", "--image-size", SIZE_TEXT, "--steps", "2", "--num-samples",
               "1", "--out", "s.npz", "--png-dir", "pngs")  # fmt: skip


def bench_on_the_fly(ckpt: Path) -> tuple[int, str]:
    return run(cli.bench_main, ckpt, "--backends", "onnx", "--image-size", SIZE_TEXT, "--steps", "2", "--repeats", "1",
               "--warmup", "0", "--json", "b.json")  # fmt: skip


def api_on_the_fly(ckpt: Path) -> tuple[int, str]:
    """DiPPipeline, as a script calls it: a refusal is a DipError of one line (the CLI's exit 2 for a usage error)."""
    try:
        DiPPipeline.load(str(ckpt), backend="onnx", image_size=SIZE_TEXT)(num_samples=1, steps=2)
    except DipError as err:
        return 2, f"error: {err}\n"
    return 0, ""


# command -> (how it is run, the outputs it writes, relative to the working folder)
COMMANDS = {
    "dip-export onnx": (export_default, [default_export()]),
    "dip-export onnx --output-dir": (export_dir, [Path("ex")]),
    "dip-export onnx --precision int8 --output-dir": (export_int8, [Path("ex"), default_export()]),
    "dip-sample --backend onnx": (sample_on_the_fly, [Path("s.npz"), Path("pngs"), default_export()]),
    "dip-bench --backends onnx": (bench_on_the_fly, [Path("b.json"), default_export()]),
    "DiPPipeline(backend='onnx')": (api_on_the_fly, [default_export()]),
}
PARTS = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8).filter(lambda part: part.strip("-"))


@st.composite
def key_places(draw: st.DrawFn) -> tuple[str, Path]:
    """A command and an owner key path inside one of its outputs (at any depth), equal to it, or above it."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    output = draw(st.sampled_from(COMMANDS[command][1]))
    where = draw(st.sampled_from(["inside", "equal", "above"]))
    if where == "inside":
        return command, output.joinpath(*draw(st.lists(PARTS, min_size=0, max_size=2)), "owner.key")
    if where == "above" and output.parent != Path("."):
        return command, output.parent
    return command, output


@EXAMPLES
@given(place=key_places())
def test_a_key_among_the_outputs_is_refused_and_nothing_is_made(tmp_path, ckpt, place):
    command, key = place
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setenv(KEY_ENV, str(work / key))
        before = listing(work)
        code, err = COMMANDS[command][0](ckpt)
    one_line(code, err, 2, "the owner key", "keep the key elsewhere")
    assert listing(work) == before  # no folder, no key, nothing half made


def test_after_a_refused_export_the_next_export_goes_through(tmp_path, ckpt, monkeypatch):
    """The refused run left no folder holding a key behind: the next export, with the key elsewhere, is made."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(KEY_ENV, str(default_export() / "owner.key"))
    one_line(*export_default(ckpt), 2, "owner key")
    assert sorted(os.listdir(tmp_path)) == []
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "keys" / "owner.key"))
    code, err = export_default(ckpt)
    assert code == 0, err
    assert (default_export() / "manifest.json").is_file() and (tmp_path / "keys" / "owner.key").is_file()


@pytest.mark.parametrize("place", ["owner.key", "sub/owner.key", "sub/deeper/k"])
def test_a_key_inside_the_export_being_read_is_refused_and_never_made(tmp_path, export, monkeypatch, no_sampling, place):
    """The key, made during the run, would become a file the export's manifest does not list (the export could
    then never be replaced): refused before the export is read, through the CLI and the API."""
    monkeypatch.setenv(KEY_ENV, str(export / place))
    before = listing(export)
    code, err = run(cli.sample_main, export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "owner key", "the export folder")
    with pytest.raises(DipError, match="owner key"):
        DiPPipeline.load(export, device="cpu")
    assert listing(export) == before
