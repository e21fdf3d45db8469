"""Backbone tokens between refreshes: forecast in t from the same kind's history, or reused."""

import pytest
import torch

from dip_export.sampling import SamplerSettings, initial_noise, sample, sample_counts
from dip_export.sampling.tokens import TokenSchedule, lagrange_weights


class TimeTokens:
    """Tokens are a polynomial in t (degree `degree`); the detailer's velocity reads them."""

    def __init__(self, degree):
        self.degree = degree
        self.calls = 0

    def backbone(self, x, t, y):
        self.calls += 1
        return (t**self.degree + 0.5 * t).view(-1, 1, 1, 1).expand(-1, 1, 1, 1).clone()

    def detailer(self, x, tokens):
        return torch.cos(3 * tokens) - 0.5 * x


def _run(net, **kw):
    x0 = torch.linspace(-1.0, 1.0, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    return sample(net, x0, torch.zeros(2, dtype=torch.int64), 0, SamplerSettings(steps=12, cfg=1.0, **kw))


@pytest.mark.parametrize(("forecast", "degree"), [("linear", 1), ("quadratic", 2)])
@pytest.mark.parametrize("method", ["euler", "ab2", "unipc", "heun"])
def test_forecast_is_exact_for_tokens_polynomial_in_t(forecast, degree, method):
    full = _run(TimeTokens(degree), method=method)
    net = TimeTokens(degree)
    out = _run(net, method=method, cache_interval=3, token_forecast=forecast)
    torch.testing.assert_close(out, full, rtol=0, atol=2e-5)
    reused = _run(TimeTokens(degree), method=method, cache_interval=3)
    assert (reused - full).abs().max() > 1e-3  # reuse is not exact here
    evaluations = 12 if method != "heun" else 23
    assert net.calls < evaluations * 0.6
    counts = sample_counts(SamplerSettings(steps=12, cfg=1.0, method=method, cache_interval=3, token_forecast=forecast))
    assert counts["backbone_calls"] == net.calls


def test_schedule_refreshes_where_history_is_missing_or_the_kind_changes():
    s = SamplerSettings(steps=8, cfg=3.0, cache_interval=2, token_forecast="linear")
    sched = TokenSchedule(s)
    decisions = []
    for t, paired in [(0.0, False), (0.1, False), (0.2, False), (0.3, True), (0.4, True), (0.5, True), (0.6, True), (0.7, True)]:
        w = sched.decide(t, paired)
        if w is None:
            sched.stored(t, paired)
        decisions.append("R" if w is None else "F")
    # 2 points needed for a linear forecast; the switch to paired starts a new history
    assert decisions == ["R", "R", "F", "R", "R", "F", "R", "F"]


def test_lagrange_weights_extrapolate_polynomials():
    ts = [0.5, 0.3, 0.2]
    w = lagrange_weights(ts, 0.65)
    assert sum(w) == pytest.approx(1.0)
    assert sum(wi * t**2 for wi, t in zip(w, ts, strict=True)) == pytest.approx(0.65**2)


def test_forecast_beats_reuse_on_the_golden_model(golden, golden_model):
    noise = initial_noise(golden.meta["seeds"], 32, 64)
    y = torch.tensor(golden.meta["classes"])

    def run(**kw):
        return sample(golden_model, noise, y, 5, SamplerSettings(steps=12, cfg=1.0, **kw))

    full = run()
    reuse = (run(cache_interval=2) - full).pow(2).mean()
    forecast = (run(cache_interval=2, token_forecast="linear") - full).pow(2).mean()
    assert forecast < 0.25 * reuse  # >= 6 dB closer to full evaluation


@pytest.mark.parametrize("method", ["euler", "heun", "ab2", "ab3", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_auto_forecast_runs_the_solvers_measured_choice(method, k, monkeypatch):
    from dip_export.sampling import tokens

    chosen = tokens.FORECAST_BY_SOLVER[method].get(k, "off")
    assert tokens.forecast_mode(SamplerSettings(method=method, cache_interval=k, token_forecast="auto")) == chosen
    auto = _run(TimeTokens(2), method=method, cache_interval=k, token_forecast="auto")
    assert torch.equal(auto, _run(TimeTokens(2), method=method, cache_interval=k, token_forecast=chosen))
    monkeypatch.setitem(tokens.FORECAST_BY_SOLVER, method, {k: "quadratic"})
    exact = _run(TimeTokens(2), method=method, cache_interval=k, token_forecast="auto")
    torch.testing.assert_close(exact, _run(TimeTokens(2), method=method), rtol=0, atol=2e-5)  # the table is what runs
