"""Fitted time grids stored with a model: looked up by solver, evaluation count and guidance band.

A model's sampling defaults may hold `grids`, a list of entries
`{"sampler", "nfe", "cfg": [lo, hi], "shift", "interval": [lo, hi], "grid": [0, ..., 1], "fit": {...}}`.
Sampling uses an entry's grid when the solver, the evaluation count, the shift and the guidance
interval are the same and the guidance weight lies in the band; otherwise the default warp. Where
neither the solver nor the step count was chosen (the model's recommendation), a fitted grid for the
guidance picks both: the fitted grid is the model's recommendation at that guidance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from dip_export.errors import UsageError
from dip_export.sampling.rules import SamplerSettings
from dip_export.settings import value_kind

MAX_GRIDS = 64  # entries a file may hold


def check_grid_entries(entries: Any, max_steps: int) -> list[dict[str, Any]]:
    """Stored grid entries, each well formed (as read from a file the tool may not have written)."""
    if not isinstance(entries, list) or len(entries) > MAX_GRIDS:
        raise UsageError(f"grids must be a list of at most {MAX_GRIDS} entries")
    return [_check_entry(e, max_steps) for e in entries]


def _check_entry(entry: Any, max_steps: int) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise UsageError("a grid entry must be an object")
    nfe = entry.get("nfe")
    if type(nfe) is not int or not 1 <= nfe <= max_steps:
        raise UsageError(f"grid entry nfe must be an integer in 1..{max_steps}, got {value_kind(nfe)}")
    for key in ("cfg", "interval"):
        pair = entry.get(key)
        if not (isinstance(pair, list) and len(pair) == 2 and all(_number(v) for v in pair) and pair[0] <= pair[1]):
            raise UsageError(f"grid entry {key} must be [lo, hi], got {value_kind(pair)}")
    if not (_number(entry.get("shift")) and entry["shift"] > 0):
        raise UsageError(f"grid entry shift must be a positive number, got {value_kind(entry.get('shift'))}")
    grid = entry.get("grid")
    if not (isinstance(grid, list) and len(grid) == nfe + 1 and all(_number(v) for v in grid)):
        raise UsageError("grid entry grid must be a list of nfe + 1 numbers")
    try:
        SamplerSettings(steps=nfe, method=str(entry.get("sampler")), grid=tuple(grid))  # sampler name and grid shape
    except UsageError:
        raise UsageError(f"grid entry sampler ({value_kind(entry.get('sampler'))}) or grid does not fit its nfe") from None
    return dict(entry)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def matches(entry: Mapping[str, Any], settings: SamplerSettings) -> bool:
    """Whether a stored grid was fitted for these settings."""
    lo, hi = entry["cfg"]
    return (
        entry["sampler"] == settings.method
        and entry["nfe"] == settings.steps
        and lo <= settings.cfg <= hi
        and float(entry["shift"]) == settings.shift
        and [float(v) for v in entry["interval"]] == [float(v) for v in settings.interval]
    )


def with_stored_grid(settings: SamplerSettings, sampling: Mapping[str, Any]) -> SamplerSettings:
    """`settings` with the model's fitted grid where one matches (and none was given), else unchanged."""
    if settings.grid is not None:
        return settings
    for entry in sampling.get("grids", []):
        if matches(entry, settings):
            return replace(settings, grid=tuple(float(v) for v in entry["grid"]))
    return settings


def with_fitted_solver(settings: SamplerSettings, sampling: Mapping[str, Any]) -> SamplerSettings:
    """`settings` with the solver and evaluation count of the model's fitted grid for its guidance, shift and
    interval, and that grid; unchanged where none matches. Where several match: the one for `settings`' own
    solver and count (the model's recommendation), else the fewest evaluations. For settings whose solver
    and count were not chosen by the caller."""
    if settings.grid is not None:
        return settings
    fitted = [e for e in sampling.get("grids", []) if matches(e, replace(settings, method=e["sampler"], steps=e["nfe"]))]
    if not fitted:
        return settings
    best = min(fitted, key=lambda e: ((e["sampler"], e["nfe"]) != (settings.method, settings.steps), e["nfe"], str(e["sampler"])))
    return replace(settings, method=best["sampler"], steps=best["nfe"], grid=tuple(float(v) for v in best["grid"]))


def stored_with(sampling: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling defaults with `entry` added, replacing an entry for the same solver, count, shift, interval and band."""
    key = ("sampler", "nfe", "cfg", "shift", "interval")
    kept = [e for e in sampling.get("grids", []) if any(e[k] != entry[k] for k in key)]
    return {**sampling, "grids": [*kept, dict(entry)]}


def recommended(sampling: Mapping[str, Any], settings: SamplerSettings) -> dict[str, Any]:
    """Sampling defaults whose recommended solver, steps, guidance and shift are `settings`' (grids kept)."""
    return {**sampling, "sampler": settings.method, "steps": settings.steps, "cfg": settings.cfg, "shift": settings.shift}


def grid_entry(settings: SamplerSettings, band: Sequence[float], fit: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of a fitted grid (`settings.grid` set)."""
    if settings.grid is None:
        raise UsageError("no grid to store")
    return {
        "sampler": settings.method, "nfe": settings.steps, "cfg": [float(band[0]), float(band[1])],
        "shift": settings.shift, "interval": [float(v) for v in settings.interval],
        "grid": [float(v) for v in settings.grid], "fit": dict(fit),
    }  # fmt: skip
