"""The sampler's settings, its time grid and its guidance rule: the one place each lives."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from dip_export.errors import NonFiniteError, UsageError
from dip_export.settings import (
    FORECASTS,
    MAX_CFG,
    MAX_IMAGE_SIDE,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SHIFT,
    MAX_STEPS,
    SOLVERS,
    exact_bool,
    exact_int,
    finite_float,
    guidance_interval,
    one_of,
    plain_items,
)

MULTISTEP = ("ab2", "ab3", "dpmpp_2m", "unipc")  # one evaluation per step, history across steps


class Denoiser(Protocol):
    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor: ...

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SamplerSettings:
    """How to integrate the flow ODE from noise (t = 0) to data (t = 1)."""

    steps: int = 100  # number of integration steps
    cfg: float = 1.0  # classifier-free guidance weight; 1 means no guidance
    shift: float = 1.0  # time shift t' = t / (t + (1 - t) * shift); 1 = none
    interval: tuple[float, float] = (0.1, 1.0)  # guidance applies where lo < t < hi (strict, float32)
    method: str = "euler"  # one of SOLVERS; steps = network evaluations, except heun (2N - 1)
    cache_interval: int = 1  # run the backbone every K evaluations; reuse or forecast its tokens between
    skip_uncond: bool = True  # skip the unconditional half where the guidance weight is 1
    token_forecast: str = "off"  # between refreshes: "off" reuses tokens, "linear"/"quadratic" extrapolate; "auto": per solver
    grid: tuple[float, ...] | None = None  # the steps + 1 grid times (0 ... 1), e.g. a fitted grid; None: the default

    def __post_init__(self) -> None:
        """Exact types and the limits of dip_export.settings; numpy scalars become Python numbers."""
        checked = {name: check(getattr(self, name)) for name, check in FIELD_CHECKS.items()}  # None too is refused
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        if self.grid is not None:
            check_grid(self.grid, self.steps, self.method)
        check_stepped_grid(self)
        check_token_cache(self)
        check_guidance_applies(self)


# Each field's own check (its type, range or name), apart from the others: what can be refused before a model's
# recommendations (the fields not given) are known.
FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "steps": lambda v: exact_int(v, "steps", 1, MAX_STEPS),
    "cfg": lambda v: finite_float(v, "guidance scale", 0.0, MAX_CFG),
    "shift": lambda v: finite_float(v, "shift", 0.0, MAX_SHIFT, above_lo=True),
    "interval": guidance_interval,
    "method": lambda v: one_of(v, "sampler", SOLVERS),
    "cache_interval": lambda v: exact_int(v, "cache interval", 1, MAX_STEPS),
    "skip_uncond": lambda v: exact_bool(v, "skip_uncond"),
    "token_forecast": lambda v: one_of(v, "token forecast", FORECASTS),
    "grid": lambda v: grid_times(v),
}


def grid_times(value: Any) -> tuple[float, ...] | None:
    """None (the default grid) or a list, tuple or 1-D array of numbers (ints or floats, read as `finite_float`
    reads them), read once and bounded; text, bytes, sets, mappings and tensors are no grid."""
    if value is None:
        return None
    items = plain_items(value, "time grid", MAX_STEPS + 1)
    if items is None:
        raise UsageError(f"a time grid must be a list of numbers, got {type(value).__name__}")
    if len(items) > MAX_STEPS + 1:
        raise UsageError(f"a time grid has at most {MAX_STEPS + 1} times ({MAX_STEPS} steps)")
    return tuple(finite_float(v, "a time grid's time", 0.0, 1.0) for v in items)


def field_values(fields: dict[str, Any]) -> dict[str, Any]:
    """The given SamplerSettings fields, each checked on its own and normalised (None: not given, left out).

    SamplerSettings runs it on every field; a command runs it on the options given, before any model is resolved,
    with the one check between them that no model can change (`check_given_together`); the others need the model's
    recommended values, or its fitted time grids, and run when the settings are made."""
    return {name: FIELD_CHECKS[name](value) for name, value in fields.items() if value is not None and name in FIELD_CHECKS}


def check_given_together(given: dict[str, Any]) -> None:
    """Checks between given fields (`field_values`' output) that hold whatever the model: a refresh interval longer
    than any run of the given steps (with the given solver, else the most evaluations a solver makes of them:
    Heun's 2N - 1). A model's fitted grid changes step times, never the number of evaluations."""
    if "cache_interval" not in given or "steps" not in given:
        return
    k, steps, method = given["cache_interval"], given["steps"], given.get("method")
    total = 2 * steps - 1 if method in (None, "heun") else steps
    if k > total:
        run = f"{total} network evaluation{'s' * (total != 1)} of {method}" if method else f"at most {total} network evaluations"
        raise TokenCacheNeverAppliesError(f"cache interval {k} is longer than the run ({run}, {steps} steps); give "
                                          f"--cache-interval 1..{total}")  # fmt: skip


# Checks of a run that need the sampler itself; `sampling.loop` (which imports these rules) registers them, and
# the package imports it, so every SamplerSettings made anywhere goes through them.
RUN_CHECKS: list[Callable[[SamplerSettings], None]] = []

# Backbone results a token forecast extrapolates through (sampling.tokens reads them here).
FORECAST_POINTS = {"off": 1, "linear": 2, "quadratic": 3}


def evaluations(settings: SamplerSettings) -> int:
    """Network evaluations per image: one per step, Heun's 2 * steps - 1."""
    return 2 * settings.steps - 1 if settings.method == "heun" else settings.steps


class TokenCacheNeverAppliesError(UsageError):
    """A backbone refresh interval longer than the run, or a token forecast no evaluation of the run could make:
    refused rather than run as something other than what was asked."""


def check_token_cache(settings: SamplerSettings) -> None:
    """Refuse a refresh interval longer than the run and a forecast that no evaluation of the run would make.

    A forecast through n backbone results is made at an evaluation after n refreshes of its kind (paired or
    conditional-only) and within the interval of the last; whether any evaluation of this run is one is decided
    by the run's own token schedule (host-side, stopping at the first evaluation that skips the backbone).
    """
    check_given_together({"cache_interval": settings.cache_interval, "steps": settings.steps, "method": settings.method})
    for check in RUN_CHECKS:  # the checks that need the sampler's own schedule (registered by sampling.loop)
        check(settings)


class GuidanceNeverAppliesError(UsageError):
    """A guidance weight other than 1 with an interval that holds no evaluation time of the run: it would change
    nothing (every evaluation is unguided), so it is refused rather than run as a silent no-op."""


def guided_evaluations(settings: SamplerSettings) -> int:
    """How many of the run's steps evaluate the guided field: the step times of its grid (0 <= t < 1) that the
    weight rule of its solver puts inside the guidance interval."""
    times = solver_grid(settings)[0][:-1]  # every solver decides a step's weight from its start time
    return sum(eval_weight(settings, t) != 1.0 for t in times)


def check_guidance_applies(settings: SamplerSettings) -> None:
    """Refuse guidance that no step of the run would use (cfg 1 needs no interval)."""
    if settings.cfg == 1.0:
        return
    lo, hi = settings.interval
    if guided_evaluations(settings) == 0:  # each solver's own rule (Heun's upper bound is inclusive)
        steps = "1 step (t = 0 only)" if settings.steps == 1 else f"{settings.steps} steps"
        raise GuidanceNeverAppliesError(
            f"guidance {settings.cfg:g} would never apply: the guidance interval {lo:g},{hi:g} holds no step "
            f"time of this run's grid ({settings.method}, {steps}, shift {settings.shift:g}); widen --guidance-interval, "
            "change --steps or --shift, or use --cfg 1"
        )


def checked_settings(value: Any) -> SamplerSettings:
    """Settings given to a call, built again from their fields so that every check runs: an instance changed after
    it was made, or of a subclass (whose own checks may be none), is taken as the plain settings its fields make."""
    if not issubclass(type(value), SamplerSettings):  # the type itself: a lying __class__ is not read
        raise UsageError(f"settings must be a SamplerSettings, got {type(value).__name__}")
    stored = object.__getattribute__(value, "__dict__")  # the values the instance holds: no property of a subclass runs
    names = [f.name for f in dataclasses.fields(SamplerSettings)]
    if not isinstance(stored, dict) or any(name not in stored for name in names):
        raise UsageError(f"settings must be a SamplerSettings, got a {type(value).__name__} without its fields")
    return SamplerSettings(**{name: stored[name] for name in names})


STORED_NAMES = {"sampler": "method", "guidance_interval": "interval"}  # stored defaults' (and the CLI's) field names


def stored_settings(stored: dict[str, Any]) -> SamplerSettings:
    """A model's stored sampling defaults (each already within its limits) as the settings they recommend, checked
    as a whole: the recommended guidance must apply to the recommended steps. Stored values are never echoed."""
    names = {f.name for f in dataclasses.fields(SamplerSettings)}
    known = {STORED_NAMES.get(k, k): v for k, v in stored.items() if STORED_NAMES.get(k, k) in names}
    if "interval" in known:
        known["interval"] = tuple(known["interval"])  # stored as a JSON list
    try:
        return SamplerSettings(**known)
    except GuidanceNeverAppliesError:
        raise UsageError("the stored guidance would never apply: the stored guidance interval holds no step time of "
                         "the stored steps") from None  # fmt: skip
    except TokenCacheNeverAppliesError:
        raise UsageError("the stored cache_interval or token_forecast would never apply: the stored (or default) steps "
                         "hold fewer evaluations than the interval, or too few to forecast") from None  # fmt: skip


def check_grid(grid: Sequence[float], steps: int, method: str) -> None:
    """A grid of `steps` steps: steps + 1 finite times rising strictly from 0 to 1; not for Heun (the release's)."""
    if method == "heun":
        raise UsageError("a custom time grid is for the one-evaluation solvers, not heun")
    if len(grid) != steps + 1:
        raise UsageError(f"a grid of {steps} steps has {steps + 1} times, got {len(grid)}")
    values = [float(v) for v in grid]
    if values[0] != 0.0 or values[-1] != 1.0 or not all(math.isfinite(v) for v in values):
        raise UsageError("a time grid must run from 0 to 1")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise UsageError("a time grid must rise strictly")


def check_stepped_grid(settings: SamplerSettings) -> None:
    """The times the solver steps on, as it computes them (float32), run from 0 to 1 and rise strictly. A shift so
    small that every time but the first rounds to 1 (or to no number at all), or a given grid finer than float32,
    would divide by a zero step once the run had begun: refused before any work."""
    times = solver_grid(settings)[0]
    if (times[0] == 0.0 and times[-1] == 1.0 and all(math.isfinite(t) for t in times)
            and all(a < b for a, b in itertools.pairwise(times))):  # fmt: skip
        return
    if settings.grid is not None:
        raise UsageError("the time grid has two times that are one float32 value; give times further apart")
    raise UsageError(f"shift {settings.shift:g} with {settings.steps} steps puts two step times on one float32 value "
                     "(or on none); give a larger --shift or fewer --steps")  # fmt: skip


def time_grid(steps: int, shift: float) -> Tensor:
    """The release's grid: linspace(0, 1 - 1/N, N) then 1.0, time-shifted; (N + 1,) float32. Steps and shift are
    checked as a run's are (whole steps in 1..MAX_STEPS, a finite shift in (0, MAX_SHIFT]), and so is the grid: a
    shift so small that two times fall on one float32 value (or on none) is refused (`check_stepped_grid`)."""
    steps = exact_int(steps, "steps", 1, MAX_STEPS)
    shift = finite_float(shift, "shift", 0.0, MAX_SHIFT, above_lo=True)
    t = torch.cat([torch.linspace(0, 1 - 1 / steps, steps), torch.ones(1)])
    grid = t / (t + (1 - t) * shift)
    if not (bool(torch.isfinite(grid).all()) and bool((grid[1:] > grid[:-1]).all())):
        raise UsageError(f"shift {shift:g} with {steps} steps puts two step times on one float32 value "
                         "(or on none); give a larger --shift or fewer --steps")  # fmt: skip
    return grid


def solver_grid(settings: SamplerSettings) -> tuple[list[float], set[int]]:
    """The grid a solver steps on, and the indices where its history restarts.

    Euler and Heun use the release's grid unchanged. The multistep solvers step on a grid that is
    denser at both ends, where the flow field changes fastest (u -> u - a sin(2 pi u) / (2 pi), then
    the time shift). With guidance, a grid point sits on the interval's lower bound (the guided
    field jumps there), the steps are uniform in u on each side of it, and with INTERVAL_JUMP
    "snap" the history restarts on it, so no step straddles the jump.
    """
    if settings.grid is not None:
        return _given_grid(settings)
    if settings.method not in MULTISTEP:
        return time_grid(settings.steps, settings.shift).tolist(), set()
    return warp_grid(settings)


def warp_grid(settings: SamplerSettings, below: int | None = None) -> tuple[list[float], set[int]]:
    """The multistep solvers' default grid (see solver_grid), with `below` steps under the guidance bound.

    below=None chooses the count by rounding (the default grid); otherwise it must be in 1..steps - 1
    and is used where the grid has a point on the bound (`bound_split`), ignored where it has none.
    """
    n, s = settings.steps, settings.shift
    u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    restarts: set[int] = set()
    b = _f32(settings.interval[0])
    n1 = 0
    if bound_split(settings):
        lo_u, hi_u = 0.0, 1.0
        for _ in range(60):  # the u whose grid time is the bound
            mid = 0.5 * (lo_u + hi_u)
            lo_u, hi_u = (mid, hi_u) if _grid_time(mid, s) < b else (lo_u, mid)
        n1 = min(max(round(lo_u * n), 1), n - 1) if below is None else exact_int(below, "steps below the bound", 1, n - 1)
        u = torch.cat(
            [torch.linspace(0, lo_u, n1 + 1, dtype=torch.float64)[:-1], torch.linspace(lo_u, 1, n - n1 + 1, dtype=torch.float64)]
        )
        if INTERVAL_JUMP == "snap":
            restarts.add(n1)
    grid = [_grid_time(float(v), s) for v in u]
    grid = [_f32(t) for t in grid]
    grid[0], grid[-1] = 0.0, 1.0
    if n1:
        grid[n1] = b
    return grid, restarts


def bound_split(settings: SamplerSettings) -> bool:
    """Whether a multistep solver's default grid has a point on the guidance interval's lower bound."""
    b = _f32(settings.interval[0])
    return settings.cfg != 1.0 and INTERVAL_JUMP != "none" and 0.0 < b < 1.0 and settings.steps > 1


def _given_grid(settings: SamplerSettings) -> tuple[list[float], set[int]]:
    """A given grid, in float32 like the default; a multistep solver's history restarts on the guidance bound."""
    assert settings.grid is not None
    grid = [_f32(t) for t in settings.grid]
    restarts: set[int] = set()
    if settings.method in MULTISTEP and settings.cfg != 1.0 and INTERVAL_JUMP == "snap":
        b = _f32(settings.interval[0])
        restarts = {i for i, t in enumerate(grid[1:-1], start=1) if t == b}
    return grid, restarts


GRID_WARP = 0.5  # a in u - a sin(2 pi u) / (2 pi): steps at the ends (1 - a) times the uniform step
INTERVAL_JUMP = "snap"  # "snap": grid point on the bound + history restart; "keep": point, no restart; "none"


def _grid_time(u: float, shift: float) -> float:
    w = u - GRID_WARP * math.sin(2 * math.pi * u) / (2 * math.pi)
    return w / (w + (1 - w) * shift)


def eval_weight(settings: SamplerSettings, t: float) -> float:
    """The weight of an evaluation at grid time t for the solver in `settings`.

    Euler and Heun follow the release. The multistep solvers' evaluation on a bound belongs to the
    segment ahead of it (lo <= t < hi), since that is the field their history extrapolates.
    """
    if settings.method in MULTISTEP and INTERVAL_JUMP != "none":
        lo, hi, t32 = _f32(settings.interval[0]), _f32(settings.interval[1]), _f32(t)
        return settings.cfg if lo <= t32 < hi else 1.0
    return step_weight(settings, t)


def _f32(value: float) -> float:
    return float(np.float32(value))


def guidance_weight(settings: SamplerSettings, t: float, inclusive_hi: bool = False) -> float:
    """The guidance weight at grid time t, compared as the release does: in float32.

    t is a float32 grid value and the bounds are rounded to float32 before the comparison, so a
    grid point on float32(0.1) is not guided. Euler tests lo < t < hi; the release's Heun decides
    once per step from t_cur with an inclusive upper bound (lo < t <= hi).
    """
    lo, hi, t32 = _f32(settings.interval[0]), _f32(settings.interval[1]), _f32(t)
    inside = lo < t32 <= hi if inclusive_hi else lo < t32 < hi
    return settings.cfg if inside else 1.0


def step_weight(settings: SamplerSettings, t_cur: float) -> float:
    """The weight of a whole step, decided once from t_cur (Heun uses it for both evaluations)."""
    return guidance_weight(settings, t_cur, inclusive_hi=settings.method == "heun")


def runs_paired(settings: SamplerSettings, t: float, w: float | None = None) -> bool:
    """Whether the evaluation at t needs both halves; where the weight is 1, v is v_cond alone."""
    weight = guidance_weight(settings, t) if w is None else w
    return not (settings.skip_uncond and weight == 1.0)


def initial_noise(seeds: Sequence[int], height: int, width: int, channels: int = 3) -> Tensor:
    """Noise exactly as the release draws it: one CPU generator per image, float32. Seeds are whole numbers in
    0..MAX_SEED and the sizes a run may have; the bytes it makes are checked against memory before any is drawn."""
    from dip_export.budget import check_memory

    items = plain_items(seeds, "seeds", MAX_SAMPLES)
    if items is None or not items or len(items) > MAX_SAMPLES:
        raise UsageError(f"seeds must be a list of 1..{MAX_SAMPLES} whole numbers, got {type(seeds).__name__}")
    seeds = [exact_int(s, "seed", 0, MAX_SEED) for s in items]
    height, width = (exact_int(v, what, 1, MAX_IMAGE_SIDE) for v, what in ((height, "height"), (width, "width")))
    channels = exact_int(channels, "channels", 1, 64)
    check_memory(4 * len(seeds) * channels * height * width, f"initial noise for {len(seeds)} images", None, 0)
    return torch.stack([torch.randn((channels, height, width), generator=torch.Generator().manual_seed(s)) for s in seeds])


def to_uint8(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, the release's rounding; NaN or inf is refused, not rounded."""
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise NonFiniteError(
            f"sampling produced {bad} NaN or infinite values of {x.numel()}: the weights or the export hold "
            "non-finite numbers, or the precision overflowed (try fp32)"
        )
    img = ((x.float() + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


def guidance_combine(v_pair: Tensor, w: float | Tensor) -> Tensor:
    """[v_uncond; v_cond] (2B, ...) -> v_uncond + w (v_cond - v_uncond), in float32."""
    v_u, v_c = v_pair.float().chunk(2)
    return v_u + w * (v_c - v_u)
