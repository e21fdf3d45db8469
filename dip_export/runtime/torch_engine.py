"""PyTorch engines: eager (fp32 or bf16 autocast) and torch.compile, over a DiP module."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dip_export.errors import UsageError
from dip_export.model import DiP
from dip_export.settings import device_name, plain_value

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str) -> torch.device:
    device = device_name(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {plain_value(device)}; use auto, cpu or cuda")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: PyTorch sees {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device)


class TorchEngine:
    """The DiP module itself, optionally under autocast and/or torch.compile."""

    def __init__(self, model: DiP, device: torch.device, precision: str = "fp32", compile: bool = False) -> None:
        if precision not in AUTOCAST_DTYPES:
            raise UsageError(f"torch backend supports {', '.join(AUTOCAST_DTYPES)}, not {plain_value(precision)}")
        self.model = model.to(device)
        self.device = device
        self.precision = precision
        self._dtype = AUTOCAST_DTYPES[precision]
        self._backbone: Callable[..., Tensor] = model.backbone
        self._detailer: Callable[..., Tensor] = model.detailer
        if compile:
            self._backbone = torch.compile(model.backbone, dynamic=False)
            self._detailer = torch.compile(model.detailer, dynamic=False)

    def _autocast(self) -> Any:
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        with self._autocast():
            return self._backbone(x.to(self.device), t.to(self.device), y.to(self.device))

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor:
        with self._autocast():
            return self._detailer(x.to(self.device), tokens).float()
