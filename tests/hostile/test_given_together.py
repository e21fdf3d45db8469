"""What the options given decide on their own is refused before any model is read or asked for: a refresh interval
longer than any run of the given steps (`rules.check_given_together`), and --cuda-graphs on a CPU device or with a
backend named that has no graphs. A Hub name given with them is never requested; a preset is never built."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dip_export.checkpoint
from dip_export import cli
from dip_export.errors import UsageError
from dip_export.sampling.rules import SOLVERS, SamplerSettings, TokenCacheNeverAppliesError, check_given_together
from tests.test_hostile import one_line, run


@given(st.integers(1, 60), st.integers(1, 30), st.sampled_from([None, *SOLVERS]))
def test_a_refresh_interval_is_refused_early_exactly_when_no_solver_could_run_it(k: int, steps: int, method) -> None:
    """Refused before the model only where every run the model could make of these options refuses it too: with
    the solver given, that solver's run; without, every solver's."""
    methods = [method] if method else list(SOLVERS)
    refused_by_all = True
    for name in methods:
        try:
            SamplerSettings(steps=steps, method=name, cache_interval=k)
            refused_by_all = False
        except TokenCacheNeverAppliesError:
            pass
        except UsageError:
            refused_by_all = False  # refused for another reason: not this check's to decide early
    given_fields = {"cache_interval": k, "steps": steps, **({"method": method} if method else {})}
    try:
        check_given_together(given_fields)
    except TokenCacheNeverAppliesError as err:
        assert refused_by_all, (k, steps, method)
        assert "\n" not in str(err)
    else:
        assert not refused_by_all, (k, steps, method)  # every run would refuse it: refused early too


CASES = [
    (["--sampler", "heun", "--steps", "1", "--cache-interval", "2"], "cache interval 2 is longer than the run"),
    (["--steps", "2", "--cache-interval", "5"], "cache interval 5 is longer than the run"),
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs does not apply to device cpu"),
    (["--cuda-graphs", "--backend", "onnx"], "backend onnx"),
]


@pytest.mark.parametrize(("args", "words"), CASES)
def test_dip_sample_refuses_them_before_any_hub_request(fake_hub, tmp_path, args, words) -> None:
    code, err = run(cli.sample_main, "org/name", *args, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, words)
    assert fake_hub == []


@pytest.mark.parametrize(("args", "words"), CASES[:3])
def test_a_preset_is_not_built_for_them(monkeypatch, tmp_path, args, words) -> None:
    monkeypatch.setattr(dip_export.checkpoint, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    code, err = run(cli.sample_main, "--preset", "dip-xl-16", *args, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, words)
