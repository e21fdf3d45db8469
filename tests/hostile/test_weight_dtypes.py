"""A weight is read only in a dtype the model can be built of (float16, bfloat16, float32, float64): any other
floating dtype a file may hold (float8 kinds, which pass `is_floating_point` but have no kernels for the checks) is
refused in one line naming the weight and its dtype, through dip-sample and `DiPPipeline.load`, from .pt and
.safetensors files alike; the accepted ones load to the same model (within their rounding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from dip_export import DiPPipeline
from dip_export.checkpoint import WEIGHT_DTYPES, CheckpointError, load_checkpoint
from tests.test_hostile import RUN_SETTINGS, one_line, sample

FLOATING = sorted((t for t in vars(torch).values() if isinstance(t, torch.dtype) and t.is_floating_point), key=str)
NAME = "s_embedder.proj.bias"


def _write(folder: Path, state: dict[str, torch.Tensor], suffix: str) -> Path:
    path = folder / f"model{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


@RUN_SETTINGS
@given(dtype=st.sampled_from(FLOATING), suffix=st.sampled_from([".pt", ".safetensors"]), whole=st.booleans())
def test_a_weight_loads_only_in_a_dtype_the_model_is_built_of(tmp_path_factory, golden, dtype, suffix, whole) -> None:
    try:
        state = {k: (v.to(dtype) if whole or k == NAME else v) for k, v in golden.state.items()}
        path = _write(tmp_path_factory.mktemp("dt"), state, suffix)
    except Exception:  # a dtype torch cannot convert to, or the file format cannot store: nothing to read
        return
    if dtype in WEIGHT_DTYPES:
        loaded = load_checkpoint(path, config=golden.config)
        got = dict(loaded.model.state_dict())[NAME]
        want = golden.state[NAME].to(dtype).float()
        assert got.dtype == torch.float32 and torch.equal(got, want)
    else:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, config=golden.config)
        # named by the weight and its dtype, or (a dtype the safetensors header itself does not list) by its entry
        assert str(err.value).startswith(f"{path}: ") and "dtype" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_float8_weights_are_refused_in_one_line_on_cli_and_api(tmp_path, golden, dtype, suffix) -> None:
    path = _write(tmp_path, {k: v.to(dtype) for k, v in golden.state.items()}, suffix)
    code, err = sample(path, "--steps", "2", "--num-samples", "1", "--image-size", "32", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), str(dtype))
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(CheckpointError, match="float8"):
        DiPPipeline.load(path, device="cpu")
