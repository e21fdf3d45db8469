"""Non-finite numbers: refused in a checkpoint's weights (named), and in every sampled image (one check in to_uint8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from dip_export import cli
from dip_export.checkpoint import DEMO_CHECKPOINT, select_state_dict
from dip_export.errors import CheckpointError, NonFiniteError
from dip_export.pipeline import DiPPipeline
from dip_export.sampling.rules import to_uint8
from tests.test_hostile import one_line, run

BAD = st.sampled_from([float("nan"), float("inf"), float("-inf")])
DEMO_STATE = load_file(str(DEMO_CHECKPOINT))
KEYS = sorted(DEMO_STATE)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 * 3 * 4 * 5 - 1), BAD, st.integers(0, 2**31 - 1))
def test_to_uint8_refuses_any_non_finite_value(position, bad, seed):
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(seed)) * 2
    expected = ((x + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(to_uint8(x), expected)  # finite: the release's rounding, values outside [-1, 1] clipped
    x.view(-1)[position] = bad
    with pytest.raises(NonFiniteError, match="1 NaN or infinite values of 120"):
        to_uint8(x)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KEYS), st.floats(0, 1, exclude_max=True), BAD)
def test_a_weight_with_one_non_finite_value_is_refused_by_name(key, where, bad):
    state = dict(DEMO_STATE)
    value = state[key].clone()
    value.view(-1)[int(where * value.numel())] = bad
    state[key] = value
    with pytest.raises(CheckpointError, match="NaN or infinite") as err:
        select_state_dict(state)
    assert key[:80] in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cli_sample_of_a_damaged_checkpoint_is_one_line_and_writes_nothing(tmp_path, suffix):
    state = dict(DEMO_STATE)
    key = "final_layer.linear.weight" if "final_layer.linear.weight" in state else KEYS[-1]
    state[key] = torch.full_like(state[key], float("nan"))  # its shape kept: the architecture reads as the demo's
    path = tmp_path / f"broken{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    code, stderr = run(cli.sample_main, path, "--num-samples", "1", "--steps", "2", "--out", tmp_path / "s.npz")
    one_line(code, stderr, 1, "broken", "NaN or infinite")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_api_sampling_that_overflows_is_refused_not_rounded():
    pipe = DiPPipeline.load()
    with torch.no_grad():
        next(pipe.source.loaded.model.parameters()).mul_(float("inf"))  # what an overflowing precision would do
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        pipe(classes=[1], seeds=[0], steps=2)
