"""Every file the writers make reads like any new file of the user's: mode 0666 less the umask, whatever the
library that wrote it (safetensors makes its file anew at the temporary's name, with mode 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from dip_export.checkpoint import resolve_model, save_checkpoint
from dip_export.io import save_json, save_npz, save_png


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
@pytest.mark.parametrize("writer", ["checkpoint", "npz", "png", "json"])
def test_every_writer_gives_its_file_the_umasks_mode(tmp_path: Path, mask: int, writer: str) -> None:
    path = tmp_path / {"checkpoint": "m.safetensors", "npz": "s.npz", "png": "g.png", "json": "r.json"}[writer]
    old = os.umask(mask)
    try:
        if writer == "checkpoint":
            save_checkpoint(path, resolve_model(None).model, {})
        elif writer == "npz":
            save_npz(path, np.zeros((1, 8, 8, 3), np.uint8))
        elif writer == "png":
            save_png(path, np.zeros((8, 8, 3), np.uint8), "samples-grid")
        else:
            save_json(path, {"a": 1}, "bench-report")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
