"""The one timing harness: dip-bench, the yardstick and --backend auto all time with it.

Protocol (nanoGPT's bench.py, the TensorRT demo): warm-up runs first, CUDA synchronised around
every timed region, repeats until the spread (relative interquartile range) is below a bound or a
cap is reached, the median, per-stage timers around an engine's two calls (in a separate profiling
run), peak memory, and the CPU thread count the runs used. Timed runs return their results
(images), which torch.utils.benchmark.Timer does not; its thread discipline is followed here: one
count (`threads`, default the physical cores) is set for torch's intra-op pool for the whole
measurement, engine construction included, so that ONNX Runtime sessions (which take torch's count
when they are made) and torch.compile's kernels (whose OpenMP width is fixed when they are compiled)
run with the same count as eager PyTorch.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from dip_export.errors import UsageError
from dip_export.sampling import Denoiser
from dip_export.settings import MAX_REPEATS, exact_int, finite_float, plain_float, plain_value

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU or while a CUDA graph is being captured."""
    if device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """fn's result and its wall time in seconds, synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed run, and the figures read from them."""

    seconds: tuple[float, ...]
    threads: int  # CPU threads torch used for the runs

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    @property
    def quartiles(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the run times (both the one time for a single run)."""
        q1, q3 = np.percentile(self.seconds, [25, 75])
        return float(q1), float(q3)

    @property
    def spread(self) -> float:
        """Relative interquartile range (IQR / median): 0 for one run; above ~0.1 the machine was noisy."""
        if len(self.seconds) < 2:
            return 0.0
        q1, q3 = self.quartiles
        return (q3 - q1) / self.median if self.median > 0 else 0.0


def ratio_spread(a: Timing, b: Timing) -> float:
    """Relative spread of the ratio of two medians: the two relative spreads added in quadrature."""
    return float(np.hypot(a.spread, b.spread))


@dataclass(frozen=True)
class RepeatPolicy:
    """How many timed runs: at least `repeats`; more, one at a time, while the spread is above
    `target_spread`, until `max_repeats` runs or `max_seconds` of timed runs."""

    repeats: int = 5
    max_repeats: int = 30
    target_spread: float = 0.05
    max_seconds: float = 60.0  # of timed runs; the minimum `repeats` are always made

    def __post_init__(self) -> None:
        object.__setattr__(self, "repeats", exact_int(self.repeats, "--repeats", 1, MAX_REPEATS))
        object.__setattr__(self, "max_repeats", exact_int(self.max_repeats, "--max-repeats", self.repeats, MAX_REPEATS))
        object.__setattr__(self, "target_spread", finite_float(self.target_spread, "--target-spread", 0.0, 1.0))
        seconds = plain_float(self.max_seconds)  # plain values only: a caller's class never runs; inf: no cap
        if seconds is None or math.isnan(seconds) or seconds <= 0:
            raise UsageError(f"the time cap of a measurement must be a positive number, got {plain_value(self.max_seconds)}")
        object.__setattr__(self, "max_seconds", seconds)

    def more(self, seconds: list[float]) -> bool:
        """Whether another timed run is wanted after these."""
        if len(seconds) < self.repeats:
            return True
        if len(seconds) >= self.max_repeats or sum(seconds) >= self.max_seconds:
            return False
        return Timing(tuple(seconds), 0).spread > self.target_spread


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); the logical count where unknown."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:
            siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
        except OSError:
            return max(1, len(allowed))
        cores.add(siblings)
    return max(1, len(cores))


def cpu_flags() -> list[str]:
    """The CPU flags that decide which kernels are fast (AVX2, AVX-512 kinds, VNNI, AMX); empty off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            return sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni", "fma", "f16c"))
    return []


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """torch's CPU thread count set to `threads` (None: left as it is) for the block, then restored."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def repeat(
    run: Callable[[], T], device: torch.device, *, warmup: int, repeats: int | RepeatPolicy, threads: int | None = None,
    before: Callable[[], None] | None = None, after: Callable[[Any], None] | None = None,
) -> tuple[Timing, T | None]:  # fmt: skip
    """`warmup` untimed runs, then synchronised timed runs; the timing and the last result.

    `repeats`: a fixed count, or a RepeatPolicy (repeat while the spread is above its bound, up to its
    cap). `before` runs ahead of each timed run (reset per-run counters), `after` gets each timed run's result.
    """
    policy = repeats if isinstance(repeats, RepeatPolicy) else RepeatPolicy(repeats, repeats, max_seconds=float("inf"))
    last: T | None = None
    seconds: list[float] = []
    with cpu_threads(threads) as used:
        for _ in range(warmup):
            run()
        while policy.more(seconds):
            if before is not None:
                before()
            result, elapsed = timed_call(run, device)
            seconds.append(elapsed)
            if after is not None:
                after(result)
            last = result
    return Timing(tuple(seconds), used), last


class StageTimer:
    """Wraps an engine; counts calls and rows of its two networks and, while `profile` is set, accumulates
    wall time per call (synchronising CUDA around each): only in a separate profiling run, so that timed
    runs synchronise once before and after, as graphed runs do."""

    def __init__(self, net: Denoiser, device: torch.device) -> None:
        self.net, self.device = net, device
        self.profile = True  # False: count calls only, so a timed run synchronises once, as a graphed run does
        self.times = {"backbone": 0.0, "detailer": 0.0}
        self.calls = {"backbone": 0, "detailer": 0}
        self.rows = {"backbone": 0, "detailer": 0}  # images through each network (a CFG pair counts 2)

    def _timed(self, name: str, rows: int, fn: Callable[[], Tensor]) -> Tensor:
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return fn()  # being captured into a CUDA graph: no synchronising (it would end the capture), no timing
        if not self.profile:
            self.calls[name] += 1
            self.rows[name] += rows
            return fn()
        out, elapsed = timed_call(fn, self.device)
        self.times[name] += elapsed
        self.calls[name] += 1
        self.rows[name] += rows
        return out

    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self._timed("backbone", x.shape[0], lambda: self.net.backbone(x, t, y))

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor:
        return self._timed("detailer", x.shape[0], lambda: self.net.detailer(x, tokens))

    def graph_slot(self, slot: Any) -> Any:
        """The wrapped engine's per-graph execution contexts (TensorRT), when it has them."""
        inner = getattr(self.net, "graph_slot", None)
        return inner(slot) if inner is not None else contextlib.nullcontext()

    def reset(self) -> None:
        self.times = dict.fromkeys(self.times, 0.0)
        self.calls = dict.fromkeys(self.calls, 0)
        self.rows = dict.fromkeys(self.rows, 0)


class PeakMemory:
    """Peak resident memory on CPU (VmHWM after a reset), allocator peak on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return
        with contextlib.suppress(OSError):  # not Linux: the reading below is then the lifetime peak
            Path("/proc/self/clear_refs").write_text("5")

    def read_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 image arrays, in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
