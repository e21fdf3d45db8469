"""The sampling building blocks that make tensors from a caller's numbers (`time_grid`, `initial_noise`) take them as
a run does: exact whole numbers and finite floats in range, and noise only within the memory budget; nonsense is one
line (UsageError), never a NaN grid, a truncated float seed or a 12 TB allocation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export.errors import DipError, UsageError
from dip_export.sampling import initial_noise, time_grid
from dip_export.settings import MAX_SEED, MAX_SHIFT, MAX_STEPS

ANY = st.one_of(st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                st.booleans(), st.none(), st.just(np.float64(2.0)))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(ANY, ANY)
def test_a_time_grid_is_made_exactly_for_a_runs_steps_and_shift(steps, shift) -> None:
    good_steps = type(steps) is int and 1 <= steps <= MAX_STEPS
    number = type(shift) in (int, float) or isinstance(shift, np.floating)  # a numpy scalar reads as its number
    good_shift = number and math.isfinite(shift) and 0 < shift <= MAX_SHIFT
    if not (good_steps and good_shift):
        with pytest.raises(UsageError) as caught:
            time_grid(steps, shift)
        assert "\n" not in str(caught.value)
        return
    try:
        grid = time_grid(steps, shift)
    except UsageError as err:  # a shift so small that float32 times collapse: refused, never a NaN grid
        assert "on one float32 value" in str(err) and shift < 1e-6, (steps, shift)
        return
    assert grid.shape == (steps + 1,) and torch.isfinite(grid).all() and grid[0] == 0 and grid[-1] == 1
    assert bool((grid[1:] > grid[:-1]).all())


@settings(max_examples=200, deadline=None)
@given(st.lists(ANY, min_size=1, max_size=3), st.integers(-2, 5000), st.integers(-2, 5000))
def test_noise_is_drawn_only_for_whole_seeds_and_sizes_a_run_may_have(seeds, height, width) -> None:
    good = all(type(s) is int and 0 <= s <= MAX_SEED for s in seeds) and 1 <= height <= 4096 and 1 <= width <= 4096
    if not good:
        with pytest.raises(UsageError):
            initial_noise(seeds, height, width)
        return
    if len(seeds) * height * width > 1 << 22:
        return  # a valid draw of many megabytes: not this test's to make
    noise = initial_noise(seeds, height, width)
    assert noise.shape == (len(seeds), 3, height, width)
    assert torch.equal(noise[0], torch.randn((3, height, width), generator=torch.Generator().manual_seed(seeds[0])))


def test_noise_past_the_budget_is_refused_before_it_is_drawn(monkeypatch) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "64M")
    with pytest.raises(DipError, match="initial noise for 1000 images needs about"):
        initial_noise(list(range(1000)), 4096, 4096)
