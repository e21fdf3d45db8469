"""Whole-step CUDA graphs: backbone, detailer, guidance combine and Euler update captured once and
replayed for every step over static buffers.

Two graphs at most per batch shape: the paired step (CFG on both halves) and the conditional-only
step (guidance weight 1). t, dt and w live in device buffers written before each replay, so the
captured work never changes. Anything the graph cannot express (Heun, token reuse, a capture that
fails) runs the plain sampler instead, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from dip_export.sampling import Denoiser, SamplerSettings, guidance_combine, guidance_weight, runs_paired, sample, time_grid


class GraphedSampler:
    """`sample(...)` with one captured CUDA graph per step kind; re-captures when the shape changes."""

    def __init__(self, net: Denoiser, device: torch.device) -> None:
        self.net, self.device = net, device
        self.graphs: dict[bool, torch.cuda.CUDAGraph] = {}
        self.shape: tuple[int, ...] | None = None

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
        with torch.cuda.graph(graph):
            self._step(paired)
        return graph

    def __call__(
        self,
        noise: Tensor,
        y: Tensor,
        null_class: int,
        settings: SamplerSettings,
        on_step: Callable[[int], None] | None = None,
    ) -> Tensor:
        if settings.method != "euler" or settings.cache_interval != 1:
            warnings.warn("CUDA graphs cover the Euler step without token reuse; sampling without them", stacklevel=2)
            return sample(self.net, noise, y, null_class, settings, on_step)
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
                    except RuntimeError as err:
                        warnings.warn(f"CUDA graph capture failed ({err}); sampling without graphs", stacklevel=2)
                        self.x.copy_(noise)
                        return sample(self.net, noise, y, null_class, settings, on_step)
                self.graphs[paired].replay()
                if on_step is not None:
                    on_step(i)
        return self.x.clone()
