"""The yardstick's reference: converged by halving its step until two runs agree, on a known solution."""

import math

import pytest
import torch

from dip_export.errors import UsageError
from dip_export.sampling import SamplerSettings
from dip_export.sampling.reference import converged, float_psnr, sampled


class Wave:
    """A smooth field with a nonlinear x-dependence; the backbone hands t on as the 'token'."""

    def __init__(self, a):
        self.a = a

    def backbone(self, x, t, y):
        return t.view(-1, 1, 1, 1).expand(-1, 1, 1, 1).clone()

    def detailer(self, x, tokens):
        return (self.a * 3 * torch.cos(3 * tokens.double()) + 0.5 * torch.sin(4 * tokens.double() * x.double())).float()


def _exact_free_wave(x0, a):
    return x0 + a * math.sin(3.0)


def test_reference_agrees_with_the_exact_solution_beyond_its_self_check():
    x0 = torch.linspace(-0.9, 0.9, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    a = torch.linspace(0.2, -0.3, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    net = Wave(a)
    net.detailer = lambda x, tokens: (a * 3 * torch.cos(3 * tokens)).float()  # x-independent: exact answer known
    calls = []
    run = sampled(net, x0, torch.zeros(2, dtype=torch.int64), 0, batch=2)
    ref = converged(lambda s: calls.append(s.steps) or run(s), SamplerSettings(cfg=1.0), steps=8, agreement_db=70.0)
    assert ref.self_check_db >= 70.0 and ref.solver == "ab3"
    assert calls == [4 * 2**i for i in range(len(calls))] and len(calls) >= 3  # 8 steps were not enough: doubled
    assert float_psnr(ref.x, _exact_free_wave(x0, a)) > ref.self_check_db  # the check is conservative (3rd order)


def test_reference_doubles_on_a_nonlinear_field_and_stops_at_the_limit():
    x0 = torch.linspace(-0.9, 0.9, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    net = Wave(torch.full_like(x0, 0.3))
    run = sampled(net, x0, torch.zeros(2, dtype=torch.int64), 0, batch=2)
    ref = converged(run, SamplerSettings(cfg=1.0), steps=16, agreement_db=80.0)
    finer = run(SamplerSettings(cfg=1.0, method="ab3", steps=4 * ref.steps))
    assert float_psnr(ref.x, finer) >= 80.0  # what the self-check promised holds against a 4x finer run
    with pytest.raises(UsageError, match="did not converge"):
        converged(run, SamplerSettings(cfg=1.0), steps=16, agreement_db=200.0, max_steps=64)
