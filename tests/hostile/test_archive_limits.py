"""What a checkpoint's container may declare is bounded before anything it declares is read.

A zip checkpoint: its records' declared (uncompressed) sizes are checked before any is read (torch.save
stores them, so together they hold no more than the file), and the pickle scan never reads an opcode's
argument past `budget.MAX_PICKLE_ARGUMENT`. A safetensors file: its header's length, tensor count and
dimensions are bounded, and a header that describes no DiP is refused before the safetensors library reads it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, budget, checkpoint, cli
from dip_export.budget import BudgetError, check_checkpoint_tensors, check_zip_records
from dip_export.errors import CheckpointError
from tests.test_hostile import one_line, run

MiB = 1 << 20
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _zip(path: Path, pkl: bytes, compression: int = zipfile.ZIP_STORED, extra: int = 0) -> Path:
    """A torch-shaped zip checkpoint whose data.pkl is `pkl`, plus a record of `extra` zero bytes."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
        if extra:
            z.writestr("archive/data/0", b"\0" * extra)
    return path


EMPTY_DICT = b"\x80\x02}."  # PROTO 2, EMPTY_DICT, STOP


def _bytes8(n: int) -> bytes:
    return b"\x80\x04\x8e" + n.to_bytes(8, "little") + b"\0" * n + b"."


def sample(*args: str | Path) -> tuple[int, str]:
    return run(cli.sample_main, *args, "--steps", "2", "--num-samples", "1", "--device", "cpu")


# ---------------------------------------------------------------- zip records: declared sizes


@SETTINGS
@given(sizes=st.lists(st.integers(0, 1 << 40), min_size=1, max_size=6), file_size=st.integers(0, 1 << 32))
def test_zip_records_refused_past_the_file(sizes: list[int], file_size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1T")
    records = []
    for i, n in enumerate(sizes):
        info = zipfile.ZipInfo(f"archive/data/{i}")
        info.file_size = n
        records.append(info)
    fits = sum(sizes) <= file_size + budget.ZIP_SLACK and max(sizes) <= budget.memory_limit()
    if fits:
        check_zip_records(records, "x.pt", file_size)
    else:
        with pytest.raises(BudgetError, match=r"^x\.pt: ") as err:
            check_zip_records(records, "x.pt", file_size)
        assert "\n" not in str(err.value)


EXTRAS = st.one_of(st.sampled_from([0, MiB - 100, MiB + 5000, 2 * MiB, 3 * MiB]), st.integers(0, 3 * MiB))


@SETTINGS
@given(deflated=st.booleans(), extra=EXTRAS)
def test_zip_checkpoint_inflating_past_its_file(
    deflated: bool, extra: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored records hold no more than the file; compressed ones (read into memory, not mapped) fit in memory."""
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "2M" if deflated else "1T")
    path = _zip(tmp_path / "c.pt", EMPTY_DICT, zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED, extra)
    inflated = extra + len(EMPTY_DICT) + 2 + len("little")
    if deflated and inflated > 2 * MiB:
        with pytest.raises(BudgetError, match="its compressed records"):
            check_checkpoint_tensors(path)
    else:
        check_checkpoint_tensors(path)  # stored records (as torch.save writes them) always fit their file


def test_torch_save_passes(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    check_checkpoint_tensors(path)


def _bomb(tmp_path: Path) -> Path:
    """A ~200 KB zip whose deflated data.pkl holds one 200 MB BINBYTES8: refused before it is inflated (past memory)."""
    return _zip(tmp_path / "bomb.pt", _bytes8(200 * MiB), zipfile.ZIP_DEFLATED)


def test_bomb_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "100M")
    path = _bomb(tmp_path)
    assert path.stat().st_size < 1 * MiB
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "its compressed records")


def test_bomb_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "100M")
    path = _bomb(tmp_path)
    with pytest.raises(BudgetError, match="its compressed records") as err:
        DiPPipeline.load(path)
    assert str(err.value).startswith(str(path))


# ---------------------------------------------------------------- the scan reads no long argument

CAP = 4096


def _forms(n: int) -> dict[str, bytes]:
    return {
        "bytes8": _bytes8(n),
        "binbytes": b"\x80\x03B" + n.to_bytes(4, "little") + b"\0" * n + b".",
        "binunicode": b"\x80\x02X" + n.to_bytes(4, "little") + b"a" * n + b".",
        "string": b"S'" + b"a" * n + b"'\n.",  # a text opcode: read by line
    }


@SETTINGS
@given(n=st.integers(0, 2 * CAP), form=st.sampled_from(["bytes8", "binbytes", "binunicode", "string"]), legacy=st.booleans())
def test_long_argument_refused_unread(n: int, form: str, legacy: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "MAX_PICKLE_ARGUMENT", CAP)
    pkl = _forms(n)[form]
    path = tmp_path / "c.pt"
    if legacy:
        path.write_bytes(pkl)
    else:
        _zip(path, pkl)
    if n + (3 if form == "string" else 0) > CAP:
        with pytest.raises(BudgetError, match="declares a value longer than") as err:
            check_checkpoint_tensors(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    else:
        check_checkpoint_tensors(path)


def test_length_past_the_record_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A declared length longer than what is left stops the scan (torch's reader says the file is truncated)."""
    monkeypatch.setattr(budget, "MAX_PICKLE_ARGUMENT", CAP)
    path = _zip(tmp_path / "c.pt", b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b"\0" * 10)
    check_checkpoint_tensors(path)


def test_long_argument_cli_and_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "MAX_PICKLE_ARGUMENT", CAP)
    path = _zip(tmp_path / "c.pt", _bytes8(2 * CAP))
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "declares a value longer than")
    with pytest.raises(BudgetError, match="declares a value longer than"):
        DiPPipeline.load(path)


# ---------------------------------------------------------------- safetensors header


def _safetensors(path: Path, header: dict[str, object], pad: int = 0) -> Path:
    body = json.dumps(header).encode() + b" " * pad
    path.write_bytes(len(body).to_bytes(8, "little") + body)
    return path


def _entry(shape: list[int]) -> dict[str, object]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}


@SETTINGS
@given(
    dims=st.one_of(st.sampled_from([4, 8, 9]), st.integers(0, 14)),
    tensors=st.one_of(st.sampled_from([6, 7]), st.integers(1, 12)),
    pad=st.one_of(st.sampled_from([0, 1500, 3000]), st.integers(0, 3000)),
)
def test_header_bounds(dims: int, tensors: int, pad: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "MAX_HEADER_TENSORS", 6)
    monkeypatch.setattr(checkpoint, "MAX_SAFETENSORS_HEADER", 2048)
    path = _safetensors(tmp_path / "h.safetensors", {f"t{i}": _entry([0] * dims) for i in range(tensors)}, pad)
    length = int.from_bytes(path.read_bytes()[:8], "little")
    if length > 2048:
        match = "header is"
    elif tensors > 6:
        match = "tensors, more than a DiP has"
    elif dims > checkpoint.MAX_TENSOR_DIMS:
        match = "dimensions, more than"
    else:
        shapes, _ = checkpoint.safetensors_header(path)
        assert all(len(s.shape) == dims for s in shapes.values())
        return
    with pytest.raises(CheckpointError, match=match) as err:
        checkpoint.safetensors_header(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_demo_header_within_bounds() -> None:
    length = int.from_bytes(checkpoint.DEMO_CHECKPOINT.read_bytes()[:8], "little")
    assert length < checkpoint.MAX_SAFETENSORS_HEADER // 100
    shapes, _ = checkpoint.safetensors_header(checkpoint.DEMO_CHECKPOINT)
    assert len(shapes) < checkpoint.MAX_HEADER_TENSORS


def test_many_dims_cli_and_api(tmp_path: Path) -> None:
    path = _safetensors(tmp_path / "h.safetensors", {"t": _entry([0] * 100_000)})
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "100000 dimensions")
    with pytest.raises(CheckpointError, match="100000 dimensions"):
        DiPPipeline.load(path)


def test_header_over_cap_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "MAX_SAFETENSORS_HEADER", 1024)
    path = _safetensors(tmp_path / "h.safetensors", {"t": _entry([1])}, pad=2000)
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "safetensors header is")


def test_no_dip_refused_before_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(path: Path) -> None:
        raise AssertionError("the safetensors library was handed a header that describes no DiP")

    monkeypatch.setattr(checkpoint, "_read_safetensors", never)
    path = _safetensors(tmp_path / "h.safetensors", {"t": _entry([0])})
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path))
    with pytest.raises(CheckpointError, match=f"^{path}: "):
        DiPPipeline.load(path)
