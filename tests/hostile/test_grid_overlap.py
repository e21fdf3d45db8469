"""Stored fitted grids never contradict each other: two entries that would serve one run (the same solver, count,
shift and interval, guidance bands sharing a weight) are refused when read, whatever their order; the writer replaces
every entry the new one overlaps.

`check_grid_entries` and `stored_with` are property-tested; a checkpoint is refused through dip-sample,
DiPPipeline.load and dip-export onnx, and an export manifest through DiPPipeline.load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from dip_export import DiPPipeline
from dip_export.cli import export_app, sample_app
from dip_export.errors import UsageError
from dip_export.sampling.grids import check_grid_entries, overlap, stored_with

DEMO = Path(__file__).resolve().parents[2] / "dip_export" / "demo" / "dip-digits.safetensors"
with safe_open(str(DEMO), "pt") as _f:
    DEMO_SAMPLING = json.loads(_f.metadata()["dip_sampling"])
GRID = DEMO_SAMPLING["grids"][0]  # a real fitted entry

weights = st.integers(0, 40).map(lambda k: k / 4)  # guidance weights on a quarter grid: touching bands happen


@st.composite
def bands(draw):
    lo, hi = sorted((draw(weights), draw(weights)))
    return [lo, hi]


@given(bands(), bands(), st.booleans())
def test_two_entries_are_refused_exactly_when_some_guidance_would_match_both(a, b, flipped):
    first, second = {**GRID, "cfg": a}, {**GRID, "cfg": b}
    shared = a[0] <= b[1] and b[0] <= a[1]
    entries = [second, first] if flipped else [first, second]
    if shared:
        with pytest.raises(UsageError, match="grid entries 1 and 2 serve the same solver, count, shift, interval"):
            check_grid_entries(entries, 100)
    else:
        assert check_grid_entries(entries, 100) == entries
    assert overlap(first, second) == shared == overlap(second, first)


@given(st.sampled_from(["nfe", "shift", "interval", "sampler"]), bands())
def test_entries_for_another_run_never_clash(key, band):
    other = {"nfe": GRID["nfe"] + 1, "shift": 2.0, "interval": [0.0, 1.0], "sampler": "ab2"}[key]
    changed = {**GRID, key: other}
    if key == "nfe":
        changed["grid"] = [i / changed["nfe"] for i in range(changed["nfe"] + 1)]
    if key == "sampler":
        changed["nfe"] = GRID["nfe"]
    assert not overlap({**GRID, "cfg": band}, {**changed, "cfg": band})


@given(st.lists(bands(), max_size=6), bands())
def test_the_writer_leaves_no_two_entries_that_overlap(olds, new):
    sampling: dict = {}
    for band in [*olds, new]:
        sampling, _ = stored_with(sampling, {**GRID, "cfg": band})
    check_grid_entries(sampling["grids"], 100)  # what it writes, it reads
    assert sampling["grids"][-1]["cfg"] == new


def _two_grids(tmp_path: Path, order: tuple[int, int]) -> Path:
    with safe_open(str(DEMO), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    twin = {**GRID, "grid": [round(t * 0.999, 6) if 0 < t < 1 else t for t in GRID["grid"]]}
    pair = [GRID, twin]
    meta["dip_sampling"] = json.dumps({**DEMO_SAMPLING, "grids": [pair[order[0]], pair[order[1]]]})
    path = tmp_path / f"two{order[0]}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("order", [(0, 1), (1, 0), (0, 0)])
def test_a_checkpoint_with_two_grids_for_one_run_is_refused_on_every_surface(tmp_path, monkeypatch, order):
    monkeypatch.chdir(tmp_path)
    path = _two_grids(tmp_path, order)
    line = f"{path}: bad stored sampling defaults dip_sampling (grid entries 1 and 2 serve the same solver, count"
    result = CliRunner().invoke(sample_app, [str(path), "--num-samples", "1", "--out", "x.npz"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith(f"error: {line}"), result.output
    result = CliRunner().invoke(export_app, ["onnx", str(path), "--output-dir", "e"])
    assert result.exit_code == 1 and line in result.output
    with pytest.raises(Exception, match="grid entries 1 and 2 serve the same"):
        DiPPipeline.load(str(path))
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "e").exists()


def test_an_export_whose_manifest_holds_two_grids_for_one_run_is_refused(pristine: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    manifest = folder / "manifest.json"
    data = json.loads(manifest.read_text())
    data["sampling"] = {**data.get("sampling", {}), "grids": [GRID, GRID]}
    manifest.write_text(json.dumps(data))
    with pytest.raises(Exception, match="grid entries 1 and 2 serve the same"):
        DiPPipeline.load(folder)
