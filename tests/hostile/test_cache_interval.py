"""A backbone refresh interval is at most the run's evaluations, and a token forecast asked for is one some
evaluation of the run can make (a forecast through n backbone results needs n refreshes at n times before it):
refused otherwise by the sampler's settings, so the CLI, the Python API and stored defaults all refuse it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import load_checkpoint
from dip_export.errors import CheckpointError, UsageError
from dip_export.sampling.loop import _calls
from dip_export.sampling.rules import SamplerSettings
from dip_export.sampling.tokens import TokenSchedule
from dip_export.settings import FORECASTS, SOLVERS
from tests.hostile.test_stored_and_weights import _with_metadata
from tests.test_hostile import one_line, run

FAST = settings(max_examples=400, deadline=None, derandomize=True)


def forecasts_somewhere(steps: int, method: str, k: int, forecast: str) -> bool:
    """Whether the token schedule of the run forecasts at some evaluation (rather than running the backbone at all)."""
    plain = SamplerSettings(steps=steps, method=method)  # the evaluation times (cfg 1: one kind throughout)
    schedule = TokenSchedule(SimpleNamespace(token_forecast=forecast, method=method, cache_interval=k))  # type: ignore[arg-type]
    for t, paired in _calls(plain):
        weights = schedule.decide(t, paired)
        if weights is None:
            schedule.stored(t, paired)
        else:
            assert len(weights) == {"linear": 2, "quadratic": 3}[forecast]
            return True
    return False


@FAST
@given(steps=st.integers(1, 9), method=st.sampled_from(SOLVERS), k=st.integers(1, 20), forecast=st.sampled_from(FORECASTS))
def test_the_settings_take_an_interval_and_forecast_exactly_when_the_run_uses_them(steps, method, k, forecast) -> None:
    evaluations = 2 * steps - 1 if method == "heun" else steps
    fits = k <= evaluations and (forecast in ("off", "auto") or k == 1 or forecasts_somewhere(steps, method, k, forecast))
    try:
        got = SamplerSettings(steps=steps, method=method, cache_interval=k, token_forecast=forecast)
    except UsageError as err:
        assert not fits, err
        assert len(str(err).splitlines()) == 1
        assert ("longer than the run" in str(err)) == (k > evaluations)
        return
    assert fits and (got.cache_interval, got.token_forecast) == (k, forecast)


@pytest.mark.parametrize(("args", "words"), [
    (["--cache-interval", "3"], ["cache interval 3 is longer than the run", "--cache-interval 1..2"]),
    (["--cache-interval", "2", "--token-forecast", "quadratic"], ["quadratic would never apply", "more --steps"]),
])  # fmt: skip
def test_dip_sample_refuses_them_before_sampling(tmp_path: Path, no_sampling, args, words) -> None:
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "1", *args, "--out", tmp_path / "o.npz")
    one_line(code, err, 2, *words)
    assert not (tmp_path / "o.npz").exists()


def test_the_python_api_refuses_them_before_sampling(no_sampling) -> None:
    pipe = DiPPipeline.load()
    with pytest.raises(UsageError, match="longer than the run"):
        pipe(num_samples=1, steps=2, cache_interval=3)
    with pytest.raises(UsageError, match="quadratic would never apply"):
        pipe(num_samples=1, steps=3, cache_interval=2, token_forecast="quadratic")


def test_stored_defaults_that_never_apply_are_refused_naming_the_file(tmp_path: Path) -> None:
    stored = {"steps": 2, "sampler": "euler", "cache_interval": 2, "token_forecast": "quadratic"}
    path = _with_metadata(tmp_path, dip_sampling=stored)
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*stored cache_interval or token_forecast would never apply"):
        load_checkpoint(path)


def test_stored_defaults_meet_the_steps_typed(tmp_path: Path, no_sampling) -> None:
    """Stored cache_interval 2 with a quadratic forecast suits its 20 steps; typed --steps 2 makes it one that never
    applies, refused as if typed."""
    path = _with_metadata(tmp_path, dip_sampling={"steps": 20, "cache_interval": 2, "token_forecast": "quadratic"})
    pipe = DiPPipeline.load(path)
    assert pipe.recommended_settings().cache_interval == 2
    code, err = run(cli.sample_main, path, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "quadratic would never apply")
