import numpy as np
import pytest
import torch

from dip_export.errors import UsageError
from dip_export.sampling import (
    SamplerSettings,
    guidance_weight,
    initial_noise,
    sample,
    sample_counts,
    step_weight,
    time_grid,
    to_uint8,
)


def _run(golden, model, case, **overrides):
    s = golden.meta["sampler_cases"][case]
    overrides.setdefault("method", s.get("sampler", "euler"))
    settings = SamplerSettings(steps=s["steps"], cfg=s["cfg"], shift=s["shift"], **overrides)
    noise = initial_noise(golden.meta["seeds"], golden.meta["image_height"], golden.meta["image_width"])
    return sample(model, noise, torch.tensor(golden.meta["classes"]), golden.meta["null_class"], settings)


def test_noise_is_the_release_noise(golden):
    noise = initial_noise(golden.meta["seeds"], 32, 64)
    np.testing.assert_array_equal(noise.numpy(), golden["noise"])


@pytest.mark.parametrize("case", ["cfg2.5", "cfg1_shift2", "euler20_cfg3", "heun6_cfg3_shift2"])
@pytest.mark.parametrize("skip_uncond", [True, False])
def test_sampler_reproduces_authors_images(golden, golden_model, case, skip_uncond):
    x = _run(golden, golden_model, case, skip_uncond=skip_uncond)
    np.testing.assert_allclose(x.numpy(), golden[f"sample_{case}"], atol=1e-4)
    diff = np.abs(to_uint8(x).astype(int) - golden[f"sample_{case}_uint8"])
    assert diff.max() <= 1


def test_skipping_the_unconditional_half_saves_work_not_pixels(golden, golden_model):
    calls = []

    class Counting:
        def backbone(self, x, t, y):
            calls.append(x.shape[0])
            return golden_model.backbone(x, t, y)

        def detailer(self, x, tokens):
            return golden_model.detailer(x, tokens)

    a = _run(golden, Counting(), "cfg1_shift2", skip_uncond=True)
    assert calls == [2] * 5  # B only, never 2B, at guidance 1
    b = _run(golden, golden_model, "cfg1_shift2", skip_uncond=False)
    np.testing.assert_array_equal(to_uint8(a), to_uint8(b))


def test_a_grid_point_on_float32_bound_is_not_guided():
    # 20 steps: t_2 = float32(0.1) exactly; a float64 comparison would guide it
    settings = SamplerSettings(steps=20, cfg=3.0)
    t2 = time_grid(20, 1.0)[2].item()
    assert t2 == float(np.float32(0.1)) and t2 > 0.1
    assert guidance_weight(settings, t2) == 1.0
    assert sample_counts(settings) == {"paired_evals": 17, "single_evals": 3, "backbone_calls": 20}


def test_heun_decides_the_weight_once_per_step_with_inclusive_upper_bound():
    settings = SamplerSettings(steps=4, cfg=3.0, interval=(0.1, 0.5), method="heun")
    # grid 0, .25, .5, .75, 1: step 2 starts on hi (inclusive) -> guided, and so is its corrector at .75
    assert [step_weight(settings, t) for t in (0.0, 0.25, 0.5, 0.75)] == [1.0, 3.0, 3.0, 1.0]
    # evaluations: step0 2 single; step1 2 paired; step2 2 paired; step3 (Euler) 1 single
    assert sample_counts(settings) == {"paired_evals": 4, "single_evals": 3, "backbone_calls": 7}


def test_guidance_interval_is_strict_and_counts_match():
    settings = SamplerSettings(steps=10, cfg=4.0, interval=(0.1, 1.0))
    grid = time_grid(10, 1.0)
    assert grid[1].item() == pytest.approx(0.1)
    # t = 0 and t = 0.1 are outside the strict interval: 2 single, 8 paired evaluations
    assert sample_counts(settings) == {"paired_evals": 8, "single_evals": 2, "backbone_calls": 10}


def test_time_shift_moves_the_grid():
    g = time_grid(4, 3.0)
    assert g[0] == 0 and g[-1] == 1
    assert g[2].item() == pytest.approx(0.5 / (0.5 + 0.5 * 3.0))


def test_heun_matches_a_hand_written_step(golden, golden_model):
    noise = initial_noise(golden.meta["seeds"], 32, 64)
    y = torch.tensor(golden.meta["classes"])
    out = sample(golden_model, noise, y, 5, SamplerSettings(steps=2, cfg=1.0, shift=2.0, method="heun"))
    g = time_grid(2, 2.0)

    def v(x, t):
        return golden_model(x, torch.full((2,), float(t)), y)

    with torch.no_grad():
        v0 = v(noise, g[0])
        x1 = noise + (g[1] - g[0]) * 0.5 * (v0 + v(noise + (g[1] - g[0]) * v0, g[1]))
        x2 = x1 + (g[2] - g[1]) * v(x1, g[1])  # the last step is plain Euler
    torch.testing.assert_close(out, x2, rtol=1e-5, atol=1e-5)


def test_token_reuse_runs_the_backbone_less_and_stays_close(golden, golden_model):
    calls = []

    class Counting:
        def backbone(self, x, t, y):
            calls.append(1)
            return golden_model.backbone(x, t, y)

        def detailer(self, x, tokens):
            return golden_model.detailer(x, tokens)

    exact = _run(golden, golden_model, "cfg2.5")
    cached = _run(golden, Counting(), "cfg2.5", cache_interval=2)
    assert len(calls) == 4  # 6 steps: the guidance weight changes at step 1, then every 2nd step
    assert (cached - exact).abs().max() < 0.5


@pytest.mark.parametrize(
    "kwargs", [{"steps": 0}, {"cfg": float("nan")}, {"shift": 0.0}, {"interval": (0.5, 0.5)}, {"method": "rk4"}]
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(UsageError):
        SamplerSettings(**kwargs)
