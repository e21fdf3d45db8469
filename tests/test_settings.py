"""Settings objects: exact types and the limits, on the validators themselves and on the API and CLI that use them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dip_export import DiPPipeline
from dip_export.cli import sample_app
from dip_export.errors import UsageError
from dip_export.sampling import SamplerSettings
from dip_export.settings import (
    MAX_BATCH,
    MAX_CFG,
    MAX_SEED,
    MAX_STEPS,
    BuildSettings,
    RunSettings,
    exact_bool,
    exact_int,
    finite_float,
    parse_sampling_defaults,
)

FAST = settings(max_examples=200, deadline=None, derandomize=True)
NOT_INTS = st.one_of(st.booleans(), st.floats(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2))
NOT_BOOLS = st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.none())
NOT_NUMBERS = st.one_of(st.booleans(), st.text(max_size=5), st.none(), st.tuples(st.floats()))


@FAST
@given(value=st.integers(min_value=-(2**70), max_value=2**70), lo=st.integers(-50, 50), span=st.integers(0, 100))
def test_exact_int_accepts_exactly_the_ints_in_range(value, lo, span):
    hi = lo + span
    if lo <= value <= hi:
        assert exact_int(value, "n", lo, hi) == value
        assert exact_int(np.int64(value), "n", lo, hi) == value if abs(value) < 2**62 else True
    else:
        with pytest.raises(UsageError, match=rf"n must be in {lo}\.\.{hi}, got {value}"):
            exact_int(value, "n", lo, hi)


@FAST
@given(value=NOT_INTS)
def test_exact_int_refuses_bools_floats_and_strings(value):
    with pytest.raises(UsageError, match="must be an integer"):
        exact_int(value, "seed", -(2**63), 2**63)


@FAST
@given(value=st.floats(allow_nan=True, allow_infinity=True), hi=st.floats(0, 1e6))
def test_finite_float_accepts_exactly_the_finite_numbers_in_range(value, hi):
    if math.isfinite(value) and 0 <= value <= hi:
        assert finite_float(value, "cfg", 0.0, hi) == value
    else:
        with pytest.raises(UsageError, match="cfg must be in"):
            finite_float(value, "cfg", 0.0, hi)


@FAST
@given(value=NOT_NUMBERS)
def test_finite_float_refuses_bools_and_strings(value):
    with pytest.raises(UsageError, match="must be a number"):
        finite_float(value, "cfg", -1e9, 1e9)


@FAST
@given(value=NOT_BOOLS)
def test_exact_bool_refuses_truthy_values(value):
    with pytest.raises(UsageError, match="must be True or False"):
        exact_bool(value, "trust_checkpoint")


def test_exact_bool_keeps_bools():
    assert exact_bool(True, "x") is True and exact_bool(np.bool_(False), "x") is False


@FAST
@given(steps=st.integers(-5, 2 * MAX_STEPS), cfg=st.floats(-10, 2 * MAX_CFG), k=st.integers(-2, MAX_STEPS + 2))
def test_sampler_settings_hold_the_limits(steps, cfg, k):
    valid = 1 <= steps <= MAX_STEPS and 0 <= cfg <= MAX_CFG and 1 <= k <= MAX_STEPS
    valid = valid and k <= steps and (cfg == 1 or steps >= 2)  # a cache interval within the run; a guided step (t > 0)
    if valid:
        s = SamplerSettings(steps=steps, cfg=cfg, cache_interval=k)
        assert (s.steps, s.cfg, s.cache_interval) == (steps, cfg, k)
        with pytest.raises(UsageError):
            dataclasses.replace(s, steps=MAX_STEPS + 1)  # a replaced object is validated the same way
    else:
        with pytest.raises(UsageError):
            SamplerSettings(steps=steps, cfg=cfg, cache_interval=k)


@pytest.mark.parametrize(
    "field, value",
    [("steps", 10.0), ("steps", True), ("cfg", "2"), ("shift", 0.0), ("shift", float("nan")), ("cache_interval", 1.5),
     ("interval", (0.5, 0.5)), ("interval", "0,1"), ("skip_uncond", "no"), ("method", None), ("token_forecast", 1)],
)  # fmt: skip
def test_sampler_settings_refuse_wrong_types(field, value):
    with pytest.raises(UsageError):
        SamplerSettings(**{field: value})


def test_numpy_scalars_become_python_numbers():
    s = SamplerSettings(steps=np.int64(7), cfg=np.float32(2.5))
    assert type(s.steps) is int and s.steps == 7 and type(s.cfg) is float and s.cfg == 2.5


@FAST
@given(seeds=st.lists(st.integers(-3, MAX_SEED + 3), min_size=1, max_size=4), batch=st.integers(-1, MAX_BATCH + 1))
def test_run_settings_hold_seed_and_batch_limits(seeds, batch):
    valid = all(0 <= s <= MAX_SEED for s in seeds) and 1 <= batch <= MAX_BATCH
    if valid:
        run = RunSettings(classes=(1,), seeds=tuple(seeds), batch_size=batch)
        assert run.seeds == tuple(seeds) and run.classes == (1,) * len(seeds)
    else:
        with pytest.raises(UsageError):
            RunSettings(classes=(1,), seeds=tuple(seeds), batch_size=batch)


@pytest.mark.parametrize(
    "kwargs",
    [{"seeds": (0.0,)}, {"classes": (1.5,)}, {"classes": (1, 2), "seeds": (0, 1, 2)}, {"cuda_graphs": "yes"},
     {"image_size": (32, 0)}, {"batch_size": 10**9}],
)  # fmt: skip
def test_run_settings_refuse_nonsense(kwargs):
    with pytest.raises(UsageError):
        RunSettings(**{"classes": (1,), "seeds": (0,), **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [{"precision": "fp64"}, {"precision": 8}, {"target": "gpu"}, {"precision": "fp8"}, {"opset": 16}, {"opset": 18.0},
     {"opset": True}],
)  # fmt: skip
def test_build_settings_refuse_nonsense(kwargs):
    with pytest.raises(UsageError):
        BuildSettings(**kwargs)


@FAST
@given(
    key=st.sampled_from(["steps", "cfg", "shift", "cache_interval"]),
    value=st.one_of(NOT_NUMBERS, st.sampled_from([-1, 10**9])),
)
def test_stored_sampling_defaults_are_checked_like_the_settings(key, value):
    with pytest.raises(UsageError, match=f"stored sampling default {key} .*out of range or of the wrong type"):
        parse_sampling_defaults({key: value})


@pytest.fixture(scope="module")
def demo():
    return DiPPipeline.load(batch_size=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"steps": 10**12}, "steps must be in 1..10000"), ({"seeds": [0.5]}, "--seeds must be an integer"),
     ({"classes": [1.0]}, "--classes must be an integer"), ({"cfg": -1.0}, "guidance scale must be in 0..100"),
     ({"batch_size": 10**9}, "batch_size must be in 1..4096"), ({"cuda_graphs": "no"}, "cuda_graphs must be True, False or None"),
     ({"cache_interval": 2.5}, "cache interval must be an integer"), ({"stepz": 3}, "unknown sampler setting")],
)  # fmt: skip
def test_the_python_api_refuses_what_the_cli_refuses(demo, kwargs, message):
    call = {"classes": [1], "seeds": [0], **kwargs}
    with pytest.raises(UsageError, match=message):
        demo(**call)


def test_the_cli_refuses_the_same_steps(tmp_path):
    result = CliRunner().invoke(sample_app, ["--steps", str(10**12), "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 2 and "--steps must be in 1..10000" in result.output
    assert not (tmp_path / "s.npz").exists()


def test_settings_object_and_overrides_give_the_same_images(demo):
    base = SamplerSettings(steps=3, cfg=2.0)
    a = demo([2, 5], [7, 8], base, shift=1.5)
    b = demo([2, 5], [7, 8], steps=3, cfg=2.0, shift=1.5, sampler="euler")  # the demo recommends another solver
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 32, 32, 3) and a.std() > 5  # real images, not a constant


@pytest.mark.parametrize("trust", ["no", 1, None])
def test_trust_flag_must_be_a_bool(trust):
    with pytest.raises(UsageError, match="trust_checkpoint must be True or False"):
        DiPPipeline.load(trust_checkpoint=trust)
