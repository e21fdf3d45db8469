"""Where a run writes, checked as a whole before any work.

The outputs of one run are apart (none equal to or inside another); no output folder lies inside an
export of this tool; an export holding any entry its manifest does not list (an empty folder too) is
not replaced; a quantized export checks its output, the fp32 export it makes and the calibration
cache it reads before the first export starts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import DipError, UsageError
from dip_export.export import onnx_export
from dip_export.export.manifest import ownership_problem
from dip_export.export.onnx_export import default_export_dir, export_onnx
from dip_export.io import atomic_dir
from dip_export.ownership import check_outputs_apart, unlisted_entries
from tests.test_hostile import SIZE, one_line, run

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PARTS = st.lists(st.sampled_from(["a", "b", "a.npz", "a.npz.parts"]), min_size=1, max_size=3)


# ---------------------------------------------------------------- the outputs of one run, apart


@FAST
@given(paths=st.lists(PARTS, min_size=1, max_size=4), link=st.booleans())
def test_outputs_are_refused_exactly_when_two_are_equal_or_nested(tmp_path: Path, paths: list[list[str]], link: bool) -> None:
    base = tmp_path / "real"
    base.mkdir(exist_ok=True)
    if not (tmp_path / "link").exists():
        (tmp_path / "link").symlink_to(base)
    given_paths = [(f"output {i}", (tmp_path / ("link" if link and i % 2 else "real")).joinpath(*p)) for i, p in enumerate(paths)]
    tuples = [tuple(p) for p in paths]
    clash = any(a[: len(b)] == b or b[: len(a)] == a for i, a in enumerate(tuples) for b in tuples[i + 1 :])
    if clash:
        with pytest.raises(UsageError, match=r"the same|lies inside"):
            check_outputs_apart(given_paths)
    else:
        check_outputs_apart(given_paths)


@pytest.mark.parametrize("resume", [["--resume"], []])
def test_dip_sample_png_dir_that_is_the_shard_folder_is_refused_the_first_time(tmp_path: Path, no_sampling,
                                                                              resume: list[str]) -> None:  # fmt: skip
    """Without --resume too: a later --resume of the same --out would take the PNGs' folder for its shards."""
    out = tmp_path / "q.npz"
    argv = ["--num-samples", "2", "--steps", "1", *resume, "--out", out]
    code, err = run(cli.sample_main, *argv, "--png-dir", tmp_path / "q.npz.parts")
    one_line(code, err, 2, "--png-dir", "q.npz.parts", "the shard folder")
    code, err = run(cli.sample_main, *argv, "--png-dir", tmp_path / "q.npz.parts" / "pics")
    one_line(code, err, 2, "lies inside", "the shard folder")
    assert os.listdir(tmp_path) == []


def test_dip_sample_npz_inside_its_png_dir_is_refused(tmp_path: Path, no_sampling) -> None:
    code, err = run(cli.sample_main, "--num-samples", "1", "--steps", "1", "--out", tmp_path / "pics" / "q.npz",
                    "--png-dir", tmp_path / "pics")  # fmt: skip
    one_line(code, err, 2, "--out", "lies inside", "--png-dir")
    code, err = run(cli.sample_main, "--num-samples", "1", "--steps", "1", "--out", tmp_path / "q.npz",
                    "--png-dir", tmp_path / "q.png")  # fmt: skip
    one_line(code, err, 2, "the same")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("out", ["engines/dip-digits-32x32-fp32/q.npz", "engines/dip-digits-32x32-int8/a/q.npz",
                                 "engines/dip-digits-32x32-calib/q.npz"])  # fmt: skip
def test_dip_sample_never_writes_into_a_folder_the_tool_exports_to(tmp_path: Path, monkeypatch, no_sampling, out: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, "--num-samples", "1", "--steps", "1", "--backend", "onnx:fp32", "--out", out)
    one_line(code, err, 2, "lies inside the export folder")
    code, err = run(cli.sample_main, "--num-samples", "1", "--steps", "1", "--png-dir", Path(out).parent, "--out", "q.npz")
    one_line(code, err, 2, "--png-dir", "the export folder")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- never inside an export


def test_no_export_is_written_inside_another(tmp_path: Path, export: Path, loaded) -> None:
    before = sorted(p.relative_to(export) for p in export.rglob("*"))
    with pytest.raises(UsageError, match=f"lies inside the export {export}"):
        export_onnx(loaded, image_size=SIZE, output_dir=export / "sub" / "deeper")
    with pytest.raises(UsageError, match="lies inside the export"), atomic_dir(export / "x", problem_of=ownership_problem):
        pass
    (tmp_path / "via").symlink_to(export)
    with pytest.raises(UsageError, match="lies inside the export"):
        export_onnx(loaded, image_size=SIZE, output_dir=tmp_path / "via" / "sub")
    assert sorted(p.relative_to(export) for p in export.rglob("*")) == before
    assert ownership_problem(export) is None  # still replaceable


def test_dip_export_onnx_inside_an_export_is_refused_before_loading(tmp_path: Path, export: Path) -> None:
    code, err = run(cli.export_main, "onnx", "--output-dir", export / "sub")
    one_line(code, err, 2, "lies inside the export", str(export))
    assert not (export / "sub").exists()


@pytest.mark.parametrize("text", [json.dumps({"format": "web-app/2"}), "[" * 10_000, "not json"])
def test_a_manifest_of_another_program_above_is_no_export(tmp_path: Path, text: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    with atomic_dir(tmp_path / "exp", problem_of=ownership_problem) as tmp:
        (tmp / "f").write_text("x")
    assert (tmp_path / "exp" / "f").read_text() == "x"


# ---------------------------------------------------------------- a folder its manifest does not list


names = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join)


@FAST
@given(files=st.sets(names, min_size=1, max_size=4), folders=st.sets(names, max_size=3))
def test_every_unlisted_entry_is_found_folders_included(tmp_path: Path, files: set[str], folders: set[str]) -> None:
    root = tmp_path / "f"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    listed = {f for f in files if not any(g.startswith(f + "/") for g in files)}  # a name is a file or a folder
    for name in sorted(listed):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    holders = {"/".join(n.split("/")[:i]) for n in listed for i in range(1, n.count("/") + 1)}
    extra = set()
    for folder in folders:
        if any(folder == n or folder.startswith(n + "/") for n in listed):
            continue  # would be a folder where a listed file is
        (root / folder).mkdir(parents=True, exist_ok=True)
        parts = folder.split("/")
        extra |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)} - holders
    assert set(unlisted_entries(root, listed)) == extra


def test_an_export_with_a_user_s_empty_folders_is_not_replaced(tmp_path: Path, export: Path, loaded) -> None:
    (export / "photos" / "2024" / "raw").mkdir(parents=True)
    assert "photos" in (ownership_problem(export) or "")
    with pytest.raises(UsageError, match=r"does not list.*photos"):
        export_onnx(loaded, image_size=SIZE, output_dir=export)
    code, err = run(cli.export_main, "onnx", "--output-dir", export)
    one_line(code, err, 2, "does not list", "photos")
    assert (export / "photos" / "2024" / "raw").is_dir()
    (export / "photos" / "2024" / "raw").rmdir()
    (export / "photos" / "2024").rmdir()
    (export / "photos").rmdir()
    assert ownership_problem(export) is None  # without the user's folders it is the tool's again


# ---------------------------------------------------------------- a quantized export: everything before the first export


@pytest.fixture
def no_export(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an export started")

    monkeypatch.setattr(onnx_export, "export_submodel", refuse)


def test_int8_on_the_fly_refuses_a_user_folder_before_the_fp32_export(tmp_path: Path, monkeypatch, loaded, no_export) -> None:
    from dip_export.export.quantize import ensure_int8_export, int8_dir

    monkeypatch.chdir(tmp_path)
    folder = int8_dir(loaded, SIZE, "onnx")
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"int8.*is not an export of this tool"):
        ensure_int8_export(loaded, image_size=SIZE)
    assert not default_export_dir(loaded.name, "fp32", SIZE).exists()
    assert (folder / "notes.txt").read_text() == "mine"


def test_dip_sample_int8_refuses_a_user_folder_before_the_fp32_export(tmp_path: Path, monkeypatch, no_export) -> None:
    monkeypatch.chdir(tmp_path)
    folder = Path("engines/dip-digits-32x32-int8")
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    code, err = run(cli.sample_main, "--backend", "onnx:int8", "--classes", "1", "--seeds", "0", "--steps", "2",
                    "--out", tmp_path / "i8.npz")  # fmt: skip
    one_line(code, err, 2, "dip-digits-32x32-int8", "is not an export of this tool")
    assert sorted(os.listdir("engines")) == ["dip-digits-32x32-int8"]


def _calibration_cache(loaded, size) -> Path:
    from dip_export.export.calibration import CalibrationSettings, cache_path

    folder = Path("engines") / f"{loaded.name}-{size[0]}x{size[1]}-calib"
    folder.mkdir(parents=True, exist_ok=True)
    return cache_path(loaded, size, CalibrationSettings(), folder)


@pytest.mark.parametrize("bad", ["symlink", "nan", "label", "folder"])
def test_a_bad_calibration_cache_is_refused_before_the_fp32_export(tmp_path: Path, monkeypatch, loaded, no_export,
                                                                   bad: str) -> None:  # fmt: skip
    from dip_export.export.quantize import export_int8

    monkeypatch.chdir(tmp_path)
    path = _calibration_cache(loaded, SIZE)
    if bad == "symlink":
        (tmp_path / "elsewhere.npz").write_bytes(b"x")
        path.symlink_to(tmp_path / "elsewhere.npz")
    elif bad == "folder":
        shutil.rmtree(path.parent)
        path.parent.write_text("not a folder")
    else:
        c = loaded.config
        x = np.zeros((2, c.in_channels, *SIZE), np.float32)
        y = np.full((2,), c.null_class + 5 if bad == "label" else 0, np.int64)
        tokens = np.zeros((2, (SIZE[0] // c.patch_size) * (SIZE[1] // c.patch_size), c.hidden_size), np.float32)
        t = np.full((2,), np.nan if bad == "nan" else 0.5, np.float32)
        np.savez(path, **{"backbone/count": np.array(1), "detailer/count": np.array(1), "backbone/0/x": x,
                          "backbone/0/t": t, "backbone/0/y": y, "detailer/0/x": x, "detailer/0/tokens": tokens})  # fmt: skip
    with pytest.raises(DipError, match="calib"):
        export_int8(loaded, image_size=SIZE, output_dir=tmp_path / "e_int8")
    assert not default_export_dir(loaded.name, "fp32", SIZE).exists() and not (tmp_path / "e_int8").exists()


def test_an_int8_export_never_goes_over_the_fp32_export_it_quantizes(tmp_path: Path, monkeypatch, loaded, no_export) -> None:
    from dip_export.export.quantize import export_int8

    monkeypatch.chdir(tmp_path)
    fp32 = default_export_dir(loaded.name, "fp32", SIZE)
    for out in (fp32, fp32.parent):
        with pytest.raises(UsageError, match="fp32"):
            export_int8(loaded, image_size=SIZE, output_dir=out)
    assert not fp32.exists()


def test_a_foreign_swap_journal_beside_the_int8_folder_is_refused_before_the_fp32_export(
    tmp_path: Path, monkeypatch, loaded, no_export
) -> None:
    from dip_export.export.quantize import export_int8
    from dip_export.ownership import journal_path

    monkeypatch.chdir(tmp_path)
    journal = journal_path(tmp_path / "e_int8")
    journal.write_text("{}")
    with pytest.raises(DipError, match="not a swap journal this tool wrote"):
        export_int8(loaded, image_size=SIZE, output_dir=tmp_path / "e_int8")
    assert not default_export_dir(loaded.name, "fp32", SIZE).exists() and journal.read_text() == "{}"
