"""Whole-step CUDA graphs: backbone, detailer, guidance combine and Euler update captured once and
replayed for every step over static buffers.

Two graphs at most per batch shape: the paired step (CFG on both halves) and the conditional-only
step (guidance weight 1). t, dt and w live in device buffers written before each replay, so the
captured work never changes. Both graphs share one memory pool (they never replay at once). Engines
that keep per-shape state (TensorRT) hold one execution context per row count, and the warm-up
before each capture runs every engine once at the shape it is captured with. Anything the graph
cannot express (Heun, token reuse, a capture that fails, also inside TensorRT) runs the plain
sampler instead, with a warning, and `fallback_reason` says why (None while graphs are used).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from dip_export.errors import DipError
from dip_export.sampling import Denoiser, SamplerSettings, guidance_combine, guidance_weight, runs_paired, sample, time_grid


class GraphedSampler:
    """`sample(...)` with one captured CUDA graph per step kind; re-captures when the shape changes."""

    def __init__(self, net: Denoiser, device: torch.device) -> None:
        self.net, self.device = net, device
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.shape: tuple[int, ...] | None = None
        self.fallback_reason: str | None = None  # why the last call sampled without graphs
        self.captures = 0

    def _buffers(self, noise: Tensor, y: Tensor, null_class: int) -> None:
        b = noise.shape[0]
        dev = self.device
        self.x = torch.empty_like(noise, device=dev)
        self.y = y.to(dev).clone()
        self.y_pair = torch.cat([torch.full_like(self.y, null_class), self.y])
        self.t = torch.zeros(b, device=dev)
        self.t_pair = torch.zeros(2 * b, device=dev)
        self.w = torch.ones((), device=dev)
        self.dt = torch.zeros((), device=dev)
        self.graphs = {}
        self.pool = torch.cuda.graph_pool_handle()  # one pool for both graphs: they never replay at once
        self.shape = tuple(noise.shape)

    def _step(self, paired: bool) -> None:
        x = self.x
        if paired:
            xx = torch.cat([x, x])
            v = guidance_combine(self.net.detailer(xx, self.net.backbone(xx, self.t_pair, self.y_pair)), self.w)
        else:
            v = self.net.detailer(x, self.net.backbone(x, self.t, self.y)).float()
        x.add_(self.dt * v)  # the Euler update, in place on the static state

    def _capture(self, paired: bool) -> torch.cuda.CUDAGraph:
        saved = self.x.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside the capture: allocations, engine shape setup
            self._step(paired)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.x.copy_(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self._step(paired)
        self.captures += 1
        return graph

    def _fallback(self, reason: str) -> None:
        self.fallback_reason = reason
        warnings.warn(f"{reason}; sampling without CUDA graphs", stacklevel=3)

    def __call__(
        self,
        noise: Tensor,
        y: Tensor,
        null_class: int,
        settings: SamplerSettings,
        on_step: Callable[[int], None] | None = None,
    ) -> Tensor:
        if settings.method != "euler" or settings.cache_interval != 1:
            self._fallback("CUDA graphs cover the Euler step without token reuse")
            return sample(self.net, noise, y, null_class, settings, on_step)
        self.fallback_reason = None
        if self.shape != tuple(noise.shape):
            self._buffers(noise, y, null_class)
        self.y.copy_(y)  # labels are graph inputs: new classes need no new capture
        self.y_pair[y.shape[0] :].copy_(y)
        grid = time_grid(settings.steps, settings.shift).tolist()
        with torch.inference_mode():
            self.x.copy_(noise)
            for i in range(settings.steps):
                paired = runs_paired(settings, grid[i])
                self.t.fill_(grid[i])
                self.t_pair.fill_(grid[i])
                self.w.fill_(guidance_weight(settings, grid[i]))
                self.dt.fill_(grid[i + 1] - grid[i])
                if paired not in self.graphs:
                    try:
                        self.graphs[paired] = self._capture(paired)
                    except (RuntimeError, DipError) as err:  # TensorRT's refusals are DipErrors
                        self._fallback(f"CUDA graph capture failed ({str(err).strip().splitlines()[0]})")
                        self.shape = None  # a failed capture may leave the engines' state half set: start over next time
                        return sample(self.net, noise, y, null_class, settings, on_step)
                self.graphs[paired].replay()
                if on_step is not None:
                    on_step(i)
        return self.x.clone()
