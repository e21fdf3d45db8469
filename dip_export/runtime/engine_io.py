"""What an engine needs to know about an export, as data: runtime/ reads no manifest itself.

`dip_export.engines` reads an export folder's manifest and hands the engines an `ExportFiles`;
the I/O declarations of `export.spec` satisfy the protocols below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class TensorIO(Protocol):
    """One input or output of a graph: its name, numpy dtype name and shape for a batch."""

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> str: ...

    def concrete(self, batch: int) -> tuple[int, ...]: ...


class SubModelIO(Protocol):
    """The inputs and outputs of one sub-model (backbone or detailer), in call order."""

    @property
    def name(self) -> str: ...

    @property
    def inputs(self) -> Sequence[TensorIO]: ...

    @property
    def outputs(self) -> Sequence[TensorIO]: ...


@dataclass(frozen=True)
class ExportFiles:
    """An export folder as the engines see it."""

    folder: Path
    precision: str  # the ONNX graphs' precision
    graphs: dict[str, Path]  # role (backbone, detailer) -> ONNX file
    io: Mapping[str, SubModelIO]  # role -> its inputs and outputs
    engines: dict[str, dict[str, Any]] = field(default_factory=dict)  # TensorRT precision -> recorded plans
    identity: str = ""  # the manifest's identity as its files were checked (`Manifest.identity`)
    listed: tuple[str, ...] = ()  # the folder's files its manifest lists (graphs, external data, plans)
