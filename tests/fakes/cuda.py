"""A CUDA-graph and stream layer over CPU tensors that enforces what real CUDA graph capture enforces.

- Capture does not run kernels: work that writes memory existing before the capture is recorded, not
  done; `replay()` re-runs every recorded op on the very same tensors (fixed addresses, as a graph
  does), writing out-of-place results back into the buffers captured.
- `torch.cuda.synchronize()` (or a stream's) during a capture raises, as CUDA's
  "operation not permitted when stream is capturing" does; so do `.item()` (a device-to-host read) and
  a tensor made from host data inside the capture (a pageable host-to-device copy synchronises).
- `.cpu()` during a capture raises too (a synchronous device-to-host copy; torch captures in
  cudaStreamCaptureModeGlobal, where such calls are refused from any stream or thread).
- Capturing belongs to the capturing stream: `is_current_stream_capturing()` is False on another one,
  and work launched there runs at once, outside the graph, unless that stream joined the capture by
  waiting on the capturing stream; a joined stream the capturing stream never waits for again fails the
  capture (cudaErrorStreamCaptureUnjoined).
- Stream ordering: inside `torch.cuda.device(...)`, `torch.cuda.stream(...)` and captures (where
  multi-stream code runs) every op is stamped with its stream; an op that reads memory last written on
  another stream raises unless its stream waited for that work (`wait_stream`, vector clocks, so waits
  are transitive) or the host synchronised since.
- Work that is not a torch op (a TensorRT enqueue) registers itself with `record()` while capturing.
- The legacy default stream has handle 0; `torch.cuda.stream(s)` and captures change the current one.
- Devices: `torch.cuda.device(i)` sets the current index, names come from `names`.

Install with `FakeCuda().install(monkeypatch)`; the instance counts captures, replays and pools.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ACTIVE: FakeCuda | None = None
HOST_SYNCS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default)


class FakeStream:
    _handles = itertools.count(0x1000)

    def __init__(self, device: Any = None, handle: int | None = None) -> None:
        self.cuda_stream = next(self._handles) if handle is None else handle
        self.device = device

    def wait_stream(self, other: FakeStream) -> None:
        assert isinstance(other, FakeStream)
        if ACTIVE is not None:
            ACTIVE.wait(self, other)

    def synchronize(self) -> None:
        if ACTIVE is not None and ACTIVE.capturing is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        if ACTIVE is not None:
            ACTIVE.synced[self] = ACTIVE.clock(self).get(self, 0)  # the host saw this stream's work finish


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _written(func: Any, args: Any, kwargs: Any, out: Any) -> list[torch.Tensor]:
    """The tensors an op writes: its mutated arguments and its outputs."""
    writes = [arg.alias_info is not None and arg.alias_info.is_write for arg in func._schema.arguments]
    mutated = [a for a, w in zip(args, writes, strict=False) if w]
    mutated += [kwargs[arg.name] for arg, w in zip(func._schema.arguments, writes, strict=True) if w and arg.name in kwargs]
    return _tensors(mutated) + _tensors(out)


class _Tracker(TorchDispatchMode):
    """Stamps every op with its stream, checks cross-stream reads, and records what a capture captures."""

    def __init__(self, cuda: FakeCuda) -> None:
        super().__init__()
        self.cuda = cuda

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        cuda = self.cuda
        graph = cuda.capturing
        if graph is not None and func in HOST_SYNCS:  # .item(), torch.tensor(host data): both wait for the device
            raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing ({func})")
        stream = cuda._current
        cuda.check_reads(_tensors((args, kwargs)), stream, str(func))
        captured = graph is not None and stream in cuda.joined
        # a captured kernel that writes existing memory is recorded, not run (a capture runs nothing)
        out = kwargs.get("out", args[0]) if captured and func._schema.is_mutable else func(*args, **kwargs)
        if captured:
            graph.ops.append((func, args, kwargs, out))
        cuda.stamp(_written(func, args, kwargs, out), stream, captured)
        return out


class FakeGraph:
    """torch.cuda.CUDAGraph: replays what was captured on the same tensors."""

    def __init__(self) -> None:
        self.ops: list[Any] = []
        self.captured = False
        self.pool: Any = None
        self.replays = 0

    def replay(self) -> None:
        if not self.captured:
            raise RuntimeError("replay of a CUDA graph that was never captured")
        assert ACTIVE is not None
        if ACTIVE.capturing is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        with torch.inference_mode():
            for op in self.ops:
                if callable(op):
                    op()
                    continue
                func, args, kwargs, out = op
                result = func(*args, **kwargs)
                if not func._schema.is_mutable:
                    for dst, src in zip(tree_flatten(out)[0], tree_flatten(result)[0], strict=True):
                        if isinstance(dst, torch.Tensor) and dst.data_ptr() != src.data_ptr():
                            dst.copy_(src)
        self.replays += 1
        ACTIVE.replays += 1


class FakeCuda:
    def __init__(self, names: tuple[str, ...] = ("NVIDIA Fake GPU",), capability: tuple[int, int] = (9, 0)) -> None:
        self.names, self.capability = names, capability
        self.capturing: FakeGraph | None = None
        self.capture_stream: FakeStream | None = None
        self.captures = self.replays = self.synchronizes = 0
        self.pools: list[Any] = []
        self.device_index = 0
        self.default_stream = FakeStream(handle=0)
        self._current: FakeStream = self.default_stream
        self.clocks: dict[FakeStream, dict[FakeStream, int]] = {}  # per stream: how far it has seen each stream
        self.synced: dict[FakeStream, int] = {}  # per stream: work the host has waited for
        self.writes: dict[int, tuple[FakeStream, int]] = {}  # storage address -> (stream, op number) of its last write
        self.joined: set[FakeStream] = set()  # streams whose work the running capture records
        self.unjoined: set[FakeStream] = set()  # joined streams the capturing stream has not waited for since
        self.before_capture: dict[int, tuple[FakeStream, int] | None] = {}  # last writes the capture's own replaced
        self._tracking = 0

    def install(self, monkeypatch: Any) -> FakeCuda:
        monkeypatch.setattr(sys.modules[__name__], "ACTIVE", self)  # undone with the monkeypatch
        cuda = torch.cuda
        for name, value in {
            "is_available": lambda: True, "device_count": lambda: len(self.names),
            "get_device_name": self.get_device_name, "get_device_capability": lambda device=None: self.capability,
            "current_device": lambda: self.device_index, "device": self.device, "synchronize": self.synchronize,
            "Stream": FakeStream, "stream": self.stream, "current_stream": lambda device=None: self._current,
            "is_current_stream_capturing": lambda: self.capturing is not None and self._current is self.capture_stream,
            "CUDAGraph": FakeGraph,
            "graph": self.graph, "graph_pool_handle": self.graph_pool_handle,
        }.items():  # fmt: skip
            monkeypatch.setattr(cuda, name, value)
        cpu = torch.Tensor.cpu

        def checked_cpu(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.capturing is not None:  # a synchronous device-to-host copy
                raise RuntimeError("CUDA error: operation not permitted when stream is capturing (.cpu())")
            self.check_reads([tensor], None, ".cpu()")
            return cpu(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "cpu", checked_cpu)
        return self

    # ---- stream ordering (vector clocks)

    def clock(self, stream: FakeStream) -> dict[FakeStream, int]:
        return self.clocks.setdefault(stream, {})

    def wait(self, waiter: FakeStream, other: FakeStream) -> None:
        """`waiter.wait_stream(other)`: later work on `waiter` sees all `other` has seen and done so far."""
        mine = self.clock(waiter)
        for s, n in self.clock(other).items():
            mine[s] = max(mine.get(s, 0), n)
        if self.capturing is not None and other in self.joined:
            self.joined.add(waiter)  # waiting on a capturing stream joins the capture
            self.unjoined.discard(waiter)
            if waiter is not self.capture_stream:
                self.unjoined.add(waiter)
            else:
                self.unjoined.discard(other)

    def stamp(self, tensors: list[torch.Tensor], stream: FakeStream, captured: bool = False) -> None:
        """Captured writes order the graph's own work and are forgotten when the capture ends (nothing ran)."""
        clock = self.clock(stream)
        clock[stream] = clock.get(stream, 0) + 1
        for t in tensors:
            ptr = t.untyped_storage().data_ptr()
            if captured and ptr not in self.before_capture:
                self.before_capture[ptr] = self.writes.get(ptr)
            self.writes[ptr] = (stream, clock[stream])

    def check_reads(self, tensors: list[torch.Tensor], stream: FakeStream | None, what: str) -> None:
        """`stream` None: the host reads (after its copy synchronised the current stream)."""
        reader = self._current if stream is None else stream
        seen = self.clock(reader)
        for t in tensors:
            last = self.writes.get(t.untyped_storage().data_ptr())
            if last is None or last[0] is reader:
                continue
            writer, n = last
            if seen.get(writer, 0) < n and self.synced.get(writer, 0) < n:
                raise RuntimeError(
                    f"stream {reader.cuda_stream:#x} reads ({what}) memory written on stream {writer.cuda_stream:#x} "
                    "without waiting for it (wait_stream): a race"
                )

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        """Ops are stamped with their stream inside device, stream and graph contexts (entered once when nested)."""
        self._tracking += 1
        try:
            if self._tracking == 1:
                with _Tracker(self):
                    yield
            else:
                yield
        finally:
            self._tracking -= 1

    def _index(self, device: Any) -> int:
        if device is None:
            return self.device_index
        if isinstance(device, int):
            return device
        index = torch.device(device).index
        return self.device_index if index is None else index  # "cuda" alone is the current device

    def get_device_name(self, device: Any = None) -> str:
        return self.names[self._index(device)]

    @contextlib.contextmanager
    def device(self, device: Any) -> Iterator[None]:
        saved, self.device_index = self.device_index, self._index(device)
        try:
            with self._tracked():
                yield
        finally:
            self.device_index = saved

    def synchronize(self, device: Any = None) -> None:
        if self.capturing is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.synchronizes += 1
        for stream, clock in self.clocks.items():  # the host waited for every stream
            self.synced[stream] = clock.get(stream, 0)

    @contextlib.contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        saved, self._current = self._current, stream
        try:
            with self._tracked():
                yield
        finally:
            self._current = saved

    def graph_pool_handle(self) -> Any:
        return object()

    @contextlib.contextmanager
    def graph(self, graph: FakeGraph, pool: Any = None, stream: Any = None, **_: Any) -> Iterator[None]:
        if self.capturing is not None:
            raise RuntimeError("a capture is already under way")
        graph.ops, graph.pool = [], pool
        self.pools.append(pool)
        self.capturing = graph
        saved, self._current = self._current, stream or FakeStream()
        self.capture_stream = self._current
        self.joined, self.unjoined = {self._current}, set()
        try:
            with self._tracked():
                yield
            if self.unjoined:  # a stream forked from the capture was never joined back
                raise RuntimeError("CUDA error: capturing stream has unjoined work (cudaErrorStreamCaptureUnjoined)")
        finally:
            self.capturing, self._current, self.capture_stream = None, saved, None
            self.joined, self.unjoined = set(), set()
            for ptr, last in self.before_capture.items():
                if last is None:
                    self.writes.pop(ptr, None)
                else:
                    self.writes[ptr] = last
            self.before_capture = {}
        graph.captured = True
        self.captures += 1

    def record(self, work: Callable[[], None]) -> None:
        """Non-torch work (a TensorRT enqueue) joining the graph being captured."""
        assert self.capturing is not None
        self.capturing.ops.append(work)
