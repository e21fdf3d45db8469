"""A trusted checkpoint naming code that is not installed here is refused as such, never as "truncated":
`checkpoint.load_failure` tells pickle's import failures from damage; run through dip-sample and DiPPipeline.load."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import load_failure
from dip_export.errors import CheckpointError
from tests.test_hostile import one_line, run

DEMO = Path(__file__).resolve().parents[2] / "dip_export" / "demo" / "dip-digits.safetensors"
SAID = "it names code that cannot be imported here"


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_import_failures_are_named_as_missing_code(module, name):
    assert load_failure(ModuleNotFoundError(f"No module named {module!r}")).startswith(SAID)
    assert load_failure(AttributeError(f"Can't get attribute {name!r} on <module {module!r}>")).startswith(SAID)
    assert load_failure(AttributeError(name)).startswith("truncated or not a checkpoint")  # any other: damage
    assert load_failure(pickle.UnpicklingError(name)).startswith("truncated")


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A training checkpoint holding an object of a module that exists only while it is written."""
    module = types.ModuleType("dip_test_gone_module")
    holder = type("Holder", (), {"__module__": "dip_test_gone_module"})
    module.Holder = holder  # type: ignore[attr-defined]
    sys.modules["dip_test_gone_module"] = module
    try:
        torch.save({"state_dict": load_file(str(DEMO)), "extra": holder()}, tmp_path / "ckpt.pt")
    finally:
        del sys.modules["dip_test_gone_module"]
    return tmp_path / "ckpt.pt"


def test_a_trusted_load_of_missing_code_says_so(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"^{saved}: {SAID} \\(a module missing\\)"):
        DiPPipeline.load(str(saved), trust_checkpoint=True)
    code, err = run(cli.sample_main, saved, "--trust-checkpoint", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(saved), SAID)
    assert DiPPipeline.load(str(saved)).source.config.depth == 4  # untrusted: the object stays inert, weights load
