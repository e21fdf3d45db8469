"""A weight that needs code to be built is refused as such, never reported as "missing" (its file needs trust).

`_tensors_only` refuses the weights dict of an untrusted file as soon as one of its values is a placeholder for the
file's code; property-tested over which weight is replaced, and run through dip-sample and DiPPipeline.load.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import load_checkpoint
from dip_export.errors import CheckpointError
from tests.test_hostile import one_line, run

DEMO = Path(__file__).resolve().parents[2] / "dip_export" / "demo" / "dip-digits.safetensors"
STATE = load_file(str(DEMO))
KEYS = sorted(STATE)


class Code:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # what a hostile file does: a call of os.system when unpickled
        return (os.system, (f"touch {self.marker}",))


def _with_code(path: Path, keys: list[str], marker: Path) -> Path:
    state = dict(STATE)
    for key in keys:
        state[key] = Code(str(marker))
    torch.save(state, path)
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
def test_any_weight_that_needs_code_refuses_the_file_as_needing_trust(tmp_path, keys):
    marker = tmp_path / "ran"
    path = _with_code(tmp_path / "coded.pt", keys, marker)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    text = str(refused.value)
    assert "code to be built (posix.system)" in text and "pass --trust-checkpoint" in text, text
    assert "missing" not in text and "\n" not in text
    assert ("weight " + min(keys)) in text or "s_embedder.proj.weight" in keys
    assert not marker.exists()


def test_the_cli_and_the_api_say_the_file_needs_trust(tmp_path):
    marker = tmp_path / "ran"
    path = _with_code(tmp_path / "coded.pt", ["blocks.0.attn.proj.bias"], marker)
    with pytest.raises(CheckpointError, match=r"weight blocks\.0\.attn\.proj\.bias is an object that needs code"):
        DiPPipeline.load(str(path))
    code, err = run(cli.sample_main, path, "--num-samples", "1", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "blocks.0.attn.proj.bias", "--trust-checkpoint")
    assert not marker.exists() and not (tmp_path / "o.npz").exists()
