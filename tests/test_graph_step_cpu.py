"""The whole-step CUDA graph's arithmetic, run without capture on the CPU, equals plain sampling."""

import pytest
import torch

from dip_export.runtime.cuda_graph import GraphedSampler
from dip_export.sampling import SamplerSettings, initial_noise, sample


@pytest.mark.parametrize("method", ["euler", "ab2", "ab3", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize(
    "extra",
    [
        {"cfg": 2.5},
        {"cfg": 1.0},
        {"cfg": 3.0, "cache_interval": 2},
        {"cfg": 3.0, "cache_interval": 2, "token_forecast": "linear"},
    ],
)
def test_graph_step_arithmetic_equals_plain_sampling(golden, golden_model, method, extra):
    noise = initial_noise(golden.meta["seeds"], 32, 64)
    y = torch.tensor(golden.meta["classes"])
    settings = SamplerSettings(steps=7, method=method, **extra)
    plain = sample(golden_model, noise, y, 5, settings)
    stepped = GraphedSampler(golden_model, torch.device("cpu"), capture=False)
    with torch.inference_mode():
        out = stepped(noise, y, 5, settings)
    torch.testing.assert_close(out, plain, rtol=1e-6, atol=1e-6)
    assert not torch.equal(out, noise)


def test_quadratic_forecast_in_the_graph_step(golden, golden_model):
    noise = initial_noise(golden.meta["seeds"], 32, 64)
    y = torch.tensor(golden.meta["classes"])
    settings = SamplerSettings(steps=9, method="ab2", cfg=1.0, cache_interval=3, token_forecast="quadratic")
    plain = sample(golden_model, noise, y, 5, settings)
    out = GraphedSampler(golden_model, torch.device("cpu"), capture=False)(noise, y, 5, settings)
    torch.testing.assert_close(out, plain, rtol=1e-6, atol=1e-6)
