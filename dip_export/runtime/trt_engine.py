"""TensorRT engine: deserialised plans run on torch CUDA tensors bound by name.

API (TensorRT 10.x / 11.x Python docs, "Runtime", "ICudaEngine", "IExecutionContext"):
Runtime.deserialize_cuda_engine, ICudaEngine.create_execution_context,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3(stream_handle), each -> bool.
Rules followed (TensorRT docs and NVIDIA/TensorRT#2603, #3798; trtexec and demo/Diffusion do the same):
- one execution context per network row count: a CUDA graph captured with a context replays with that
  context's shapes and addresses, so a second shape on the same context would break the first graph;
- never the legacy default stream: outside a capture the engine runs on its own stream, ordered
  after and before torch's current stream; inside a capture it runs on the capturing stream;
- every boolean is checked; engines and contexts are made under `torch.cuda.device(device)`.
Inputs that already have the engine's dtype, device and layout are bound where they are (no copy).
Returned tensors are the engine's own buffers: valid until the next call with the same row count.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dip_export.errors import ExportError, UsageError
from dip_export.runtime.engine_io import ExportFiles, SubModelIO
from dip_export.runtime.trt_support import engine_matches, gpu_identity
from dip_export.runtime.trt_support import import_tensorrt as _tensorrt

TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64}


class EngineRunError(ExportError, RuntimeError):
    """TensorRT refused to run (an enqueue or binding returned False); a CUDA graph capture falls back on it."""


class _Plan:
    """One engine; a context, an output buffer and address bindings per row count."""

    def __init__(self, trt: Any, path: Path, spec: SubModelIO, device: torch.device, rows: tuple[int, int]) -> None:
        self.spec, self.device, self.rows = spec, device, rows
        with torch.cuda.device(device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise ExportError(f"TensorRT could not load {path.name}; rebuild it with `dip-export trt`")
            self.stream = torch.cuda.Stream(device)  # a dedicated stream, never the legacy default one
        self.contexts: dict[int, Any] = {}
        self.outputs: dict[int, Tensor] = {}
        self.bound: dict[int, dict[str, int]] = {}
        self.staging: dict[tuple[int, str], Tensor] = {}  # only for inputs of another dtype, device or layout

    def _context(self, n: int) -> Any:
        if n not in self.contexts:
            with torch.cuda.device(self.device):
                context = self.engine.create_execution_context()
            if context is None:
                raise EngineRunError(f"TensorRT could not create an execution context for the {self.spec.name} engine")
            for tspec in self.spec.inputs:
                if not context.set_input_shape(tspec.name, tspec.concrete(n)):
                    raise UsageError(
                        f"{n} network rows do not fit the {self.spec.name} engine's profile ({self.rows[0]}..{self.rows[1]} "
                        f"rows); rebuild with `dip-export trt --batch MIN,OPT,MAX` covering it"
                    )
            self.contexts[n], self.bound[n] = context, {}
            self.outputs[n] = torch.empty(self.spec.outputs[0].concrete(n), dtype=torch.float32, device=self.device)
        return self.contexts[n]

    def _bind(self, n: int, name: str, tensor: Tensor) -> None:
        address = tensor.data_ptr()
        if self.bound[n].get(name) != address:
            if not self.contexts[n].set_tensor_address(name, address):
                raise EngineRunError(f"TensorRT refused the address of {name} for the {self.spec.name} engine")
            self.bound[n][name] = address

    def _ready(self, n: int, tspec: Any, tensor: Tensor) -> Tensor:
        dtype = TORCH_DTYPES[tspec.dtype]
        if tensor.dtype == dtype and tensor.device == self.device and tensor.is_contiguous():
            return tensor
        key = (n, tspec.name)
        if key not in self.staging:
            self.staging[key] = torch.empty(tspec.concrete(n), dtype=dtype, device=self.device)
        return self.staging[key].copy_(tensor)

    def __call__(self, *inputs: Tensor) -> Tensor:
        n = int(inputs[0].shape[0])
        context = self._context(n)
        for tspec, tensor in zip(self.spec.inputs, inputs, strict=True):
            self._bind(n, tspec.name, self._ready(n, tspec, tensor))
        self._bind(n, self.spec.outputs[0].name, self.outputs[n])
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
