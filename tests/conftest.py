"""Shared fixtures: the authors' golden data and a tiny DiP loaded with its weights."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings as hypothesis_settings

from dip_export.checkpoint import build_model
from dip_export.config import DiPConfig
from dip_export.model import DiP

FIXTURES = Path(__file__).parent / "fixtures"

hypothesis_settings.register_profile("shared-cpu", deadline=None)  # a 2-core machine shared with other jobs
hypothesis_settings.load_profile("shared-cpu")


@pytest.fixture(scope="session", autouse=True)
def owner_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' own owner key (made on first use), never the one in the real home; subprocesses inherit it."""
    from dip_export.ownership import KEY_ENV

    path = tmp_path_factory.mktemp("owner") / "owner.key"
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = old


class Golden:
    def __init__(self) -> None:
        self.data = np.load(FIXTURES / "dip_reference_tiny.npz")
        self.meta = json.loads((FIXTURES / "dip_reference_tiny.json").read_text())
        self.config = DiPConfig(**self.meta["config"], image_size=self.meta["image_height"])
        self.state = {
            k.removeprefix("weight/"): torch.from_numpy(self.data[k].astype(np.float32))
            for k in self.data.files
            if k.startswith("weight/")
        }

    def __getitem__(self, key: str) -> np.ndarray:
        return self.data[key]

    def tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self.data[key])

    @property
    def size(self) -> str:
        return f"{self.meta['image_height']}x{self.meta['image_width']}"


@pytest.fixture(scope="session")
def golden() -> Golden:
    return Golden()


@pytest.fixture(scope="session")
def golden_model(golden: Golden) -> DiP:
    return build_model(golden.config, golden.state)


def rel_err(actual: np.ndarray | torch.Tensor, expected: np.ndarray) -> float:
    a = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    return float(np.abs(a.astype(np.float64) - expected).max() / np.abs(expected).max())


def lightning_checkpoint(path: Path, state: dict[str, torch.Tensor], raw_offset: float = 0.0) -> Path:
    """A file in the release's Lightning layout: EMA + raw weights + trainer state."""
    sd: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        sd[f"ema_denoiser.{k}"] = v
        sd[f"denoiser.{k}"] = v + raw_offset
    sd["diffusion_trainer.projector.0.weight"] = torch.randn(4, 4)
    torch.save(
        {"state_dict": sd, "epoch": 3, "global_step": 1000, "optimizer_states": [{"lr": 1e-4}], "lr_schedulers": []},
        path,
    )
    return path
