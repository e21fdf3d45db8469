"""ONNX Runtime engine: two sessions, tuned CPU provider (or CUDA when onnxruntime-gpu is installed),
IO binding into preallocated buffers so that sampling allocates nothing per step.

Returned tensors are the engine's own buffers: valid until the next call of the same method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dip_export.errors import ExportError, MissingDependencyError, UsageError
from dip_export.runtime.engine_io import ExportFiles, SubModelIO

NP_TO_TORCH = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError("onnxruntime", "pip install onnxruntime (or onnxruntime-gpu on CUDA machines)") from None
    return onnxruntime


def make_session(path: Path, device: torch.device | None = None, threads: int | None = None) -> Any:
    """A tuned session; its intra-op pool has `threads` workers (None: torch's intra-op thread count, so
    that one setting, torch.set_num_threads or dip-bench --threads, governs every backend)."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # ONNX Runtime's workers spin after each run by default, stealing the cores from the sampler's own
    # torch ops between calls (measured: ~25 ms of "other" per step on the demo model at batch 50)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers: list[Any] = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependencyError(
                "onnxruntime-gpu", "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (or use --device cpu)"
            )
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as err:  # ONNX Runtime's exceptions quote the graph's own names (and cut them): never shown
        reason = _ORT_REASONS.get(type(err).__name__, "refused")
        raise ExportError(f"{path}: ONNX Runtime cannot load this graph ({reason})") from None


# ONNX Runtime's exception types -> the tool's own words (its messages carry names from the graph file)
_ORT_REASONS = {
    "Fail": "a tensor or its external data cannot be read", "InvalidGraph": "an invalid graph",
    "InvalidProtobuf": "not a readable ONNX model", "NoSuchFile": "a file it names is missing",
    "NotImplemented": "an operator this ONNX Runtime does not implement", "InvalidArgument": "an invalid value",
    "RuntimeException": "a runtime error", "EPFail": "the execution provider failed",
}  # fmt: skip


class _BoundSession:
    """One session with inputs bound from torch tensors and outputs into buffers kept per batch size."""

    def __init__(self, session: Any, spec: SubModelIO, device: torch.device) -> None:
        self.session = session
        self.spec = spec
        self.device = device
        self.binding = session.io_binding()
        self.outputs: dict[int, Tensor] = {}
        self._dev = ("cuda", device.index or 0) if device.type == "cuda" else ("cpu", 0)

    def _bind(self, name: str, tensor: Tensor, dtype: torch.dtype, out: bool = False) -> None:
        tensor = tensor if tensor.is_contiguous() else tensor.contiguous()
        import numpy as np

        np_type = {torch.float32: np.float32, torch.int64: np.int64}[dtype]
        bind = self.binding.bind_output if out else self.binding.bind_input
        bind(name, self._dev[0], self._dev[1], np_type, list(tensor.shape), tensor.data_ptr())

    def __call__(self, *inputs: Tensor) -> Tensor:
        batch = int(inputs[0].shape[0])
        keep = []  # converted inputs must stay alive until the run is over
        for spec, tensor in zip(self.spec.inputs, inputs, strict=True):
            dtype = NP_TO_TORCH[spec.dtype]
            tensor = tensor.to(device=self.device, dtype=dtype).contiguous()
            keep.append(tensor)
            self._bind(spec.name, tensor, dtype)
        out_spec = self.spec.outputs[0]
        if batch not in self.outputs:
            self.outputs[batch] = torch.empty(out_spec.concrete(batch), dtype=torch.float32, device=self.device)
        out = self.outputs[batch]
        self._bind(out_spec.name, out, torch.float32, out=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream().synchronize()
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as err:  # as at loading: ONNX Runtime's own text quotes the graph, never shown
            reason = _ORT_REASONS.get(type(err).__name__, "refused")
            raise ExportError(f"ONNX Runtime failed running the {self.spec.name} graph ({reason})") from None
        del keep
        return out


class OrtEngine:
    """backbone / detailer on ONNX Runtime sessions of an export folder."""

    def __init__(self, export: ExportFiles, device: torch.device, threads: int | None = None) -> None:
        if export.precision == "bf16" and device.type == "cpu":
            raise UsageError("ONNX Runtime's CPU provider has no bf16 kernels; run bf16 exports with --backend trt")
        self.device = device
        self._backbone = _BoundSession(make_session(export.graphs["backbone"], device, threads), export.io["backbone"], device)
        self._detailer = _BoundSession(make_session(export.graphs["detailer"], device, threads), export.io["detailer"], device)
        self.threads = int(self._backbone.session.get_session_options().intra_op_num_threads)  # as the sessions run

    @classmethod
    def from_export(cls, export: ExportFiles, device: torch.device, threads: int | None = None) -> OrtEngine:
        return cls(export, device, threads)

    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self._backbone(x, t, y)

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor:
        return self._detailer(x, tokens)
