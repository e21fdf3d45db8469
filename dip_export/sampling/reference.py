"""The converged solution a solver is judged against: a high-order solver with many steps, self-checked.

The reference is ab3 (third order) on the multistep solvers' grid, which puts a point on the guidance
bound and restarts there, so no step straddles the jump. It is trusted only when halving its step
changes it by less than the accuracy asked for: the run with N steps and the run with N / 2 must
agree to `REFERENCE_AGREEMENT_DB` (PSNR of the float images on the uint8 scale); otherwise N doubles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from dip_export.errors import UsageError
from dip_export.sampling.loop import sample
from dip_export.sampling.rules import Denoiser, SamplerSettings

REFERENCE_SOLVER = "ab3"
REFERENCE_STEPS = 512  # first try; 256 and 512 agree to 79 dB on the demo model at guidance 1.5
REFERENCE_AGREEMENT_DB = 70.0
MAX_REFERENCE_STEPS = 4096


@dataclass(frozen=True)
class Reference:
    """The converged final x (B, 3, H, W) float32 and how far halving its step moved it."""

    x: Tensor
    steps: int
    solver: str
    self_check_db: float  # PSNR (uint8 scale, float images) between the N and N / 2 step runs


def float_psnr(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """PSNR of two x in [-1, 1] on the uint8 scale (peak 255 = a span of 2), before rounding."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = float(np.mean((diff * 127.5) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


PSNR_CAP_DB = 100.0  # a per-image PSNR counts at most this much (an exact match would be infinite)
FIT_SCORES = ("pooled", "mean")  # how a grid fit sums images up: PSNR of the pooled MSE, or mean per-image PSNR


def image_psnrs(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> np.ndarray:
    """Per-image PSNR (uint8 scale, float images) of two (B, ...) batches, capped at `PSNR_CAP_DB`."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mse = np.mean(((diff * 127.5) ** 2).reshape(diff.shape[0], -1), axis=1)
    with np.errstate(divide="ignore"):
        db = 10 * np.log10(255.0**2 / mse)
    return np.minimum(db, PSNR_CAP_DB)


def fit_score(name: str, a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """A batch's score for a grid fit (higher is better). "pooled": PSNR of the MSE over all images, led by
    the hardest image; "mean": the mean of the per-image PSNRs, where every image counts alike."""
    if name == "pooled":
        return min(float_psnr(a, b), PSNR_CAP_DB)
    if name == "mean":
        return float(np.mean(image_psnrs(a, b)))
    raise UsageError(f"unknown fit score {name}; choose from {', '.join(FIT_SCORES)}")


def reference_settings(base: SamplerSettings, steps: int) -> SamplerSettings:
    """The reference solver with `steps` steps; guidance, interval and shift of `base`."""
    return replace(base, method=REFERENCE_SOLVER, steps=steps, cache_interval=1, token_forecast="off", grid=None)


def converged(
    run: Callable[[SamplerSettings], Tensor],
    base: SamplerSettings,
    steps: int = REFERENCE_STEPS,
    agreement_db: float = REFERENCE_AGREEMENT_DB,
    max_steps: int = MAX_REFERENCE_STEPS,
) -> Reference:
    """Run the reference at steps / 2 and steps, doubling until the two agree to `agreement_db`.

    `run(settings)` returns the final x for the fixed noise and labels; raises UsageError when
    `max_steps` is passed without agreement (the field is too rough for the check to pass).
    """
    if steps < 2 or steps % 2:
        raise UsageError(f"reference steps must be even and >= 2, got {steps}")
    coarse = run(reference_settings(base, steps // 2)).float()
    while True:
        fine = run(reference_settings(base, steps)).float()
        agreement = float_psnr(fine, coarse)
        if agreement >= agreement_db:
            return Reference(fine, steps, REFERENCE_SOLVER, agreement)
        if steps * 2 > max_steps:
            raise UsageError(
                f"the reference did not converge: {REFERENCE_SOLVER} at {steps // 2} and {steps} steps agree to "
                f"{agreement:.1f} dB, below {agreement_db:.0f} dB, and {steps * 2} steps exceed {max_steps}"
            )
        coarse, steps = fine, steps * 2


def sampled(
    net: Denoiser, noise: Tensor, y: Tensor, null_class: int, batch: int, on_step: Callable[[int], None] | None = None
) -> Callable[[SamplerSettings], Tensor]:
    """`run` for `converged`: the sampler over fixed noise and labels, in batches (`on_step` after every step)."""

    def run(settings: SamplerSettings) -> Tensor:
        parts = [sample(net, noise[i : i + batch], y[i : i + batch], null_class, settings, on_step=on_step)
                 for i in range(0, len(noise), batch)]  # fmt: skip
        return torch.cat(parts)

    return run
