"""TensorRT engine: deserialised plans, preallocated CUDA buffers bound by tensor name, enqueue on
the current torch stream (so a CUDA graph capture of the whole sampler step includes it).

API (TensorRT 10.x / 11.x Python docs, "Runtime", "ICudaEngine", "IExecutionContext"):
Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3(stream_handle) -> bool.
Returned tensors are the engine's own buffers: valid until the next call of the same method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dip_export.errors import ExportError, UsageError
from dip_export.export.manifest import read_manifest
from dip_export.export.spec import SubModelSpec, io_specs
from dip_export.trt_build import _tensorrt, engine_matches, gpu_identity

TORCH_DTYPES = {"float32": torch.float32, "int64": torch.int64}


class _Plan:
    """One engine and its context; output buffers kept per batch size, addresses set per call."""

    def __init__(self, trt: Any, path: Path, spec: SubModelSpec, device: torch.device) -> None:
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not load {path.name}; rebuild it with `dip-export trt`")
        self.context = self.engine.create_execution_context()
        self.spec, self.device = spec, device
        self.outputs: dict[int, Tensor] = {}
        self.inputs: dict[tuple[int, str], Tensor] = {}  # converted-input staging, fixed addresses per batch

    def __call__(self, *inputs: Tensor) -> Tensor:
        batch = int(inputs[0].shape[0])
        for tspec, tensor in zip(self.spec.inputs, inputs, strict=True):
            key = (batch, tspec.name)
            if key not in self.inputs:
                self.inputs[key] = torch.empty(tspec.concrete(batch), dtype=TORCH_DTYPES[tspec.dtype], device=self.device)
            staged = self.inputs[key]
            staged.copy_(tensor)  # stable addresses: what a captured CUDA graph replays
            self.context.set_input_shape(tspec.name, tuple(staged.shape))
            self.context.set_tensor_address(tspec.name, staged.data_ptr())
        out_spec = self.spec.outputs[0]
        if batch not in self.outputs:
            self.outputs[batch] = torch.empty(out_spec.concrete(batch), dtype=torch.float32, device=self.device)
        out = self.outputs[batch]
        self.context.set_tensor_address(out_spec.name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise ExportError(f"TensorRT failed to enqueue the {self.spec.name} engine")
        return out


class TrtEngine:
    """backbone / detailer on the TensorRT plans recorded in an export folder's manifest."""

    def __init__(self, folder: Path, precision: str, device: torch.device) -> None:
        if device.type != "cuda":
            raise UsageError("the trt backend runs on a CUDA device (--device cuda)")
        trt = _tensorrt()
        manifest = read_manifest(folder)
        entry = manifest.engines.get(precision)
        if entry is None:
            raise UsageError(
                f"{folder} has no {precision} TensorRT engines; run `dip-export trt --{precision} --output-dir {folder}`"
            )
        gpu, _ = gpu_identity()
        if not engine_matches(entry, trt.__version__, gpu):
            raise ExportError(
                f"the {precision} engines in {folder} were built for {entry.get('gpu')} with TensorRT "
                f"{entry.get('trt_version')}; this is {gpu} with TensorRT {trt.__version__}: rebuild with `dip-export trt`"
            )
        specs = io_specs(manifest.config, *manifest.image_size)
        self.max_rows = int(entry["profile"]["network_rows"][2])
        self._plans = {role: _Plan(trt, folder / entry["files"][role], specs[role], device) for role in specs}

    @classmethod
    def from_export(cls, folder: Path, precision: str, device: torch.device) -> TrtEngine:
        return cls(Path(folder), precision, device)

    def _check(self, rows: int) -> None:
        if rows > self.max_rows:
            raise UsageError(
                f"batch of {rows} network rows exceeds the engine profile ({self.max_rows}); rebuild with a larger --batch"
            )

    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self._check(x.shape[0])
        return self._plans["backbone"](x, t, y)

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor:
        self._check(x.shape[0])
        return self._plans["detailer"](x, tokens)
