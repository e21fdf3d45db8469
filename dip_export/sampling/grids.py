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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from dip_export.errors import UsageError
from dip_export.sampling.rules import MULTISTEP, SamplerSettings
from dip_export.settings import MAX_STEPS, exact_int, one_of, value_kind

MAX_GRIDS = 64  # entries a file may hold


def check_grid_entries(entries: Any, max_steps: int) -> list[dict[str, Any]]:
    """Stored grid entries, each well formed (as read from a file the tool may not have written)."""
    if not isinstance(entries, list) or len(entries) > MAX_GRIDS:
        raise UsageError(f"grids must be a list of at most {MAX_GRIDS} entries")
    checked = [_check_entry(e, max_steps) for e in entries]
    for i, entry in enumerate(checked):  # no two for one run: which were used would depend on the list's order
        if any(overlap(entry, other) for other in checked[:i]):
            raise UsageError(f"grid entries {next(j for j in range(i) if overlap(entry, checked[j])) + 1} and {i + 1} "
                             "serve the same solver, count, shift, interval and guidance")  # fmt: skip
    return checked


def overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two grid entries would both match some settings: the same solver, count, shift and interval, and
    guidance bands that share a weight (bands are closed: [1, 2] and [2, 3] share 2)."""
    same = a["sampler"] == b["sampler"] and a["nfe"] == b["nfe"] and float(a["shift"]) == float(b["shift"])
    same = same and [float(v) for v in a["interval"]] == [float(v) for v in b["interval"]]
    return same and float(a["cfg"][0]) <= float(b["cfg"][1]) and float(b["cfg"][0]) <= float(a["cfg"][1])


ENTRY_KEYS = ("sampler", "nfe", "cfg", "shift", "interval", "grid")  # every entry holds these (`grid_entry`)
FIT_NUMBERS = ("heldout_images", "search_seed", "trials", "below", "default_grid_db", "fitted_grid_db", "euler_100_db")
FIT_LISTS = ("train_seeds", "train_float_db", "shape")  # the fit's report (yardstick.fit_schedule): short number lists
FIT_TEXTS = ("reference", "score")
MAX_FIT_LIST = 16
MAX_FIT_TEXT = 200


def _check_entry(entry: Any, max_steps: int) -> dict[str, Any]:
    """An entry that `dip-export schedule` could have written: its keys, and each value within the limits of the
    settings it serves (the sampler settings' own checks: steps, guidance, shift, interval, grid), for a solver a
    grid is fitted for."""
    if not isinstance(entry, Mapping):
        raise UsageError("a grid entry must be an object")
    unknown = [k for k in entry if k not in (*ENTRY_KEYS, "fit")]
    missing = [k for k in ENTRY_KEYS if k not in entry]
    if unknown or missing:
        raise UsageError(f"a grid entry {'lacks the key ' + missing[0] if missing else 'holds an unknown key'}; known: "
                         f"{', '.join((*ENTRY_KEYS, 'fit'))}")  # fmt: skip
    _checked(entry, "nfe", lambda v: exact_int(v, "grid entry nfe", 1, max_steps))
    _checked(entry, "sampler", lambda v: one_of(v, "grid entry sampler", MULTISTEP))
    _checked(entry, "cfg", _band)
    _checked(entry, "shift", lambda v: SamplerSettings(shift=v))
    _checked(entry, "interval", lambda v: SamplerSettings(interval=v))
    _checked(entry, "grid", lambda v: SamplerSettings(steps=entry["nfe"], method=entry["sampler"], grid=_numbers(v)))
    if "fit" in entry:
        _checked(entry, "fit", _check_fit)
    return dict(entry)


def _checked(entry: Mapping[str, Any], key: str, check: Callable[[Any], Any]) -> None:
    """`check(entry[key])`, its refusal said without the value (stored values are never echoed)."""
    try:
        check(entry[key])
    except UsageError:
        raise UsageError(f"grid entry {key} ({value_kind(entry[key])}) is out of range or of the wrong type") from None


def _band(pair: Any) -> None:
    """[lo, hi] guidance weights, each a valid guidance weight, lo <= hi."""
    if not isinstance(pair, list) or len(pair) != 2:
        raise UsageError("a band is [lo, hi]")
    lo, hi = (SamplerSettings(cfg=v).cfg for v in pair)
    if lo > hi:
        raise UsageError("a band is lo <= hi")


def _numbers(values: Any) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) > MAX_STEPS + 1 or not all(_number(v) for v in values):
        raise UsageError("a list of numbers")
    return tuple(values)


def _check_fit(fit: Any) -> None:
    """The fit's report: known keys only, numbers, short number lists, short texts."""
    if not isinstance(fit, Mapping) or any(k not in (*FIT_NUMBERS, *FIT_LISTS, *FIT_TEXTS) for k in fit):
        raise UsageError("a fit report of known keys")
    for key, value in fit.items():
        if key in FIT_NUMBERS and not _number(value):
            raise UsageError(key)
        if key in FIT_LISTS and not (isinstance(value, list) and len(value) <= MAX_FIT_LIST and all(_number(v) for v in value)):
            raise UsageError(key)
        if key in FIT_TEXTS and not (isinstance(value, str) and len(value) <= MAX_FIT_TEXT):
            raise UsageError(key)


def _number(value: Any) -> bool:
    """A finite int or float (an int beyond float range is not one: it cannot become a time)."""
    return (type(value) is float and math.isfinite(value)) or (type(value) is int and abs(value) <= _FLOAT_MAX)


_FLOAT_MAX = 1.7e308


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


def stored_with(sampling: Mapping[str, Any], entry: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Sampling defaults with `entry` added, replacing every entry it `overlap`s (the same solver, count, shift and
    interval, a band sharing a guidance weight), and how many it replaced."""
    grids = list(sampling.get("grids", []))
    kept = [e for e in grids if not overlap(e, entry)]
    return {**sampling, "grids": [*kept, dict(entry)]}, len(grids) - len(kept)


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
