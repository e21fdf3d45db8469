"""Stored grid entries (manifest `sampling.grids`, .safetensors `dip_sampling`): the keys `dip-export schedule`
writes, each value within the limits of the sampler settings it serves, for a solver a grid is fitted for."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint
from dip_export.config import check_sampling_defaults
from dip_export.errors import CheckpointError, DipError, ExportError, UsageError
from dip_export.sampling.grids import check_grid_entries
from dip_export.settings import MAX_CFG, MAX_SHIFT
from tests.hostile.test_stored_and_weights import _with_metadata
from tests.test_hostile import one_line, sample

NFE = 4
BASE: dict[str, Any] = {
    "sampler": "unipc", "nfe": NFE, "cfg": [1.0, 3.0], "shift": 1.0, "interval": [0.1, 1.0],
    "grid": [0.0, 0.1, 0.4, 0.8, 1.0], "fit": {"trials": 3, "shape": [0.5], "reference": "ab3 512"},
}  # fmt: skip
NUMBERS = st.one_of(
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1e-300, 1e300]),
    st.booleans(),
)
VALUES = st.one_of(NUMBERS, st.text(max_size=5), st.none(), st.lists(NUMBERS, max_size=3))


def _number(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or (type(v) is int and abs(v) < 10**308)


def _valid(entry: dict[str, Any]) -> bool:
    """What the settings allow, written out independently of the code under test."""
    if set(entry) - set(BASE) or set(BASE) - {"fit"} - set(entry):
        return False
    cfg, interval, shift = entry["cfg"], entry["interval"], entry["shift"]
    return (
        entry["sampler"] in ("ab2", "ab3", "dpmpp_2m", "unipc")
        and entry["nfe"] == NFE and entry["grid"] == BASE["grid"]
        and isinstance(cfg, list) and len(cfg) == 2 and all(_number(v) and 0 <= v <= MAX_CFG for v in cfg) and cfg[0] <= cfg[1]
        and _number(shift) and 0 < shift <= MAX_SHIFT
        and isinstance(interval, list) and len(interval) == 2 and all(_number(v) and -1 <= v <= 2 for v in interval)
        and interval[0] < interval[1]
        and entry.get("fit", BASE["fit"]) == BASE["fit"]
    )  # fmt: skip


@given(
    key=st.sampled_from([*BASE, "x"]),
    value=st.one_of(VALUES, st.sampled_from(["euler", "heun", "ab2", "dpmpp_2m"]), st.lists(NUMBERS, min_size=2, max_size=2)),
    drop=st.booleans(),
)
def test_an_entry_is_accepted_exactly_when_the_settings_allow_it(key: str, value: Any, drop: bool) -> None:
    # a shift so small that the run's own step times collapse in float32 is refused by the settings themselves
    # (tests/hostile/test_stepped_grid.py); where that starts depends on the solver's grid, so not modelled here
    assume(not (key == "shift" and _number(value) and 0 < value < 1e-6))
    entry = dict(BASE)
    if drop and key in entry:
        del entry[key]
    else:
        entry[key] = value
    try:
        checked = check_grid_entries([entry], 10_000)
    except UsageError as err:
        assert not _valid(entry), err
        assert len(str(err).splitlines()) == 1 and "AAAA" not in str(err)
        return
    assert _valid(entry) and checked == [entry]


def test_the_reported_entries_are_refused() -> None:
    for change in ({"x": "A" * 50_000}, {"shift": 1e300}, {"cfg": [-1e300, 1e300]}, {"interval": [-1e300, 1e300]},
                   {"sampler": "euler", "cfg": [0, 100]}, {"fit": {"x": "A" * 50_000}}):  # fmt: skip
        with pytest.raises(UsageError) as err:
            check_sampling_defaults({"grids": [{**BASE, **change}]})
        assert "AAAA" not in str(err.value) and "1e+300" not in str(err.value)


def _demo_grids() -> list[dict[str, Any]]:
    return load_checkpoint(DEMO_CHECKPOINT).sampling["grids"]


BAD = [{"x": "A" * 5000}, {"shift": 1e300}, {"sampler": "euler", "cfg": [0, 100]}, {"interval": [-1e300, 1e300]}]


@pytest.mark.parametrize("change", BAD)
def test_an_export_manifest_with_such_an_entry_is_refused(tmp_path: Path, export: Path, change: dict, no_sampling) -> None:
    path = export / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.setdefault("sampling", {})["grids"] = [{**_demo_grids()[0], **change}]
    path.write_text(json.dumps(manifest))
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", out)
    one_line(code, err, 1, "manifest.json", "grid entry")
    assert "AAAA" not in err and not out.exists()
    with pytest.raises(ExportError, match="grid entry"):
        DiPPipeline.load(export, device="cpu")


@pytest.mark.parametrize("change", BAD)
def test_a_safetensors_file_with_such_an_entry_is_refused(tmp_path: Path, change: dict, no_sampling) -> None:
    sampling = load_checkpoint(DEMO_CHECKPOINT).sampling
    sampling["grids"] = [{**sampling["grids"][0], **change}]
    path = _with_metadata(tmp_path, dip_sampling=sampling)
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*grid entry"):
        DiPPipeline.load(path, device="cpu")
    code, err = sample(path, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "m.safetensors", "grid entry")
    assert "AAAA" not in err


def test_the_demo_models_grids_still_load() -> None:
    assert len(_demo_grids()) == 3
    with pytest.raises(DipError):  # the control: the same file's grid made unknown-keyed is not
        check_grid_entries([{**_demo_grids()[0], "y": 1}], 10_000)
