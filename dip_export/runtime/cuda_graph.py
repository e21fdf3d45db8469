"""Whole-step CUDA graphs: backbone, detailer, guidance combine and the solver's update captured once
and replayed for every step over static buffers.

One graph per step kind and batch shape: the paired step (CFG on both halves) and the
conditional-only step (guidance weight 1); with token reuse or forecasting also their detailer-only
kinds. t, w, the solver's coefficients and the forecast weights live in device buffers written
before each replay, so the captured work never changes; the update is the solvers' own
(`solver_update`, `forecast_tokens`). Anything the graph cannot express (Heun, a capture that fails)
runs the plain sampler instead, with a warning, and `fallback_reason` says why (None while graphs
are used); a capture that failed is not tried again for that shape. All graphs of a shape share one
memory pool (they never replay at once). Engines that keep per-shape state (TensorRT) offer
`graph_slot(kind)`: the warm-up and the capture of each kind run on execution contexts of their
own, so graphs that bind different buffers never share a context. Per-step scalars are copied to
the device once per call (a table), not from pageable host memory every step. `capture=False`
runs the same step arithmetic without graphs (any device), which is how the CPU checks it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dip_export.errors import DipError
from dip_export.sampling import Denoiser, SamplerSettings, guidance_combine, plan_steps, sample
from dip_export.sampling.solvers import N_COEF, SolverState, solver_update
from dip_export.sampling.tokens import TokenSchedule, forecast_tokens, push_tokens

Kind = tuple[bool, bool, bool]  # (paired step, backbone refresh, tokens from the paired history)


class GraphedSampler:
    """`sample(...)` with one captured CUDA graph per step kind; re-captures when the shape changes."""

    def __init__(self, net: Denoiser, device: torch.device, capture: bool = True) -> None:
        self.net, self.device, self.capture = net, device, capture
        self.graphs: dict[bool | Kind, torch.cuda.CUDAGraph] = {}
        self.shape: tuple[int, ...] | None = None
        self.fallback_reason: str | None = None  # why the last call sampled without graphs
        self.captures = 0
        self.failed: dict[tuple[int, ...], str] = {}  # shape -> why its capture failed (never retried)

    def _buffers(self, noise: Tensor, y: Tensor, null_class: int) -> None:
        b = noise.shape[0]
        dev = self.device
        self.x = torch.empty_like(noise, device=dev)
        self.y = y.to(dev).clone()
        self.y_pair = torch.cat([torch.full_like(self.y, null_class), self.y])
        self.t = torch.zeros(b, device=dev)
        self.t_pair = torch.zeros(2 * b, device=dev)
        self.w = torch.ones((), device=dev)
        self.coef = torch.zeros(N_COEF, device=dev)  # the solver's step coefficients
        self.fw = torch.zeros(3, device=dev)  # forecast weights over the token history
        self.state = SolverState.like(self.x)
        self.tokens: dict[bool, list[Tensor]] = {}  # static token histories, paired and conditional-only
        self.graphs = {}
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None  # one pool: graphs never replay at once
        self.shape = tuple(noise.shape)

    def _tokens(self, x: Tensor, t: Tensor, y: Tensor, kind: Kind) -> Tensor:
        paired, refresh, source = kind
        if refresh:
            tokens = self.net.backbone(x, t, y)
            if paired not in self.tokens:  # first met in the warm-up, outside any capture
                self.tokens[paired] = [torch.zeros_like(tokens) for _ in range(3)]
            push_tokens(self.tokens[paired], tokens)
            return tokens
        out = forecast_tokens(self.tokens[source], self.fw)
        return out if source == paired else out[-x.shape[0] :]  # paired tokens: the conditional half

    def _step(self, kind: bool | Kind) -> None:
        paired, refresh, source = kind if isinstance(kind, tuple) else (kind, True, kind)
        x = self.state.x
        if paired:
            xx = torch.cat([x, x])
            v = guidance_combine(
                self.net.detailer(xx, self._tokens(xx, self.t_pair, self.y_pair, (True, refresh, source))), self.w
            )
        else:
            v = self.net.detailer(x, self._tokens(x, self.t, self.y, (False, refresh, source))).float()
        solver_update(self.state, v, self.coef)  # the solver's update, in place on the static state

    def _capture(self, paired: bool | Kind) -> torch.cuda.CUDAGraph:
        slot = getattr(self.net, "graph_slot", None)
        with torch.cuda.device(self.device), slot(paired) if slot is not None else contextlib.nullcontext():
            before = self._dynamic()
            saved = [b.clone() for b in before]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the capture: allocations, engine shape setup
                self._step(paired)
            torch.cuda.current_stream(self.device).wait_stream(side)
            for b, old in zip(before, saved, strict=True):
                b.copy_(old)
            for b in self._dynamic()[len(before) :]:  # token histories the warm-up created: empty, as if never run
                b.zero_()
            graph = torch.cuda.CUDAGraph()
            capture_stream = torch.cuda.Stream(self.device)  # on the engines' device, not the current one
            capture_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.graph(graph, pool=self.pool, stream=capture_stream):
                self._step(paired)
            torch.cuda.current_stream(self.device).wait_stream(capture_stream)
        self.captures += 1
        return graph

    def _tables(self, plans: list, schedule_weights: list[tuple[float, ...] | None]) -> tuple[Tensor, Tensor]:
        """Every step's solver coefficients and forecast weights, copied to the device in one transfer."""
        coef = torch.from_numpy(np.stack([np.asarray(p.coef, dtype=np.float32) for p in plans])).reshape(len(plans), N_COEF)
        fw = torch.tensor([[*(w or ()), 0.0, 0.0, 0.0][:3] for w in schedule_weights], dtype=torch.float32)
        return coef.to(self.device), fw.reshape(len(plans), 3).to(self.device)

    def _fallback(self, reason: str) -> None:
        self.fallback_reason = reason
        warnings.warn(f"{reason}; sampling without CUDA graphs", stacklevel=3)

    def _dynamic(self) -> list[Tensor]:
        """The buffers a step changes (restored after the warm-up run that precedes a capture)."""
        return [self.state.x, self.state.x_prev, *self.state.hist, *(b for h in self.tokens.values() for b in h)]

    def __call__(
        self,
        noise: Tensor,
        y: Tensor,
        null_class: int,
        settings: SamplerSettings,
        on_step: Callable[[int], None] | None = None,
    ) -> Tensor:
        if settings.method == "heun":
            self._fallback("CUDA graphs cover the one-evaluation solvers, not Heun")
            return sample(self.net, noise, y, null_class, settings, on_step)
        if tuple(noise.shape) in self.failed:  # remembered: no capture is tried again for this shape
            self.fallback_reason = self.failed[tuple(noise.shape)]
            return sample(self.net, noise, y, null_class, settings, on_step)
        self.fallback_reason = None
        if self.shape != tuple(noise.shape):
            self._buffers(noise, y, null_class)
        self.y.copy_(y)  # labels are graph inputs: new classes need no new capture
        self.y_pair[y.shape[0] :].copy_(y)
        plans, kinds, weights = self._schedule(settings)
        coef, fw = self._tables(plans, weights)
        with torch.inference_mode():
            self.state.x.copy_(noise)
            self.state.x_prev.zero_()
            for h in self.state.hist:
                h.zero_()
            for i, (plan, kind) in enumerate(zip(plans, kinds, strict=True)):
                self.t.fill_(plan.t)
                self.t_pair.fill_(plan.t)
                self.w.fill_(plan.w)
                self.coef.copy_(coef[i])  # device to device: no host synchronisation
                self.fw.copy_(fw[i])
                if not self.capture:
                    self._step(kind)
                else:
                    if kind not in self.graphs:
                        try:
                            self.graphs[kind] = self._capture(kind)
                        except (RuntimeError, DipError) as err:  # TensorRT's refusals are DipErrors
                            reason = f"CUDA graph capture failed ({(str(err).strip().splitlines() or [''])[0]})"
                            self.failed[tuple(noise.shape)] = reason
                            self._fallback(reason)
                            self.shape = None  # a failed capture may leave the engines' state half set: start over
                            return sample(self.net, noise, y, null_class, settings, on_step)
                    self.graphs[kind].replay()
                if on_step is not None:
                    on_step(i)
        return self.state.x.clone()

    @staticmethod
    def _schedule(settings: SamplerSettings) -> tuple[list, list[bool | Kind], list[tuple[float, ...] | None]]:
        """The step plans, each step's graph kind and its forecast weights (None: the backbone runs)."""
        schedule = TokenSchedule(settings)
        cached = settings.cache_interval > 1
        plans = plan_steps(settings)
        kinds: list[bool | Kind] = []
        weights: list[tuple[float, ...] | None] = []
        for plan in plans:
            w = schedule.decide(plan.t, plan.paired)
            source = schedule.kind if schedule.kind is not None else plan.paired
            if w is None:
                schedule.stored(plan.t, plan.paired)
                source = plan.paired
            kinds.append((plan.paired, w is None, source) if cached else plan.paired)
            weights.append(None if w is None else tuple(w))
        return plans, kinds, weights
