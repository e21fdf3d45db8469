"""The untrusted reader of stored settings and weights: every field known and checked, errors name the file."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint, select_state_dict
from dip_export.config import check_sampling_defaults
from dip_export.errors import CheckpointError, UsageError


def _with_metadata(tmp_path, **meta):
    data = DEMO_CHECKPOINT.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update({k: json.dumps(v) for k, v in meta.items()})
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return path


@pytest.mark.parametrize(
    "sampling",
    [{"sampler": 5}, {"sampler": "[bold]x"}, {"token_forecast": "cubic"}, {"guidance_interval": [0.9, 0.1]},
     {"x" * 50: 1}, {"steps": 25, "image_size": 64}],
)  # fmt: skip
def test_bad_stored_sampling_names_the_file(tmp_path, sampling):
    path = _with_metadata(tmp_path, dip_sampling=sampling)
    with pytest.raises(CheckpointError, match=r"m\.safetensors"):
        load_checkpoint(path)


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.floats(), max_size=4))
def test_stored_sampling_is_known_keys_in_range_or_refused(data):
    try:
        checked = check_sampling_defaults(data)
    except UsageError:
        return
    from dip_export.settings import SAMPLING_DEFAULTS

    assert set(checked) <= set(SAMPLING_DEFAULTS)


def test_valid_stored_sampling_still_loads(tmp_path):
    path = _with_metadata(tmp_path, dip_sampling={"steps": 20, "cfg": 1.5, "sampler": "ab2", "token_forecast": "linear"})
    assert load_checkpoint(path).sampling["sampler"] == "ab2"


@pytest.mark.parametrize(
    "change",
    [
        lambda v: torch.empty_like(v, device="meta"),
        lambda v: v.to(torch.int64),
        lambda v: v.to_sparse(),
        lambda v: v.to(torch.complex64),
    ],
)
def test_weights_that_are_not_dense_real_floats_are_refused(change):
    from safetensors.torch import load_file

    state = load_file(str(DEMO_CHECKPOINT))
    key = "s_embedder.proj.weight"
    state[key] = change(state[key])
    with pytest.raises(CheckpointError, match="not a dense real floating-point"):
        select_state_dict(state)


def test_meta_tensors_in_a_pickle_are_one_error(tmp_path):
    from safetensors.torch import load_file

    state = {k: torch.empty_like(v, device="meta") for k, v in load_file(str(DEMO_CHECKPOINT)).items()}
    torch.save(state, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"m\.pt"):
        load_checkpoint(tmp_path / "m.pt")


def test_every_stored_default_reaches_the_settings_of_both_surfaces(tmp_path):
    """Stored shift and guidance interval are used by the API and dip-sample alike (not only steps and cfg)."""
    import numpy as np

    from dip_export import cli
    from dip_export.pipeline import DiPPipeline
    from tests.test_hostile import run

    stored = {"steps": 6, "cfg": 3.0, "shift": 3.0, "guidance_interval": [0.2, 0.9], "sampler": "ab2"}
    path = _with_metadata(tmp_path, dip_sampling=stored)
    pipe = DiPPipeline.load(path)
    got = pipe.recommended_settings()
    assert (got.steps, got.cfg, got.shift, got.interval, got.method) == (6, 3.0, 3.0, (0.2, 0.9), "ab2")
    explicit = DiPPipeline.load()(classes=[3, 4], seeds=[0, 1], steps=6, cfg=3.0, shift=3.0, sampler="ab2",
                                  guidance_interval=(0.2, 0.9))  # fmt: skip
    plain = DiPPipeline.load()(classes=[3, 4], seeds=[0, 1], steps=6, cfg=3.0, sampler="ab2")
    assert np.abs(explicit.astype(int) - plain.astype(int)).max() > 0  # the stored values change the images
    np.testing.assert_array_equal(pipe(classes=[3, 4], seeds=[0, 1]), explicit)
    code, _ = run(cli.sample_main, path, "--classes", "3,4", "--seeds", "0,1", "--out", tmp_path / "s.npz")
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["arr_0"], explicit)
