"""Fitted time grids: stored with the model, used by sampling when the settings match, fitted deterministically."""

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint, save_checkpoint
from dip_export.cli import sample_app
from dip_export.errors import CheckpointError, UsageError
from dip_export.pipeline import DiPPipeline
from dip_export.sampling import SamplerSettings, initial_noise, plan_steps, sample
from dip_export.sampling.fitgrid import SHAPE_LIMIT, GridFamily, GridPoint, SearchSettings, fit_grid, trial_count
from dip_export.sampling.grids import grid_entry, stored_with, with_stored_grid
from dip_export.sampling.reference import PSNR_CAP_DB, fit_score, image_psnrs
from dip_export.sampling.rules import MULTISTEP, solver_grid, to_uint8


def _fitted(steps=6, cfg=1.5, method="ab2"):
    family = GridFamily(SamplerSettings(steps=steps, cfg=cfg, method=method))
    return family.settings(GridPoint(family.default_below + 1, (0.4, -0.8, -0.3, 0.5)))


def test_the_familys_default_member_is_the_default_grid_and_the_bound_stays():
    start = SamplerSettings(steps=9, cfg=4.0, method="unipc")
    family = GridFamily(start)
    default, restarts = solver_grid(start)
    assert list(family.settings(family.default()).grid) == default and restarts == {family.default_below}
    moved = family.settings(GridPoint(family.default_below + 2, (1.0, -1.0, 0.5, 2.0)))
    grid, moved_restarts = solver_grid(moved)
    assert moved_restarts == {family.default_below + 2}  # the point on the guidance bound moves in index, with its restart
    assert grid[family.default_below + 2] == default[family.default_below]
    assert grid != default and all(b > a for a, b in itertools.pairwise(grid))
    unguided = GridFamily(SamplerSettings(steps=9, method="ab2"))
    assert unguided.dims() == 2 and unguided.belows() == [0]  # no bound: one segment, a tilt and a bend
    with pytest.raises(UsageError, match="not heun"):
        GridFamily(SamplerSettings(steps=9, cfg=1.5, method="heun"))
    with pytest.raises(UsageError, match="numbers in"):
        family.settings(GridPoint(3, (0.0, 0.0, SHAPE_LIMIT + 1, 0.0)))


@given(
    steps=st.integers(2, 40), method=st.sampled_from(MULTISTEP), cfg=st.sampled_from([1.0, 1.5, 4.0]),
    shift=st.floats(0.3, 4.0), lo=st.floats(0.02, 0.8), data=st.data(),
)  # fmt: skip
def test_every_member_of_the_family_is_a_valid_grid(steps, method, cfg, shift, lo, data):
    start = SamplerSettings(steps=steps, method=method, cfg=cfg, shift=shift, interval=(lo, 1.0))
    family = GridFamily(start)
    below = data.draw(st.integers(1, steps - 1)) if family.segments == 2 else 0
    shape = tuple(data.draw(st.floats(-SHAPE_LIMIT, SHAPE_LIMIT)) for _ in range(2 * family.segments))
    settings = family.settings(GridPoint(below, shape))  # SamplerSettings checks: steps + 1 times rising from 0 to 1
    grid, restarts = solver_grid(settings)  # as the solver steps on it, in float32
    assert grid[0] == 0.0 and grid[-1] == 1.0 and len(grid) == steps + 1
    assert all(b > a for a, b in itertools.pairwise(grid))
    if family.segments == 2:
        assert restarts == {below} and grid[below] == float(np.float32(lo))  # the point on the bound, restarted there
    else:
        assert restarts == set()


def test_fitted_grid_round_trips_through_the_model_file_and_is_used_when_settings_match(golden_model, golden, tmp_path):
    fitted = _fitted()
    entry = grid_entry(fitted, (1.2, 1.875), {"fitted_grid_db": 40.0})
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, golden_model, stored_with({"steps": 25}, entry)[0])
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
    first, none = stored_with({}, grid_entry(a, (1, 2), {}))
    sampling, one = stored_with(first, grid_entry(b, (1, 2), {}))
    assert len(sampling["grids"]) == 1 and (none, one) == (0, 1)
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
    with pytest.raises(UsageError, match="sampling defaults refused"):  # the writer checks as the reader does
        save_checkpoint(path, golden_model, {"grids": [{**entry, **bad}]})
    assert not path.exists()
    save_checkpoint(path, golden_model, {})
    with safe_open(str(path), "pt") as f:  # the same file, its defaults written by another program
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iteration)
    save_file(state, str(path), metadata={**meta, "dip_sampling": json.dumps({"grids": [{**entry, **bad}]})})
    with pytest.raises(CheckpointError, match="bad stored sampling defaults"):
        load_checkpoint(path)


@given(st.lists(st.floats(1 / 64, 63 / 64, width=32), min_size=1, max_size=8, unique=True))  # distinct as the solver holds them
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


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_fit_improves_on_training_and_is_deterministic_given_its_seed(cfg):
    start = SamplerSettings(steps=6, method="ab2", cfg=cfg, interval=(0.3, 1.0))
    search = SearchSettings(sweeps=3, seed=7)
    first = fit_grid(start, _score, search)
    again = fit_grid(start, _score, search)
    assert first.settings.grid == again.settings.grid and first.best == again.best and first.point == again.point
    assert first.settings == GridFamily(start).settings(first.point)
    assert first.first == _score(replace(start, grid=tuple(solver_grid(start)[0])))  # the default grid scored first
    assert first.best > first.first + 1.0  # at least 1 dB better than the default warp on this field
    trials = []
    fit_grid(start, _score, search, on_trial=lambda n, best: trials.append((n, best)))
    assert len(trials) == first.trials <= trial_count(search, start)
    assert [n for n, _ in trials] == list(range(1, len(trials) + 1)) and [b for _, b in trials] == sorted(b for _, b in trials)
    other = fit_grid(start, _score, SearchSettings(sweeps=3, seed=8))
    assert other.best > first.first  # another seed walks another way, and also improves


def test_dip_sample_uses_a_stored_grid_when_its_settings_match(golden_model, golden, tmp_path):
    fitted = _fitted()
    plain, with_grid = tmp_path / "plain.safetensors", tmp_path / "grid.safetensors"
    save_checkpoint(plain, golden_model, {})
    save_checkpoint(with_grid, golden_model, stored_with({}, grid_entry(fitted, (1.2, 1.875), {}))[0])
    size = golden.meta["image_height"]

    def images(path, *args):
        out = tmp_path / "s.npz"
        common = ["--image-size", f"{size}x{size}", "--classes", "1,2", "--seeds", "3,4", "--sampler", "ab2", "--device", "cpu"]
        result = CliRunner().invoke(sample_app, [str(path), *common, *args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        return np.load(out)["arr_0"]

    noise, null = initial_noise([3, 4], size, size), golden.config.null_class
    expected = to_uint8(sample(golden_model, noise, torch.tensor([1, 2]), null, fitted))
    assert np.array_equal(images(with_grid, "--steps", "6", "--cfg", "1.5"), expected)
    assert not np.array_equal(images(plain, "--steps", "6", "--cfg", "1.5"), expected)
    for other in (["--steps", "7", "--cfg", "1.5"], ["--steps", "6", "--cfg", "4"]):  # not what the grid was fitted for
        assert np.array_equal(images(with_grid, *other), images(plain, *other))


def test_the_demo_ships_fitted_grids_that_sampling_uses():
    loaded = load_checkpoint(DEMO_CHECKPOINT)  # read through the checks of a file the tool did not write
    entries = loaded.sampling.get("grids", [])
    assert any(e["cfg"][0] <= 1.5 <= e["cfg"][1] for e in entries) and any(e["cfg"][0] <= 4.0 <= e["cfg"][1] for e in entries)
    pipe = DiPPipeline.load(DEMO_CHECKPOINT, device="cpu")
    for e in entries:
        assert e["nfe"] <= 20 and e["sampler"] in MULTISTEP and e["shift"] == 1.0 and e["interval"] == [0.1, 1.0]
        fit = e["fit"]
        assert fit["fitted_grid_db"] >= fit["default_grid_db"] and fit["heldout_images"] >= 32  # never worse on held-out
        assert fit["train_seeds"][0] >= 1_000_000  # trained on seeds apart from the held-out 0..N-1
        cfg = (e["cfg"][0] + e["cfg"][1]) / 2
        used = pipe.sampler_settings(sampler=e["sampler"], steps=e["nfe"], cfg=cfg)
        assert list(used.grid) == e["grid"] and solver_grid(used)[1]  # with its point on the guidance bound
        assert pipe.sampler_settings(sampler=e["sampler"], steps=e["nfe"] + 1, cfg=cfg).grid is None
    chosen = pipe.sampler_settings()  # the recommendation at the model's own guidance: a fitted grid as good as Euler-100
    entry = next(e for e in entries if list(chosen.grid or ()) == e["grid"])
    assert (chosen.method, chosen.steps, chosen.cfg) == (loaded.sampling["sampler"], loaded.sampling["steps"], 1.5)
    assert entry["fit"]["fitted_grid_db"] >= entry["fit"]["euler_100_db"]


def _entry(method, nfe, band, cfg=1.5):
    settings = _fitted(steps=nfe, cfg=cfg, method=method)
    return grid_entry(settings, band, {"search_seed": 0})  # a fit report the file reader takes


@settings(deadline=None, max_examples=30)
@given(cfg=st.floats(1.0, 6.0), steps=st.sampled_from([None, 20]), sampler=st.sampled_from([None, "unipc"]))
def test_the_fitted_grid_for_the_guidance_is_the_recommendation_unless_solver_or_steps_are_chosen(cfg, steps, sampler):
    low, high = _entry("ab2", 6, (1.25, 2.0)), _entry("unipc", 8, (3.0, 5.0), cfg=4.0)
    more = _entry("ab3", 10, (1.25, 2.0))
    loaded = DiPPipeline.load(batch_size=1)  # its settings are read-only: a pipeline with other stored grids is a new one
    pipe = DiPPipeline(replace(loaded.source, sampling={**loaded.source.sampling, "grids": [more, low, high]}),
                       loaded.spec, loaded.device, batch_size=1)  # fmt: skip
    chosen = pipe.sampler_settings(cfg=cfg, steps=steps, sampler=sampler)
    expected = next((e for e in (low, high) if e["cfg"][0] <= cfg <= e["cfg"][1]), None)
    if steps is None and sampler is None and expected is not None:
        assert (chosen.method, chosen.steps, list(chosen.grid)) == (expected["sampler"], expected["nfe"], expected["grid"])
    elif steps is None and sampler is None:
        recommended = pipe.recommended_settings()
        assert (chosen.method, chosen.steps, chosen.grid) == (recommended.method, recommended.steps, None)
    else:
        assert chosen.grid is None or (chosen.method, chosen.steps) in {("ab2", 6), ("unipc", 8), ("ab3", 10)}
        assert (steps is None or chosen.steps == steps) and (sampler is None or chosen.method == sampler)
    explicit = SamplerSettings(cfg=cfg)  # settings given whole are the caller's: no solver swapped in
    assert pipe.sampler_settings(explicit).method == "euler"


@given(
    data=st.lists(st.floats(-0.5, 0.5), min_size=4 * 3 * 2 * 2, max_size=4 * 3 * 2 * 2),
    offsets=st.lists(st.floats(1e-4, 0.5), min_size=4, max_size=4),
    order=st.permutations(range(4)),
)
def test_the_mean_fit_score_ignores_image_order_and_is_the_pooled_score_when_images_err_alike(data, offsets, order):
    ref = np.asarray(data).reshape(4, 3, 2, 2)
    out = ref + np.asarray(offsets).reshape(4, 1, 1, 1)
    mean = fit_score("mean", out, ref)
    assert mean == pytest.approx(fit_score("mean", out[list(order)], ref[list(order)]), abs=1e-9)
    assert mean == pytest.approx(float(np.mean(image_psnrs(out, ref))))
    assert mean >= fit_score("pooled", out, ref) - 1e-9  # log of the mean MSE >= mean of the log (Jensen)
    alike = ref + offsets[0]
    assert fit_score("mean", alike, ref) == pytest.approx(fit_score("pooled", alike, ref), abs=1e-9)
    assert fit_score("mean", ref, ref) == fit_score("pooled", ref, ref) == PSNR_CAP_DB
    with pytest.raises(UsageError, match="unknown fit score"):
        fit_score("median", out, ref)


@settings(deadline=None, max_examples=30)
@given(cfg=st.floats(1.0, 2.5), recommended=st.sampled_from([("ab2", 6), ("ab3", 10), ("unipc", 10), ("euler", 25)]))
def test_where_several_fitted_grids_match_the_recommended_solver_and_count_win_else_the_fewest(cfg, recommended):
    low, more = _entry("ab2", 6, (1.25, 2.0)), _entry("ab3", 10, (1.25, 2.0))
    loaded = DiPPipeline.load(batch_size=1)
    sampler, steps = recommended
    stored = {"sampler": sampler, "steps": steps, "cfg": 1.5, "grids": [more, low]}
    pipe = DiPPipeline(replace(loaded.source, sampling=stored), loaded.spec, loaded.device, batch_size=1)
    chosen = pipe.sampler_settings(cfg=cfg)
    if not 1.25 <= cfg <= 2.0:
        assert (chosen.method, chosen.steps, chosen.grid) == (sampler, steps, None)
    else:
        expected = more if recommended == ("ab3", 10) else low
        assert (chosen.method, chosen.steps, list(chosen.grid)) == (expected["sampler"], expected["nfe"], expected["grid"])
