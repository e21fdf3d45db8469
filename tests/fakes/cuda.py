"""A CUDA-graph and stream layer over CPU tensors that enforces what real CUDA graph capture enforces.

- Capture does not run kernels: work that writes memory existing before the capture is recorded, not
  done; `replay()` re-runs every recorded op on the very same tensors (fixed addresses, as a graph
  does), writing out-of-place results back into the buffers captured.
- `torch.cuda.synchronize()` (or a stream's) during a capture raises, as CUDA's
  "operation not permitted when stream is capturing" does; so do `.item()` (a device-to-host read) and
  a tensor made from host data inside the capture (a pageable host-to-device copy synchronises).
- Capturing belongs to the capturing stream: `is_current_stream_capturing()` is False on another one.
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

    def synchronize(self) -> None:
        if ACTIVE is not None and ACTIVE.capturing is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: FakeGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in HOST_SYNCS:  # .item(), torch.tensor(host data): both wait for the device
            raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing ({func})")
        # a kernel that writes existing memory is recorded, not run (a capture runs nothing)
        out = kwargs.get("out", args[0]) if func._schema.is_mutable else func(*args, **kwargs)
        self.graph.ops.append((func, args, kwargs, out))
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
        return self

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
            yield
        finally:
            self.device_index = saved

    def synchronize(self, device: Any = None) -> None:
        if self.capturing is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.synchronizes += 1

    @contextlib.contextmanager
    def stream(self, stream: FakeStream) -> Iterator[None]:
        saved, self._current = self._current, stream
        try:
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
        try:
            with _Recorder(graph):
                yield
        finally:
            self.capturing, self._current, self.capture_stream = None, saved, None
        graph.captured = True
        self.captures += 1

    def record(self, work: Callable[[], None]) -> None:
        """Non-torch work (a TensorRT enqueue) joining the graph being captured."""
        assert self.capturing is not None
        self.capturing.ops.append(work)
