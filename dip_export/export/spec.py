"""The I/O of the two exported sub-models, declared once as data.

Export (names, dynamic axes), verification (dummy inputs) and TensorRT profiles all read this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dip_export.config import DiPConfig

BATCH = "batch"  # the one dynamic axis; H and W are fixed at export (RoPE tables depend on the grid)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # BATCH marks the dynamic axis

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH else int(d) for d in self.shape)


@dataclass(frozen=True)
class SubModelSpec:
    name: str  # "backbone" or "detailer"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: {i: BATCH for i, d in enumerate(t.shape) if d == BATCH} for t in self.inputs + self.outputs}

    def dynamic_shapes(self, batch: object) -> dict[str, dict[int, object]]:
        """torch.export's form of the dynamic axes: each input's batch axis is the one `batch` Dim."""
        return {t.name: {i: batch for i, d in enumerate(t.shape) if d == BATCH} for t in self.inputs}


def io_specs(config: DiPConfig, height: int, width: int) -> dict[str, SubModelSpec]:
    n, d, c = config.num_tokens(height, width), config.hidden_size, config.in_channels
    x = TensorSpec("x", "float32", (BATCH, c, height, width))
    tokens = TensorSpec("tokens", "float32", (BATCH, n, d))
    return {
        "backbone": SubModelSpec(
            "backbone",
            inputs=(x, TensorSpec("t", "float32", (BATCH,)), TensorSpec("y", "int64", (BATCH,))),
            outputs=(tokens,),
        ),
        "detailer": SubModelSpec(
            "detailer", inputs=(x, tokens), outputs=(TensorSpec("v", "float32", (BATCH, c, height, width)),)
        ),
    }


def backbone_inputs(config: DiPConfig, height: int, width: int, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Sampler-like inputs: x a noisy image, t in [0, 1], labels including the null class."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, size=batch).astype(np.float32)
    data = rng.uniform(-1, 1, size=(batch, config.in_channels, height, width)).astype(np.float32)
    noise = rng.standard_normal(size=data.shape).astype(np.float32)
    x = t[:, None, None, None] * data + (1 - t[:, None, None, None]) * noise
    y = rng.integers(0, config.num_classes + 1, size=batch).astype(np.int64)
    y[0] = config.null_class
    return {"x": x, "t": t, "y": y}
