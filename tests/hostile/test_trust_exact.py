"""The trust flag runs a pickle's code only when it is exactly True, at every entry that takes it: the Python API's
DiPPipeline.load and the lower functions it is built on (load_checkpoint, resolve_model); "no", 1 and other
truthy values, and a numpy or torch True, are refused before the file is opened."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.checkpoint import load_checkpoint, resolve_model
from dip_export.errors import UsageError

NOT_BOOL = st.one_of(st.text(max_size=5), st.integers(), st.floats(allow_nan=False), st.just(None),
                     st.lists(st.booleans(), max_size=2), st.just(np.int64(1)), st.just(np.bool_(True)),
                     st.just(torch.tensor(True)), st.just(np.array(True)))  # fmt: skip


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trust=NOT_BOOL)
def test_no_value_but_true_runs_a_pickles_code(tmp_path: Path, trust) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}, protocol=2))
    for call in (lambda: load_checkpoint(path, trust=trust), lambda: resolve_model(path, trust=trust),
                 lambda: DiPPipeline.load(path, trust_checkpoint=trust, device="cpu")):  # fmt: skip
        with pytest.raises(UsageError, match=r"trust_checkpoint must be True or False"):
            call()
        assert not marker.exists()


@pytest.mark.parametrize("weights", ["bogus", None, 1, "EMA", ""])
def test_load_checkpoint_names_a_bad_weights_choice(tmp_path: Path, weights) -> None:
    with pytest.raises(UsageError, match=r"--weights must be one of ema, raw"):
        load_checkpoint(tmp_path / "never.pt", weights=weights)
