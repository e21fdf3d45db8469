"""Whole-step CUDA graphs: same images as plain sampling (needs a CUDA device)."""

import pytest
import torch

from dip_export.runtime.cuda_graph import GraphedSampler
from dip_export.runtime.torch_engine import TorchEngine
from dip_export.sampling import SamplerSettings, initial_noise, sample

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture()
def engine(golden_model):
    import copy

    return TorchEngine(copy.deepcopy(golden_model), torch.device("cuda"))


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_graphed_steps_match_plain_sampling(engine, golden, cfg):
    noise = initial_noise(golden.meta["seeds"], 32, 64).cuda()
    y = torch.tensor(golden.meta["classes"], device="cuda")
    settings = SamplerSettings(steps=6, cfg=cfg)
    plain = sample(engine, noise, y, 5, settings)
    graphed = GraphedSampler(engine, torch.device("cuda"))
    out = graphed(noise, y, 5, settings)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
    assert set(graphed.graphs) == ({False} if cfg == 1.0 else {True, False})
    again = graphed(noise, y.flip(0), 5, settings)  # new labels reuse the graphs
    torch.testing.assert_close(again, sample(engine, noise, y.flip(0), 5, settings), rtol=1e-4, atol=1e-4)


def test_shape_change_recaptures(engine, golden):
    graphed = GraphedSampler(engine, torch.device("cuda"))
    settings = SamplerSettings(steps=3, cfg=2.0)
    for n in (1, 3):
        noise = initial_noise(range(n), 32, 64).cuda()
        y = torch.arange(n, device="cuda") % 5
        torch.testing.assert_close(graphed(noise, y, 5, settings), sample(engine, noise, y, 5, settings), rtol=1e-4, atol=1e-4)
        assert graphed.shape == (n, 3, 32, 64)


def test_heun_falls_back_with_a_warning(engine, golden):
    noise = initial_noise([1], 32, 64).cuda()
    y = torch.tensor([0], device="cuda")
    with pytest.warns(UserWarning, match="without them"):
        GraphedSampler(engine, torch.device("cuda"))(noise, y, 5, SamplerSettings(steps=2, method="heun"))


@pytest.mark.parametrize("method", ["ab2", "ab3", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("forecast", [("off", 1), ("off", 2), ("linear", 2)])
def test_graphed_solvers_and_token_forecast_match_plain_sampling(engine, golden, method, forecast):
    noise = initial_noise(golden.meta["seeds"], 32, 64).cuda()
    y = torch.tensor(golden.meta["classes"], device="cuda")
    settings = SamplerSettings(steps=7, cfg=2.5, method=method, token_forecast=forecast[0], cache_interval=forecast[1])
    plain = sample(engine, noise, y, 5, settings)
    out = GraphedSampler(engine, torch.device("cuda"))(noise, y, 5, settings)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
