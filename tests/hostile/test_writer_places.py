"""Every writer of a user's output (samples npz, PNGs, bench JSON and plot, checkpoints) checks its place in the one
writer they share (`io.atomic_path`), whoever calls it: never inside an export, a shard folder, an export the tool
makes under engines/, nor in place of the tool's caches. The Python API's writers are refused as the commands are,
and the artifact stays as it was (an export still replaceable)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dip_export.checkpoint import save_checkpoint
from dip_export.errors import UsageError
from dip_export.export.manifest import ownership_problem
from dip_export.io import save_json, save_npz, save_png

PLACES = ["exp/m", "o.npz.parts/m", "engines/dip-digits-32x32-fp32/m", "engines/yardstick/m", "exp/sub/deeper/m"]


def _writers(loaded) -> dict:
    image = np.zeros((1, 8, 8, 3), np.uint8)
    return {
        "checkpoint": lambda p: save_checkpoint(f"{p}.safetensors", loaded.model),
        "npz": lambda p: save_npz(Path(f"{p}.npz"), image),
        "png": lambda p: save_png(Path(f"{p}.png"), image[0], "samples-grid"),
        "json": lambda p: save_json(Path(f"{p}.json"), {"a": 1}, "bench-report"),
    }


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("writer", ["checkpoint", "npz", "png", "json"])
def test_an_api_writer_never_writes_inside_an_artifact(tmp_path: Path, monkeypatch, loaded, pristine, place, writer):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(pristine, tmp_path / "exp")
    (tmp_path / "o.npz.parts").mkdir()
    (tmp_path / "engines").mkdir()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match=r"lies inside|takes the place of") as caught:
        _writers(loaded)[writer](tmp_path / place)
    assert "\n" not in str(caught.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert ownership_problem(tmp_path / "exp") is None  # the export is still the tool's to replace


def test_a_bench_report_never_takes_the_auto_cache_place(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="takes the place of the --backend auto cache"):
        save_json(Path("engines/auto-backend.json"), {"a": 1}, "bench-report")
    assert not (tmp_path / "engines").exists()


def test_a_checkpoint_named_as_a_folder_or_with_broken_weights_is_never_written(tmp_path: Path, loaded) -> None:
    with pytest.raises(UsageError, match="ends with '/'"):
        save_checkpoint(f"{tmp_path}/c.safetensors/", loaded.model)
    broken = type(loaded.model)(loaded.config)
    next(broken.parameters()).data.fill_(float("nan"))
    with pytest.raises(UsageError, match="NaN or infinite"):
        save_checkpoint(tmp_path / "n.safetensors", broken)
    for bad in (5, b"/tmp/x.safetensors", f"{tmp_path}/e\0.safetensors"):
        with pytest.raises(UsageError, match="path must be a path"):
            save_checkpoint(bad, loaded.model)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", [5, b"/tmp/x.npz", None, "", "/tmp/a\x00b.npz"])
def test_a_writers_path_that_is_no_text_is_one_line(tmp_path: Path, path) -> None:
    image = np.zeros((1, 8, 8, 3), np.uint8)
    for write in (lambda: save_npz(path, image), lambda: save_png(path, image[0], "samples-grid"),
                  lambda: save_json(path, {"a": 1}, "bench-report")):  # fmt: skip
        with pytest.raises(UsageError, match="the output path must be a path") as caught:
            write()
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "kind", "words"),
    [({"a": float("nan")}, "bench-report", "not JSON values"), ({"a": object()}, "bench-report", "not JSON values"),
     ([1, 2], "bench-report", "holds a dict"), ({"a": 1}, "nope", "no JSON output kind")],
)  # fmt: skip
def test_save_json_refuses_what_the_reader_would_before_any_file(tmp_path: Path, data, kind, words) -> None:
    with pytest.raises(UsageError, match=words):
        save_json(tmp_path / "r.json", data, kind)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(UsageError, match="not JSON values"):
        save_json(tmp_path / "r.json", {"a": deep}, "bench-report")
    with pytest.raises(UsageError, match="no PNG output kind"):
        save_png(tmp_path / "p.png", np.zeros((8, 8, 3), np.uint8), "nope")
    assert list(tmp_path.iterdir()) == []


def test_save_checkpoint_refuses_a_name_its_reader_refuses(tmp_path: Path, loaded) -> None:
    with pytest.raises(UsageError, match="rename the file") as caught:
        save_checkpoint(tmp_path / "ctrl\x1b.safetensors", loaded.model)
    assert "\x1b" not in str(caught.value) and list(tmp_path.iterdir()) == []
