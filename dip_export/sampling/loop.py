"""`sample`: the solvers, the guidance rule and the token schedule joined over a denoiser."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dip_export.sampling.rules import (
    FORECAST_POINTS,
    RUN_CHECKS,
    Denoiser,
    SamplerSettings,
    TokenCacheNeverAppliesError,
    guidance_combine,
    runs_paired,
    step_weight,
    time_grid,
)
from dip_export.sampling.solvers import N_COEF, SolverState, plan_steps, solver_update
from dip_export.sampling.tokens import TokenSchedule, forecast_mode, forecast_tokens


def device_table(rows: list[list[float]], width: int, device: torch.device) -> Tensor:
    """Per-step scalars for a whole call in one host-to-device transfer, from pinned memory on CUDA (a copy
    from pageable memory synchronises the stream); each step indexes the table on the device."""
    table = torch.from_numpy(np.asarray(rows, dtype=np.float32).reshape(len(rows), width))
    if device.type != "cuda":
        return table.to(device)
    return table.pin_memory().to(device, non_blocking=True)


def _calls(settings: SamplerSettings) -> list[tuple[float, bool]]:
    """(t, paired) of every network evaluation, in order."""
    if settings.method != "heun":
        return [(p.t, p.paired) for p in plan_steps(settings)]
    grid = time_grid(settings.steps, settings.shift).tolist()
    calls = []
    for i in range(settings.steps):
        w = step_weight(settings, grid[i])
        ts = [grid[i]] + ([grid[i + 1]] if i < settings.steps - 1 else [])
        calls += [(t, runs_paired(settings, t, w)) for t in ts]
    return calls


def check_forecast_applies(settings: SamplerSettings) -> None:
    """Refuse a token forecast no evaluation of the run would make (`rules.check_token_cache` runs it).

    A forecast through n backbone results is made at an evaluation after n refreshes of its kind (paired or
    conditional-only) and within the interval of the last; whether any evaluation of this run is one is decided
    by the run's own token schedule (host-side, stopping at the first evaluation that skips the backbone). Off and
    auto (the solver's measured choice, reuse where none is measured) always apply; at K = 1 nothing is forecast.
    """
    k, points = settings.cache_interval, FORECAST_POINTS.get(settings.token_forecast, 1)
    if points == 1 or k == 1:
        return
    schedule = TokenSchedule(settings)
    for t, paired in _calls(settings):
        if schedule.decide(t, paired) is not None:
            return
        schedule.stored(t, paired)
    raise TokenCacheNeverAppliesError(
        f"token forecast {settings.token_forecast} would never apply: it extrapolates through {points} backbone results "
        f"and no evaluation of this run ({settings.method}, {settings.steps} steps, cache interval {k}) comes after "
        "enough of them; give more --steps, another --cache-interval or another --token-forecast"
    )


RUN_CHECKS.append(check_forecast_applies)


def _forecast_rows(settings: SamplerSettings) -> list[list[float]]:
    """The forecast weights of every evaluation (zeros where the backbone runs or tokens are reused)."""
    schedule = TokenSchedule(settings)
    rows = []
    for t, paired in _calls(settings):
        weights = schedule.decide(t, paired)
        if weights is None:
            schedule.stored(t, paired)
        rows.append([*(weights if weights is not None and len(weights) > 1 else ()), 0.0, 0.0, 0.0][:3])
    return rows


class _Velocity:
    """Guided velocity; backbone tokens refreshed, reused or forecast as the schedule says."""

    def __init__(self, net: Denoiser, y: Tensor, null_class: int, settings: SamplerSettings) -> None:
        self.net = net
        self.y_cond = y
        self.y_pair = torch.cat([torch.full_like(y, null_class), y])  # unconditional half first
        self.schedule = TokenSchedule(settings)
        self.copy = forecast_mode(settings) != "off"  # forecasts keep several results: own copies
        self.history: list[Tensor] = []  # newest first, matching schedule.times
        self.fw: Tensor | None = None  # every evaluation's forecast weights, made at the first forecast
        self.calls = 0

    def _tokens(self, x: Tensor, t: float, y: Tensor, paired: bool) -> Tensor:
        weights = self.schedule.decide(t, paired)
        call, self.calls = self.calls, self.calls + 1
        if weights is None:
            tb = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
            tokens = self.net.backbone(x, tb, y)
            kept = len(self.schedule.times) if self.schedule.kind == paired else 0
            replaced = kept > 0 and self.schedule.times[0] == t
            self.schedule.stored(t, paired)
            older = self.history[1:] if replaced else self.history
            self.history = [tokens.clone() if self.copy else tokens, *older[:kept]][: len(self.schedule.times)]
            return tokens
        if len(weights) == 1:  # reuse; paired tokens hold [uncond, cond]: conditional-only takes the second half
            return self.history[0][-x.shape[0] :]
        if self.fw is None:
            self.fw = device_table(_forecast_rows(self.schedule.settings), 3, x.device)
        return forecast_tokens(self.history[: len(weights)], self.fw[call, : len(weights)])

    def __call__(self, x: Tensor, t: float, w: float, paired: bool | None = None) -> Tensor:
        if paired is None:
            paired = runs_paired(self.schedule.settings, t, w)
        if not paired:
            return self.net.detailer(x, self._tokens(x, t, self.y_cond, False)).float()
        xx = torch.cat([x, x])
        v_pair = self.net.detailer(xx, self._tokens(xx, t, self.y_pair, True))
        return guidance_combine(v_pair, w)


def _heun(velocity: _Velocity, x: Tensor, settings: SamplerSettings, on_step: Callable[[int], None] | None) -> Tensor:
    """The release's Heun: weight decided once per step from t_cur, used by both evaluations; last step Euler."""
    grid = time_grid(settings.steps, settings.shift).tolist()
    for i in range(settings.steps):
        t_cur, t_next = grid[i], grid[i + 1]
        dt = t_next - t_cur
        w = step_weight(settings, t_cur)
        v = velocity(x, t_cur, w)
        if i < settings.steps - 1:
            v = v.clone()  # engines may return their own buffer, which the next call overwrites
            v_next = velocity(x + dt * v, t_next, w)  # the release keeps the step's weight
            v = 0.5 * (v + v_next)
        x = x + dt * v
        if on_step is not None:
            on_step(i)
    return x


def sample(
    net: Denoiser,
    noise: Tensor,
    y: Tensor,
    null_class: int,
    settings: SamplerSettings,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Integrate from `noise` (B, 3, H, W) with labels `y` (B,); returns the final x (B, 3, H, W)."""
    velocity = _Velocity(net, y, null_class, settings)
    with torch.inference_mode():
        if settings.method == "heun":
            return _heun(velocity, noise.float(), settings, on_step)
        state = SolverState.like(noise.float())
        plans = plan_steps(settings)
        coefs = device_table([list(p.coef) for p in plans], N_COEF, noise.device)
        for i, plan in enumerate(plans):
            v = velocity(state.x, plan.t, plan.w, plan.paired)
            solver_update(state, v, coefs[i])
            if on_step is not None:
                on_step(i)
    return state.x


def sample_counts(settings: SamplerSettings) -> dict[str, int]:
    """Network evaluations (and backbone calls) a run makes with these settings, per image, without running it."""
    calls = _calls(settings)
    schedule = TokenSchedule(settings)
    backbone = 0
    for t, paired in calls:
        if schedule.decide(t, paired) is None:
            schedule.stored(t, paired)
            backbone += 1
    pair = sum(1 for _, paired in calls if paired)
    return {"paired_evals": pair, "single_evals": len(calls) - pair, "backbone_calls": backbone}
