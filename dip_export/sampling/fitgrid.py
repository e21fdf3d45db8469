"""Fitting a solver's time grid at a fixed evaluation count: a deterministic pattern search.

The grid keeps its fixed points (0, 1, and the guidance bound where the multistep solvers restart);
between them the step widths are softmax(theta) of the segment's length, so every theta gives a
valid grid and theta = log(default widths) is the default grid. The search tries theta_i +- delta
for each coordinate in an order drawn from the seed, keeps any improvement of the score (higher is
better, e.g. PSNR against the reference on training images), and shrinks delta after a sweep
without one. Same seed, same score function: same grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from dip_export.sampling.rules import SamplerSettings, solver_grid


@dataclass(frozen=True)
class SearchSettings:
    sweeps: int = 6  # passes over all coordinates
    delta: float = 0.4  # first trial change of a log step width
    shrink: float = 0.5  # delta *= shrink after a sweep that found nothing
    seed: int = 0  # the order the coordinates are tried in


class GridShape:
    """Maps theta (one log width per step) to a grid that keeps the fixed points of `start`."""

    def __init__(self, start: SamplerSettings) -> None:
        grid, restarts = solver_grid(replace(start, grid=None))
        self.base = replace(start, grid=None)
        self.times = np.asarray(grid, dtype=np.float64)
        self.anchors = sorted({0, start.steps, *restarts})  # grid indices that never move

    def theta0(self) -> np.ndarray:
        return np.log(np.diff(self.times))

    def settings(self, theta: np.ndarray) -> SamplerSettings:
        grid = self.times.copy()
        for a, b in zip(self.anchors, self.anchors[1:], strict=False):
            w = np.exp(theta[a:b] - theta[a:b].max())
            widths = w / w.sum() * (self.times[b] - self.times[a])
            grid[a + 1 : b] = self.times[a] + np.cumsum(widths)[:-1]
        return replace(self.base, grid=tuple(float(v) for v in grid))


def fit_grid(
    start: SamplerSettings,
    score: Callable[[SamplerSettings], float],
    search: SearchSettings,
    on_trial: Callable[[int, float], None] | None = None,
) -> tuple[SamplerSettings, float, float]:
    """The grid of `start.steps` steps that maximises `score`: (settings with it, start score, best score)."""
    shape = GridShape(start)
    theta = shape.theta0()
    best = first = score(shape.settings(theta))
    rng = np.random.default_rng(search.seed)
    delta, trials = search.delta, 0
    for _ in range(search.sweeps):
        improved = False
        for i in rng.permutation(len(theta)):
            for sign in (1.0, -1.0):
                trial = theta.copy()
                trial[i] += sign * delta
                value = score(shape.settings(trial))
                trials += 1
                if on_trial is not None:
                    on_trial(trials, max(best, value))
                if value > best:
                    theta, best, improved = trial, value, True
                    break
        if not improved:
            delta *= search.shrink
    return shape.settings(theta), first, best


def trial_count(search: SearchSettings, steps: int) -> int:
    """The most score evaluations a fit makes (for a progress bar)."""
    return 1 + search.sweeps * 2 * steps
