"""No output of any command lies inside an artifact of this tool, checked before any work.

An artifact is replaced or read whole: an export (a folder whose manifest.json has this tool's format), a shard
folder (OUT.npz.parts), an export folder the tool makes on the fly under engines/ (MODEL-HxW-KIND). A file
written inside one would pass once and then block the artifact (an export no longer replaceable, a cached
export no longer the tool's). One check (`io.check_outputs` / `io.check_output_place`) serves file outputs,
folder outputs and export folders of every command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.export import onnx_export
from dip_export.export.manifest import ownership_problem
from dip_export.export.onnx_export import export_onnx, managed_folders
from dip_export.io import (
    EXPORT_ROOT,
    MANAGED_NAME,
    check_output_file,
    check_output_folder,
    check_outputs,
    check_replaceable_folder,
)
from tests.test_hostile import SIZE, one_line, run

# where an output goes -> whether that lies inside an artifact (PLACE: takes the place of the tool's own folder)
PLACE = "place"
PLACES: dict[str, bool | str] = {
    "engines": PLACE,  # the folder of on-the-fly exports and caches itself
    "elink": PLACE,  # a symlink to it
    "sub/../engines": PLACE,  # refused too, as any path going into a folder and back out
    "plain/x": False,
    "exp/x": True,
    "exp/a/b/x": True,
    "link/x": True,  # a symlink to the export
    "r.npz.parts/x": True,
    "r.npz.parts/a/x": True,
    "engines/m-32x32-fp16/x": True,
    "engines/m-32x64-int8-trt/a/x": True,
    "engines/m-32x32-fp16": False,  # the managed folder itself: what the tool makes there
    "engines/x": False,
    "engines/mine/x": False,  # not a name the tool makes
    "other/x": False,  # a manifest.json of someone else's format
    "r.npz.partsx/x": False,
}
KINDS = ("file", "folder", "export", "outputs")


def _artifacts(root: Path) -> None:
    for name, fmt in (("exp", "dip-export/1"), ("other", "other-tool/3")):
        (root / name).mkdir(exist_ok=True)
        (root / name / "manifest.json").write_text(json.dumps({"format": fmt}))
    if not (root / "link").exists():
        (root / "link").symlink_to(root / "exp")
    if not (root / "elink").exists():
        (root / "elink").symlink_to(root / "engines")
    (root / "sub").mkdir(exist_ok=True)
    (root / "r.npz.parts").mkdir(exist_ok=True)
    (root / "engines").mkdir(exist_ok=True)


def _check(kind: str, path: Path) -> None:
    if kind == "file":  # as a command checks a file it writes
        check_outputs([("--out", path)])
        check_output_file(path)
    elif kind == "folder":
        check_output_folder(path, lambda name: True)
    elif kind == "export":
        check_replaceable_folder(path, ownership_problem)
    else:
        check_outputs([("--json", path), ("--plot", None)])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), place=st.sampled_from(sorted(PLACES)))
def test_an_output_is_refused_exactly_when_it_lies_inside_an_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, place: str
) -> None:
    monkeypatch.chdir(tmp_path)
    _artifacts(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    target = tmp_path / place
    if PLACES[place] == PLACE:
        own = r"takes the place of the folder of on-the-fly exports and caches engines|is a symlink|and back out"
        with pytest.raises(UsageError, match=own):
            _check(kind, target)
    elif PLACES[place]:
        refused = r"lies inside the (export|shard folder|export folder) .*name a place outside it"
        with pytest.raises(UsageError, match=refused) as err:
            _check(kind, target)
        assert len(str(err.value).splitlines()) == 1
    else:
        _check(kind, target)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # a check writes nothing


def test_every_folder_the_tool_makes_on_the_fly_is_recognised() -> None:
    assert onnx_export.EXPORT_ROOT == EXPORT_ROOT
    for name in ("dip-digits", "golden", "dip-xl-16", "a"):
        for folder in managed_folders(name, (32, 64)):
            assert folder.parent == EXPORT_ROOT and MANAGED_NAME.fullmatch(folder.name), folder


def _fake_export(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "dip-export/1"}))
    return folder


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_dip_sample_writes_nothing_inside_an_artifact(tmp_path: Path, monkeypatch, no_sampling) -> None:
    monkeypatch.chdir(tmp_path)
    exp = _fake_export(tmp_path / "exp")
    (tmp_path / "r.npz.parts").mkdir()
    before = _listing(tmp_path)
    common = ("--classes", "1", "--seeds", "0", "--steps", "1")
    for args, words in (
        (("--out", exp / "x.npz"), ("--out", "lies inside the export")),
        (("--out", tmp_path / "a.npz", "--png-dir", exp / "pngs"), ("--png-dir", "lies inside the export")),
        (("--out", tmp_path / "r.npz.parts" / "x.npz"), ("--out", "lies inside the shard folder")),
        (("--out", "engines/both-32x32-fp32/x.npz"), ("--out", "lies inside the export folder engines/both-32x32-fp32")),
        (("--out", tmp_path / "pd" / "x.npz", "--png-dir", tmp_path / "pd"), ("--out", "lies inside", "--png-dir")),
    ):
        code, err = run(cli.sample_main, *common, *args)
        one_line(code, err, 2, *words)
    assert _listing(tmp_path) == before


def test_dip_bench_writes_nothing_inside_an_artifact(tmp_path: Path, monkeypatch, no_sampling) -> None:
    monkeypatch.chdir(tmp_path)
    exp = _fake_export(tmp_path / "exp")
    (tmp_path / "r.npz.parts").mkdir()
    before = _listing(tmp_path)
    common = ("--backends", "torch", "--steps", "1", "--warmup", "0", "--repeats", "1", "--max-repeats", "1")
    for args, words in (
        (("--json", tmp_path / "r.npz.parts" / "r.json"), ("--json", "lies inside the shard folder")),
        (("--json", exp / "r.json"), ("--json", "lies inside the export")),
        (("--plot", exp / "sub" / "p.png"), ("--plot", "lies inside the export")),
    ):
        code, err = run(cli.bench_main, *common, *args)
        one_line(code, err, 2, *words)
    assert _listing(tmp_path) == before


def test_dip_export_writes_nothing_inside_an_artifact(tmp_path: Path, monkeypatch, loaded) -> None:
    monkeypatch.chdir(tmp_path)
    exp = _fake_export(tmp_path / "exp")
    (tmp_path / "r.npz.parts").mkdir()
    before = _listing(tmp_path)
    code, err = run(cli.export_main, "onnx", "--output-dir", tmp_path / "r.npz.parts" / "e")
    one_line(code, err, 2, "the output folder", "lies inside the shard folder")
    code, err = run(cli.export_main, "onnx", "--output-dir", "engines/dip-digits-32x32-fp32/e")
    one_line(code, err, 2, "lies inside the export folder")
    code, err = run(cli.export_main, "schedule", "--output", exp / "s.safetensors", "--sampler", "euler", "--nfe", "4")
    one_line(code, err, 2, "--output", "lies inside the export")
    code, err = run(cli.export_main, "trt", "--output-dir", exp, "--timing-cache", exp / "t.cache")
    one_line(code, err, 2, "--timing-cache", "lies inside the export")
    for target in ("engines", "./engines/", tmp_path / "engines"):  # the tool's own folder: never an export
        code, err = run(cli.export_main, "onnx", "--output-dir", target)
        one_line(code, err, 2, "the output folder", "takes the place of the folder of on-the-fly exports")
    with pytest.raises(UsageError, match="lies inside the shard folder"):  # the Python API: the same check
        export_onnx(loaded, image_size=SIZE, output_dir=tmp_path / "r.npz.parts" / "e")
    with pytest.raises(UsageError, match="takes the place of the folder of on-the-fly exports"):
        export_onnx(loaded, image_size=SIZE, output_dir=Path("engines"))
    assert _listing(tmp_path) == before
    assert not os.path.exists(EXPORT_ROOT)
