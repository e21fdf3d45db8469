"""Fitted time grids: stored with the model, used by sampling when the settings match, fitted deterministically."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dip_export.checkpoint import load_checkpoint, save_checkpoint
from dip_export.errors import CheckpointError, UsageError
from dip_export.pipeline import DiPPipeline
from dip_export.sampling import SamplerSettings, initial_noise, plan_steps, sample
from dip_export.sampling.fitgrid import GridShape, SearchSettings, fit_grid
from dip_export.sampling.grids import grid_entry, stored_with, with_stored_grid
from dip_export.sampling.rules import solver_grid


def _fitted(steps=6, cfg=1.5, method="ab2"):
    shape = GridShape(SamplerSettings(steps=steps, cfg=cfg, method=method))
    theta = shape.theta0() + np.linspace(-0.3, 0.3, steps)  # any theta is a valid grid
    return shape.settings(theta)


def test_grid_shape_keeps_the_fixed_points_and_starts_at_the_default():
    start = SamplerSettings(steps=9, cfg=4.0, method="unipc")
    shape = GridShape(start)
    default, restarts = solver_grid(start)
    assert list(shape.settings(shape.theta0()).grid) == pytest.approx(default, abs=1e-7)
    moved = shape.settings(shape.theta0() + np.sin(np.arange(9.0)))
    grid, moved_restarts = solver_grid(moved)
    assert moved_restarts == restarts and len(restarts) == 1  # the point on the guidance bound stays, with its restart
    assert grid[next(iter(restarts))] == default[next(iter(restarts))]
    assert grid != default and all(b > a for a, b in itertools.pairwise(grid))


def test_fitted_grid_round_trips_through_the_model_file_and_is_used_when_settings_match(golden_model, golden, tmp_path):
    fitted = _fitted()
    entry = grid_entry(fitted, (1.2, 1.875), {"fitted_grid_db": 40.0})
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, golden_model, stored_with({"steps": 25}, entry))
    loaded = load_checkpoint(path)
    assert loaded.sampling["grids"] == [json.loads(json.dumps(entry))] and loaded.sampling["steps"] == 25
    pipe = DiPPipeline.load(path, device="cpu")
    used = pipe.sampler_settings(sampler="ab2", steps=6, cfg=1.5)
    assert used.grid == fitted.grid
    for other in (dict(sampler="ab2", steps=7, cfg=1.5), dict(sampler="unipc", steps=6, cfg=1.5),
                  dict(sampler="ab2", steps=6, cfg=4.0), dict(sampler="ab2", steps=6, cfg=1.5, shift=3.0)):  # fmt: skip
        assert pipe.sampler_settings(**other).grid is None  # not fitted for these: the default warp
    # the sampler steps on the stored grid: the same images as with it given, others than on the default
    size = golden.meta["image_height"]
    noise, y = initial_noise([3, 4], size, size), torch.tensor([1, 2])
    null = golden.config.null_class
    with_grid = sample(golden_model, noise, y, null, used)
    assert torch.equal(with_grid, sample(golden_model, noise, y, null, fitted))
    assert not torch.equal(with_grid, sample(golden_model, noise, y, null, SamplerSettings(steps=6, cfg=1.5, method="ab2")))
    assert [p.t for p in plan_steps(used)] == pytest.approx(list(fitted.grid[:-1]), abs=1e-7)


def test_a_stored_entry_is_replaced_not_duplicated_and_a_given_grid_wins():
    a, b = _fitted(), _fitted(steps=6, cfg=1.5)
    sampling = stored_with(stored_with({}, grid_entry(a, (1, 2), {})), grid_entry(b, (1, 2), {}))
    assert len(sampling["grids"]) == 1
    given_grid = SamplerSettings(steps=6, cfg=1.5, method="ab2", grid=tuple(i / 6 for i in range(7)))
    assert with_stored_grid(given_grid, sampling) is given_grid


@pytest.mark.parametrize(
    "bad",
    [
        {"grid": [0.0, 0.5, 0.4, 1.0]},  # not rising
        {"grid": [0.0, 0.5, 1.0]},  # wrong length
        {"grid": [0.1, 0.2, 0.5, 1.0]},  # not from 0
        {"sampler": "heun"},
        {"sampler": "nope"},
        {"cfg": [2.0, 1.0]},
        {"nfe": 0},
        {"shift": -1},
        {"grid": [0.0, "x", 0.5, 1.0]},
    ],
)
def test_bad_stored_grids_are_refused_with_one_line(golden_model, tmp_path, bad):
    entry = {"sampler": "ab2", "nfe": 3, "cfg": [1.0, 2.0], "shift": 1.0, "interval": [0.1, 1.0], "grid": [0, 0.3, 0.6, 1.0]}
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, golden_model, {"grids": [{**entry, **bad}]})
    with pytest.raises(CheckpointError, match="bad stored sampling defaults"):
        load_checkpoint(path)


@given(st.lists(st.floats(0.01, 0.99), min_size=1, max_size=8, unique=True))
def test_any_rising_grid_from_0_to_1_is_accepted_and_others_refused(points):
    grid = (0.0, *sorted(points), 1.0)
    SamplerSettings(steps=len(grid) - 1, method="unipc", grid=grid)
    with pytest.raises(UsageError):
        SamplerSettings(steps=len(grid) - 1, method="ab2", grid=tuple(reversed(grid)))
    with pytest.raises(UsageError):
        SamplerSettings(steps=len(grid) - 1, method="heun", grid=grid)


class Curve:
    """A denoiser over an analytic field whose error depends on where the grid points sit."""

    def backbone(self, x, t, y):
        return t.view(-1, 1, 1, 1).clone()

    def detailer(self, x, tokens):
        return torch.cos(6 * tokens) * (1 + 8 * tokens**6) - 0.3 * x


def _score(settings):
    x0 = torch.linspace(-1, 1, 8).view(2, 1, 2, 2)
    x = sample(Curve(), x0, torch.zeros(2, dtype=torch.int64), 0, settings).double()
    exact = sample(Curve(), x0, torch.zeros(2, dtype=torch.int64), 0, SamplerSettings(steps=400, method="ab3")).double()
    return -10 * math.log10(float(((x - exact) ** 2).mean()))


def test_fit_improves_on_training_and_is_deterministic_given_its_seed():
    start = SamplerSettings(steps=6, method="ab2")
    search = SearchSettings(sweeps=3, seed=7)
    first = fit_grid(start, _score, search)
    again = fit_grid(start, _score, search)
    assert first[0].grid == again[0].grid and first[2] == again[2]
    assert first[2] > first[1] + 1.0  # at least 1 dB better than the default warp on this field
    trials = []
    fit_grid(start, _score, search, on_trial=lambda n, best: trials.append(best))
    assert len(trials) <= 1 + 3 * 2 * 6 and trials == sorted(trials)
