"""The flow-matching sampler, written once over the two-call denoiser interface.

Pure math: it knows nothing about export, engines or files. A *denoiser* is anything with
`backbone(x, t, y) -> tokens` and `detailer(x, tokens) -> v` (torch modules, ONNX Runtime
sessions, TensorRT engines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from dip_export.errors import UsageError


class Denoiser(Protocol):
    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor: ...

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SamplerSettings:
    """How to integrate the flow ODE from noise (t = 0) to data (t = 1)."""

    steps: int = 100  # number of integration steps
    cfg: float = 1.0  # classifier-free guidance weight; 1 means no guidance
    shift: float = 1.0  # time shift t' = t / (t + (1 - t) * shift); 1 = none
    interval: tuple[float, float] = (0.1, 1.0)  # guidance applies where lo < t < hi (strict, float32)
    method: str = "euler"  # "euler" or "heun"
    cache_interval: int = 1  # run the backbone every K steps and reuse its tokens in between
    skip_uncond: bool = True  # skip the unconditional half where the guidance weight is 1

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UsageError(f"steps must be >= 1, got {self.steps}")
        if not np.isfinite(self.cfg):
            raise UsageError(f"guidance scale must be finite, got {self.cfg}")
        if not np.isfinite(self.shift) or self.shift <= 0:
            raise UsageError(f"shift must be a positive number, got {self.shift}")
        lo, hi = self.interval
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise UsageError(f"guidance interval must be lo < hi, got {lo},{hi}")
        if self.method not in ("euler", "heun"):
            raise UsageError(f"sampler must be euler or heun, got {self.method!r}")
        if self.cache_interval < 1:
            raise UsageError(f"cache interval must be >= 1, got {self.cache_interval}")


def time_grid(steps: int, shift: float) -> Tensor:
    """The release's grid: linspace(0, 1 - 1/N, N) then 1.0, time-shifted; (N + 1,) float32."""
    t = torch.cat([torch.linspace(0, 1 - 1 / steps, steps), torch.ones(1)])
    return t / (t + (1 - t) * shift)


def _f32(value: float) -> float:
    return float(np.float32(value))


def guidance_weight(settings: SamplerSettings, t: float, inclusive_hi: bool = False) -> float:
    """The guidance weight at grid time t, compared as the release does: in float32.

    t is a float32 grid value and the bounds are rounded to float32 before the comparison, so a
    grid point on float32(0.1) is not guided. Euler tests lo < t < hi; the release's Heun decides
    once per step from t_cur with an inclusive upper bound (lo < t <= hi).
    """
    lo, hi, t32 = _f32(settings.interval[0]), _f32(settings.interval[1]), _f32(t)
    inside = lo < t32 <= hi if inclusive_hi else lo < t32 < hi
    return settings.cfg if inside else 1.0


def step_weight(settings: SamplerSettings, t_cur: float) -> float:
    """The weight of a whole step, decided once from t_cur (Heun uses it for both evaluations)."""
    return guidance_weight(settings, t_cur, inclusive_hi=settings.method == "heun")


def runs_paired(settings: SamplerSettings, t: float, w: float | None = None) -> bool:
    """Whether the evaluation at t needs both halves; where the weight is 1, v is v_cond alone."""
    weight = guidance_weight(settings, t) if w is None else w
    return not (settings.skip_uncond and weight == 1.0)


def initial_noise(seeds: Sequence[int], height: int, width: int, channels: int = 3) -> Tensor:
    """Noise exactly as the release draws it: one CPU generator per image, float32."""
    return torch.stack([torch.randn((channels, height, width), generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def to_uint8(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, the release's rounding."""
    img = ((x.float() + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8)
    return img.permute(0, 2, 3, 1).cpu().numpy()


class _Velocity:
    """Guided velocity with optional backbone-token reuse."""

    def __init__(self, net: Denoiser, y: Tensor, null_class: int, settings: SamplerSettings) -> None:
        self.net = net
        self.settings = settings
        self.y_cond = y
        self.y_pair = torch.cat([torch.full_like(y, null_class), y])  # unconditional half first
        self.tokens: Tensor | None = None
        self.token_age = 0

    def _tokens(self, x: Tensor, t: float, y: Tensor) -> Tensor:
        reusable = self.tokens is not None and self.tokens.shape[0] >= x.shape[0]
        if reusable and self.token_age < self.settings.cache_interval:
            assert self.tokens is not None
            self.token_age += 1
            # Paired tokens hold [uncond, cond]: a conditional-only step takes the second half.
            return self.tokens[-x.shape[0] :]
        tb = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        self.tokens = self.net.backbone(x, tb, y)
        self.token_age = 1
        return self.tokens

    def __call__(self, x: Tensor, t: float, w: float) -> Tensor:
        if not runs_paired(self.settings, t, w):
            return self.net.detailer(x, self._tokens(x, t, self.y_cond)).float()
        xx = torch.cat([x, x])
        v_pair = self.net.detailer(xx, self._tokens(xx, t, self.y_pair))
        return guidance_combine(v_pair, w)


def guidance_combine(v_pair: Tensor, w: float | Tensor) -> Tensor:
    """[v_uncond; v_cond] (2B, ...) -> v_uncond + w (v_cond - v_uncond), in float32."""
    v_u, v_c = v_pair.float().chunk(2)
    return v_u + w * (v_c - v_u)


def sample(
    net: Denoiser,
    noise: Tensor,
    y: Tensor,
    null_class: int,
    settings: SamplerSettings,
    on_step: Callable[[int], None] | None = None,
) -> Tensor:
    """Integrate from `noise` (B, 3, H, W) with labels `y` (B,); returns the final x (B, 3, H, W)."""
    grid = time_grid(settings.steps, settings.shift).tolist()
    velocity = _Velocity(net, y, null_class, settings)
    x = noise.float()
    with torch.inference_mode():
        for i in range(settings.steps):
            t_cur, t_next = grid[i], grid[i + 1]
            dt = t_next - t_cur
            w = step_weight(settings, t_cur)
            v = velocity(x, t_cur, w)
            if settings.method == "heun" and i < settings.steps - 1:
                v = v.clone()  # engines may return their own buffer, which the next call overwrites
                v_next = velocity(x + dt * v, t_next, w)  # the release keeps the step's weight
                v = 0.5 * (v + v_next)
            x = x + dt * v
            if on_step is not None:
                on_step(i)
    return x


def sample_counts(settings: SamplerSettings) -> dict[str, int]:
    """Network evaluations a run makes with these settings, per image, without running it."""
    grid = time_grid(settings.steps, settings.shift).tolist()
    pair = single = 0
    for i in range(settings.steps):
        w = step_weight(settings, grid[i])
        ts = [grid[i]] + ([grid[i + 1]] if settings.method == "heun" and i < settings.steps - 1 else [])
        for t in ts:
            if runs_paired(settings, t, w):
                pair += 1
            else:
                single += 1
    return {"paired_evals": pair, "single_evals": single}
