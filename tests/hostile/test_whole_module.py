"""A whole model saved with `torch.save(model)` (alone or as a checkpoint's state_dict): without trust, refused as the
file's code in one line asking for --trust-checkpoint; with trust, its weights are read (the module's state dict).

`pick_weights` goes through `_weights_of` for the file's object and its state_dict entry; run through dip-sample and
DiPPipeline.load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import build_model, load_checkpoint
from dip_export.config import DiPConfig
from dip_export.errors import CheckpointError
from tests.test_hostile import one_line, run

DEMO = Path(__file__).resolve().parents[2] / "dip_export" / "demo" / "dip-digits.safetensors"
CONFIG = DiPConfig(hidden_size=128, num_heads=4, depth=4, patch_size=8, num_classes=10, in_channels=3, detailer_width=16,
                   image_size=32)  # fmt: skip
SAID = "it holds an object of the file's code (dip_export.model.DiP), not a dict of tensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("whole")
    model = build_model(CONFIG, load_file(str(DEMO)))
    files = {"module": folder / "model.pt", "inside": folder / "ckpt.pt"}
    torch.save(model, files["module"])
    torch.save({"state_dict": model, "epoch": 3}, files["inside"])
    return files


@pytest.mark.parametrize("kind", ["module", "inside"])
def test_without_trust_the_module_is_refused_as_needing_it(saved, tmp_path, kind):
    path = saved[kind]
    with pytest.raises(CheckpointError, match=r"not a dict of tensors; if you trust this file, pass --trust-checkpoint"):
        DiPPipeline.load(str(path))
    code, err = run(cli.sample_main, path, "--num-samples", "1", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), SAID, "--trust-checkpoint")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("kind", ["module", "inside"])
def test_with_trust_the_modules_weights_are_read_exactly(saved, tmp_path, kind):
    path = saved[kind]
    demo = load_file(str(DEMO))
    loaded = load_checkpoint(path, trust=True, config=CONFIG)
    got = loaded.model.state_dict()
    assert set(got) == set(demo) and all(torch.equal(got[k], demo[k]) for k in demo)
    code, err = run(cli.sample_main, path, "--trust-checkpoint", "--image-size", "32", "--num-samples", "1", "--steps",
                    "2", "--out", tmp_path / "o.npz")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "o.npz").is_file()
