"""The times a solver steps on, as it computes them (float32), rise strictly from 0 to 1, or the settings are refused
before any work (`rules.check_stepped_grid`): a shift so small that the times collapse onto 1 (or onto no number)
had divided by zero in UniPC / DPM-Solver++ or produced NaN images after the whole run. Checked on the settings
themselves (every solver, shifts down to subnormals), then through dip-sample and the Python API."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import UsageError
from dip_export.sampling import SamplerSettings, plan_steps
from dip_export.sampling.rules import SOLVERS, solver_grid
from tests.test_hostile import one_line, run

SMALL_SHIFTS = st.floats(min_value=5e-324, max_value=1e-3, allow_subnormal=True) | st.sampled_from([1e-320, 1e-45, 1e-8])


@settings(max_examples=150, deadline=None)
@given(SMALL_SHIFTS | st.floats(1e-3, 1000.0), st.integers(1, 2000), st.sampled_from(SOLVERS), st.sampled_from([1.0, 3.0]))
def test_settings_are_refused_or_step_on_distinct_times_with_finite_coefficients(shift, steps, method, cfg):
    try:
        chosen = SamplerSettings(steps=steps, shift=shift, method=method, cfg=cfg)
    except UsageError as refused:
        assert "\n" not in str(refused)
        return
    times = solver_grid(chosen)[0]
    assert times[0] == 0.0 and times[-1] == 1.0 and all(a < b for a, b in itertools.pairwise(times))
    assert all(np.float32(t) == t for t in times)  # the float32 times the solvers step on
    if method != "heun":
        assert all(np.isfinite(p.coef).all() and math.isfinite(p.t_next) for p in plan_steps(chosen))


@given(st.sampled_from(SOLVERS), st.sampled_from([1e-320, 1e-40, 1e-9]))
def test_a_shift_that_collapses_the_times_is_refused_by_name(method, shift):
    with pytest.raises(UsageError, match=r"^shift .* puts two step times on one float32 value"):
        SamplerSettings(steps=50, shift=shift, method=method)


def test_a_given_grid_finer_than_float32_is_refused():
    with pytest.raises(UsageError, match="two times that are one float32 value"):
        SamplerSettings(steps=3, method="euler", grid=(0.0, 0.5, 0.5 + 1e-12, 1.0))


@pytest.mark.parametrize("sampler", ["unipc", "dpmpp_2m", "ab2", "euler"])
def test_dip_sample_refuses_before_any_step(tmp_path, no_sampling, sampler):
    code, err = run(cli.sample_main, "--shift", "1e-8", "--steps", "3", "--sampler", sampler, "--num-samples", "1",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 2, "shift 1e-08 with 3 steps")
    assert not (tmp_path / "o.npz").exists()


def test_the_api_refuses_before_any_step(no_sampling):
    pipe = DiPPipeline.load(device="cpu")
    with pytest.raises(UsageError, match="float32"):
        pipe(classes=[1], seeds=[0], steps=3, shift=1e-9)
