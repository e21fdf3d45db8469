"""TensorRT engine: deserialised plans run on torch CUDA tensors bound by name.

API (TensorRT 10.x / 11.x Python docs, "Runtime", "ICudaEngine", "IExecutionContext"):
Runtime.deserialize_cuda_engine, ICudaEngine.create_execution_context,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3(stream_handle), each -> bool.
Rules followed (TensorRT docs and NVIDIA/TensorRT#2603, #3798; trtexec and demo/Diffusion do the same):
- one execution context per (network row count, CUDA graph): a graph captured with a context replays with
  that context's shapes and addresses, so a second shape or buffer on the same context would break the first
  graph; the contexts of an engine share one device-memory block (user-managed, as demo/Diffusion does);
- the plan's I/O names, dtypes and shapes are checked against the export contract on load;
- tensor addresses are multiples of 256 bytes (inputs that are not are staged into aligned buffers);
- never the legacy default stream: outside a capture the engine runs on its own stream, ordered
  after and before torch's current stream; inside a capture it runs on the capturing stream;
- every boolean is checked; engines and contexts are made, and enqueues run, under `torch.cuda.device(device)`.
Inputs that already have the engine's dtype, device and layout are bound where they are (no copy).
Returned tensors are the engine's own buffers: valid until the next call with the same row count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dip_export.errors import ExportError, UsageError
from dip_export.runtime.engine_io import ExportFiles, SubModelIO
from dip_export.runtime.trt_support import engine_matches, gpu_identity
from dip_export.runtime.trt_support import import_tensorrt as _tensorrt

TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}
TRT_DTYPES = {"float32": "FLOAT", "int64": "INT64", "float16": "HALF"}  # tensorrt.DataType member of each
ALIGNMENT = 256  # bytes: TensorRT refuses tensor and device-memory addresses that are not multiples of it
Slot = Hashable  # which CUDA graph binds a context (None: plain calls)


class EngineRunError(ExportError, RuntimeError):
    """TensorRT refused to run (an enqueue or binding returned False); a CUDA graph capture falls back on it."""


def aligned_empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor whose address is a multiple of ALIGNMENT (CUDA's allocator already is; CPU's is not)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    count = int(torch.Size(shape).numel())
    raw = torch.empty(count + ALIGNMENT // itemsize, dtype=dtype, device=device)
    skip = (-raw.data_ptr() % ALIGNMENT) // itemsize
    return raw[skip : skip + count].view(shape)


def check_engine_io(engine: Any, spec: SubModelIO, trt: Any, path: Path) -> None:
    """The plan's I/O names, dtypes and shapes are the export contract's (an engine from another graph is refused)."""
    names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
    wrong = []
    for tspec in [*spec.inputs, *spec.outputs]:
        if tspec.name not in names:
            wrong.append(f"{tspec.name} missing")
            continue
        dtype = engine.get_tensor_dtype(tspec.name)
        want_dtype = getattr(trt.DataType, TRT_DTYPES[tspec.dtype])
        shape = tuple(int(d) for d in engine.get_tensor_shape(tspec.name))
        want_shape = tspec.concrete(-1)  # -1: the dynamic batch
        if dtype != want_dtype or shape != want_shape:
            wrong.append(
                f"{tspec.name} is {getattr(dtype, 'name', dtype)} {list(shape)}, expected {tspec.dtype} {list(want_shape)}"
            )
    if wrong:
        raise ExportError(
            f"{path.name} does not have the {spec.name} I/O of this export ({'; '.join(wrong)}); rebuild with `dip-export trt`"
        )


class _Plan:
    """One engine; an execution context per (row count, CUDA graph) sharing one device-memory block, an output
    buffer per row count."""

    def __init__(self, trt: Any, path: Path, spec: SubModelIO, device: torch.device, rows: tuple[int, int]) -> None:
        self.spec, self.device, self.rows, self.trt = spec, device, rows, trt
        with torch.cuda.device(device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise ExportError(f"TensorRT could not load {path.name}; rebuild it with `dip-export trt`")
            check_engine_io(self.engine, spec, trt, path)
            self.stream = torch.cuda.Stream(device)  # a dedicated stream, never the legacy default one
            self.memory: Tensor | None = None  # made with the first context
        self.slot: Slot = None  # set by `graph_slot` while a CUDA graph is warmed up and captured
        self.contexts: dict[tuple[int, Slot], Any] = {}
        self.outputs: dict[int, Tensor] = {}
        self.bound: dict[tuple[int, Slot], dict[str, int]] = {}
        self.staging: dict[tuple[int, str], Tensor] = {}  # only for inputs of another dtype, device, layout or alignment

    def _shared_memory(self) -> Tensor | None:
        """One device-memory block for every context of this engine: they never run at the same time
        (one stream; graphs replay one after another). None where the bindings lack user-managed memory."""
        strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
        size = getattr(self.engine, "device_memory_size_v2", None)
        if strategy is None or size is None:
            return None
        return aligned_empty((max(int(size), 1),), torch.uint8, self.device)

    def _new_context(self) -> Any:
        with torch.cuda.device(self.device):
            if self.memory is None:
                self.memory = self._shared_memory()
            if self.memory is None:
                return self.engine.create_execution_context()
            context = self.engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is not None:
                context.set_device_memory(self.memory.data_ptr(), self.memory.numel())
            return context

    def _context(self, n: int) -> Any:
        key = (n, self.slot)
        if key not in self.contexts:
            context = self._new_context()
            if context is None:
                raise EngineRunError(f"TensorRT could not create an execution context for the {self.spec.name} engine")
            for tspec in self.spec.inputs:
                if not context.set_input_shape(tspec.name, tspec.concrete(n)):
                    raise UsageError(
                        f"{n} network rows do not fit the {self.spec.name} engine's profile ({self.rows[0]}..{self.rows[1]} "
                        f"rows); rebuild with `dip-export trt --batch MIN,OPT,MAX` covering it"
                    )
            self.contexts[key], self.bound[key] = context, {}
            if n not in self.outputs:
                out = self.spec.outputs[0]
                self.outputs[n] = aligned_empty(out.concrete(n), TORCH_DTYPES[out.dtype], self.device)
        return self.contexts[key]

    def _bind(self, n: int, name: str, tensor: Tensor) -> None:
        address, key = tensor.data_ptr(), (n, self.slot)
        if self.bound[key].get(name) != address:
            if not self.contexts[key].set_tensor_address(name, address):
                raise EngineRunError(f"TensorRT refused the address of {name} for the {self.spec.name} engine")
            self.bound[key][name] = address

    def _ready(self, n: int, tspec: Any, tensor: Tensor) -> Tensor:
        dtype = TORCH_DTYPES[tspec.dtype]
        if (
            tensor.dtype == dtype and tensor.device == self.device and tensor.is_contiguous()
            and tensor.data_ptr() % ALIGNMENT == 0
        ):  # fmt: skip
            return tensor
        key = (n, tspec.name)
        if key not in self.staging:
            self.staging[key] = aligned_empty(tspec.concrete(n), dtype, self.device)
        return self.staging[key].copy_(tensor)

    def __call__(self, *inputs: Tensor) -> Tensor:
        n = int(inputs[0].shape[0])
        context = self._context(n)
        for tspec, tensor in zip(self.spec.inputs, inputs, strict=True):
            self._bind(n, tspec.name, self._ready(n, tspec, tensor))
        self._bind(n, self.spec.outputs[0].name, self.outputs[n])
        with torch.cuda.device(self.device):  # TensorRT enqueues on the current device: it must be the engine's
            current = torch.cuda.current_stream(self.device)
            if torch.cuda.is_current_stream_capturing():  # the capturing stream is the one the graph records
                ok = context.execute_async_v3(current.cuda_stream)
            else:
                self.stream.wait_stream(current)
                ok = context.execute_async_v3(self.stream.cuda_stream)
                current.wait_stream(self.stream)
        if not ok:
            raise EngineRunError(f"TensorRT failed to enqueue the {self.spec.name} engine ({n} rows)")
        return self.outputs[n]


class TrtEngine:
    """backbone / detailer on the TensorRT plans recorded in an export folder's manifest."""

    def __init__(self, plans: dict[str, _Plan], min_rows: int, max_rows: int) -> None:
        self._plans, self.min_rows, self.max_rows = plans, min_rows, max_rows

    @classmethod
    def from_export(cls, export: ExportFiles, precision: str, device: torch.device) -> TrtEngine:
        if torch.device(device).type != "cuda":
            raise UsageError("the trt backend runs on a CUDA device (--device cuda)")
        folder = export.folder
        entry = export.engines.get(precision)
        if entry is None:
            raise UsageError(
                f"{folder} has no {precision} TensorRT engines; run `dip-export trt --{precision} --output-dir {folder}`"
            )
        return cls.from_entry(folder, entry, export.io, device)

    @classmethod
    def from_entry(cls, folder: Path, entry: dict[str, Any], specs: Mapping[str, SubModelIO], device: Any) -> TrtEngine:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # inputs on cuda:N compare equal to it: no staging copy
            device = torch.device("cuda", torch.cuda.current_device())
        trt = _tensorrt()
        gpu, _ = gpu_identity(device)
        if not engine_matches(entry, trt.__version__, gpu):
            raise ExportError(
                f"the engines in {folder} were built for {entry.get('gpu')} with TensorRT "
                f"{entry.get('trt_version')}; {device} is {gpu} with TensorRT {trt.__version__}: rebuild with `dip-export trt`"
            )
        lo, _, hi = (int(r) for r in entry["profile"]["network_rows"])
        plans = {role: _Plan(trt, folder / entry["files"][role], specs[role], device, (lo, hi)) for role in specs}
        return cls(plans, lo, hi)

    @contextlib.contextmanager
    def graph_slot(self, slot: Slot) -> Iterator[None]:
        """Calls inside run on execution contexts of their own, kept for the CUDA graph `slot` (a graph replays
        with its context's shapes and addresses: two graphs that bind different buffers cannot share one)."""
        saved = [plan.slot for plan in self._plans.values()]
        for plan in self._plans.values():
            plan.slot = slot
        try:
            yield
        finally:
            for plan, old in zip(self._plans.values(), saved, strict=True):
                plan.slot = old

    def _check(self, rows: int) -> None:
        if not self.min_rows <= rows <= self.max_rows:
            raise UsageError(
                f"a batch of {rows} network rows is outside the engine profile ({self.min_rows}..{self.max_rows} rows); "
                "rebuild with `dip-export trt --batch MIN,OPT,MAX` covering it"
            )

    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self._check(x.shape[0])
        return self._plans["backbone"](x, t, y)

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor:
        self._check(x.shape[0])
        return self._plans["detailer"](x, tokens)
