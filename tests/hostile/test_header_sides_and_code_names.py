"""A safetensors header's every side is bounded (a zero beside it leaves the bytes at 0, not the side sane), and
the names of code a pickle calls for are shown as file content is: plain and short as they are, else quoted,
escaped and cut."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import load_checkpoint
from dip_export.errors import CheckpointError
from tests.test_hostile import run

FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _safetensors(path: Path, shapes: dict[str, list[int]]) -> Path:
    header = {name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]} for name, shape in shapes.items()}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    return path


@FEW
@given(side=st.one_of(st.integers(2**32 + 1, 2**64), st.just(10**400)), where=st.integers(0, 1))
def test_a_side_past_any_dip_is_refused_beside_a_zero(tmp_path_factory, side: int, where: int) -> None:
    shape = [0, side] if where else [side, 0]
    path = _safetensors(tmp_path_factory.mktemp("h") / "m.safetensors",
                        {"s_embedder.proj.weight": shape, "local_decoder.enc1.0.weight": [16, 3, 3, 3]})  # fmt: skip
    with pytest.raises(CheckpointError, match="has no valid shape") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError):
        DiPPipeline.load(path, device="cpu")


@FEW
@given(module=st.text("abcdefghijklmnopqrstuvwxyz[]/ ", min_size=1, max_size=300).filter(lambda t: t.strip()))
def test_a_pickles_code_names_are_shown_short(tmp_path_factory, module: str) -> None:
    """A protocol-2 pickle calling `MODULE.foo()`: refused untrusted, the name shown in at most ~60 characters."""
    path = tmp_path_factory.mktemp("p") / "g.pt"
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\nfoo\n)R.")
    code, err = run(cli.sample_main, path, "--steps", "2", "--num-samples", "1", "--out", path.parent / "o.npz")
    line = err.strip().splitlines()[-1]
    assert code == 1 and line.startswith("error:") and len(line) <= 300
    if len(module) > 60:
        assert module not in line
