"""A file that is not a torch checkpoint is named for what it is, by its content, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import DEMO_CHECKPOINT
from dip_export.errors import CheckpointError
from tests.test_hostile import one_line, run

KINDS = {
    "safetensors": (DEMO_CHECKPOINT.read_bytes(), "a safetensors file by its content"),
    "onnx": (b"\x08\x08\x12\x07pytorch" + bytes(64), "an ONNX graph by its content"),
    "json": (b'{"a": 1}', "a text or JSON file"),
    "empty": (b"", "an empty file"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("suffix", [".bin", ".pt", ".SAFETENSORS"])
def test_the_api_names_what_the_file_is(tmp_path: Path, kind: str, suffix: str) -> None:
    data, says = KINDS[kind]
    path = tmp_path / f"model{suffix}"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"^{path}: not a PyTorch checkpoint \\(it is {says}"):
        DiPPipeline.load(path)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=64).filter(lambda b: not b.startswith((b"PK\x03\x04", b"\x80"))))
def test_any_other_content_is_one_line_naming_the_file(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("k") / "x.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        DiPPipeline.load(path)
    assert str(err.value).startswith(f"{path}: not a PyTorch checkpoint (it is ") and "\n" not in str(err.value)


def test_the_cli_names_a_safetensors_file_under_another_suffix(tmp_path: Path) -> None:
    path = tmp_path / "demo.bin"
    path.write_bytes(DEMO_CHECKPOINT.read_bytes())
    code, err = run(cli.sample_main, path, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "name it .safetensors")
