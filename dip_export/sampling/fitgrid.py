"""Fitting a solver's time grid at a fixed evaluation count: a small family of grids, searched deterministically.

A grid of the family is the default warp (`rules.warp_grid`) with `below` of its steps under the
guidance bound (the point on the bound and the history restart there stay), reshaped on each
segment between fixed points by two numbers: a tilt (the log step width grows by `tilt` from the
segment's first step to its last) and a bend (it grows by `bend` from the middle to both ends;
negative: denser at the ends). Every member is a valid grid and below = the default's count with
all shapes 0 is the default grid itself. A free choice of every point overfits the few images it is
scored on; these few numbers do not.

The search scores every `below` near the default's count with the default shapes, then walks the
coordinates (below +- 1, each shape +- delta, in an order drawn from the seed), keeps any
improvement of the score (higher is better, e.g. PSNR against the reference on training images)
and halves delta after a sweep without one. Same seed, same score function: same grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from dip_export.errors import UsageError
from dip_export.sampling.rules import MULTISTEP, SamplerSettings, bound_split, warp_grid

SHAPE_LIMIT = 3.0  # |tilt| and |bend|: step widths stay within e^4.5 of the default's on a segment


@dataclass(frozen=True)
class SearchSettings:
    sweeps: int = 6  # passes over all coordinates
    delta: float = 0.5  # first trial change of a tilt or bend
    shrink: float = 0.5  # delta *= shrink after a sweep that found nothing
    seed: int = 0  # the order the coordinates are tried in


@dataclass(frozen=True)
class GridPoint:
    """A member of the family: steps under the guidance bound (0: no bound) and (tilt, bend) per segment."""

    below: int
    shape: tuple[float, ...]


class GridFamily:
    """The grids of `start.steps` steps for `start`'s solver, guidance and shift (its grid is ignored)."""

    def __init__(self, start: SamplerSettings) -> None:
        if start.method not in MULTISTEP:
            raise UsageError(f"a grid is fitted for the multistep solvers ({', '.join(MULTISTEP)}), not {start.method}")
        self.base = replace(start, grid=None)
        self.split = bound_split(self.base)
        _, restarts = warp_grid(self.base)
        self.default_below = min(restarts) if self.split and restarts else 0
        self.segments = 2 if self.split else 1

    def default(self) -> GridPoint:
        return GridPoint(self.default_below, (0.0,) * (2 * self.segments))

    def belows(self) -> list[int]:
        """The counts under the bound the search scans first: a window around the default's."""
        if not self.split:
            return [0]
        n, d = self.base.steps, self.default_below
        reach = max(3, n // 3)
        return list(range(max(1, d - reach), min(n - 1, d + reach) + 1))

    def settings(self, point: GridPoint) -> SamplerSettings:
        """The member's grid (float32 values, as the solver steps on them)."""
        if len(point.shape) != 2 * self.segments or any(not abs(v) <= SHAPE_LIMIT for v in point.shape):
            raise UsageError(f"a grid shape is {2 * self.segments} numbers in [-{SHAPE_LIMIT}, {SHAPE_LIMIT}]")
        times, restarts = warp_grid(self.base, point.below if self.split else None)
        if all(v == 0.0 for v in point.shape):
            return replace(self.base, grid=tuple(times))
        grid = np.asarray(times, dtype=np.float64)
        out = grid.copy()
        anchors = sorted({0, self.base.steps, *restarts})
        for seg, (a, b) in enumerate(itertools.pairwise(anchors)):
            tilt, bend = point.shape[2 * seg], point.shape[2 * seg + 1]
            x = (np.arange(b - a) + 0.5) / (b - a) - 0.5  # step centres on [-1/2, 1/2]
            theta = np.log(np.diff(grid[a : b + 1])) + tilt * x + 4 * bend * x * x
            w = np.exp(theta - theta.max())
            out[a + 1 : b] = grid[a] + np.cumsum(w / w.sum() * (grid[b] - grid[a]))[:-1]
        values = [float(np.float32(v)) for v in out]
        values[0], values[-1] = 0.0, 1.0
        for i in anchors:
            values[i] = times[i]  # the bound exactly as the default puts it
        return replace(self.base, grid=tuple(values))

    def moved(self, point: GridPoint, coordinate: int, step: float) -> GridPoint | None:
        """`point` with one coordinate changed (0: below by +-1 when there is a bound; then the shapes), None if outside."""
        if self.split:
            if coordinate == 0:
                below = point.below + (1 if step > 0 else -1)
                return GridPoint(below, point.shape) if 1 <= below <= self.base.steps - 1 else None
            coordinate -= 1
        shape = list(point.shape)
        shape[coordinate] = float(np.clip(shape[coordinate] + step, -SHAPE_LIMIT, SHAPE_LIMIT))
        return None if shape[coordinate] == point.shape[coordinate] else GridPoint(point.below, tuple(shape))

    def dims(self) -> int:
        return 2 * self.segments + (1 if self.split else 0)


@dataclass(frozen=True)
class GridFitResult:
    settings: SamplerSettings  # the start's settings with the best grid
    point: GridPoint
    first: float  # score of the default grid
    best: float
    trials: int  # score evaluations made


def fit_grid(
    start: SamplerSettings,
    score: Callable[[SamplerSettings], float],
    search: SearchSettings,
    on_trial: Callable[[int, float], None] | None = None,
) -> GridFitResult:
    """The member of the family of `start.steps` steps that maximises `score` (ties: the one found first)."""
    family = GridFamily(start)
    seen: dict[GridPoint, float] = {}
    best = family.default()

    def trial(point: GridPoint) -> float:
        if point not in seen:
            seen[point] = float(score(family.settings(point)))
            if on_trial is not None:
                on_trial(len(seen), max(seen.values()))
        return seen[point]

    first = trial(best)
    for below in family.belows():
        candidate = GridPoint(below, best.shape)
        if trial(candidate) > seen[best]:
            best = candidate
    rng = np.random.default_rng(search.seed)
    delta = search.delta
    for _ in range(search.sweeps):
        improved = False
        for i in rng.permutation(family.dims()):
            for sign in (1.0, -1.0):
                step = family.moved(best, int(i), sign * delta)
                if step is not None and trial(step) > seen[best]:
                    best, improved = step, True
                    break
        if not improved:
            delta *= search.shrink
    return GridFitResult(family.settings(best), best, first, seen[best], len(seen))


def trial_count(search: SearchSettings, start: SamplerSettings) -> int:
    """The most score evaluations a fit makes (for a progress bar)."""
    family = GridFamily(start)
    return 1 + len(family.belows()) + search.sweeps * 2 * family.dims()
