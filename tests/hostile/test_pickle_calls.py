"""Calls a pickle makes are bounded by the bytes of the values they are passed, memoised values included.

A weights-only load allows a few functions that copy what they are given (`_codecs.encode`, `bytearray`): a
1 MiB text memoised once and passed to `_codecs.encode` thousands of times (10 bytes of pickle a call) would
build gigabytes. Every call counts its arguments' bytes, each time, against the load's budget
(`budget.call_budget`: twice the pickle read so far, plus `MAX_CALL_BYTES`), in the scan before torch reads the
file and in the inert reader as it runs; past it the file is refused in one line. Every surface: the scan,
the reader, dip-sample, the Python API.
"""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, inert_pickle
from dip_export.budget import MAX_CALL_BYTES, BudgetError, ManyCalls, check_checkpoint_tensors, pickle_declared
from dip_export.checkpoint import load_checkpoint
from tests.hostile.measured import measured_load
from tests.test_hostile import one_line, sample

MiB = 1 << 20
REFUSED = "of values to the calls it makes"
FEW = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _text(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _bytes(b: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(b)) + b


def repeated(calls: int, size: int, form: str = "encode") -> bytes:
    """A pickle calling an allowed global `calls` times on one memoised value of `size` bytes, the results kept."""
    if form == "encode":  # protocol 2: how bytes are written, (text, "latin1")
        head = b"\x80\x02c_codecs\nencode\nq\x00" + _text("a" * size) + b"q\x01"
        call = b"h\x00h\x01" + _text("latin1") + b"\x86R"
    else:  # protocol 3: bytearray(b)
        head = b"\x80\x03cbuiltins\nbytearray\nq\x00" + _bytes(b"a" * size) + b"q\x01"
        call = b"h\x00h\x01\x85R"
    return head + b"}" + _text("junk") + b"](" + call * calls + b"es."


def _zip(path: Path, pkl: bytes) -> Path:
    """`pkl` as the data.pkl of a torch.save zip (no tensors)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/version", "3\n")
        z.writestr("archive/byteorder", "little")
    return path


def _copies(calls: int, size: int) -> int:
    return calls * size


# ---------------------------------------------------------------- the mechanism: the scan and the reader


@FEW
@given(
    calls=st.integers(0, 400),
    size=st.sampled_from([1024, 64 << 10, 512 << 10, MiB]),
    form=st.sampled_from(["encode", "bytearray"]),
)
def test_the_scan_counts_every_call_on_a_memoised_value(calls: int, size: int, form: str) -> None:
    pkl = repeated(calls, size, form)
    if _copies(calls, size) <= MAX_CALL_BYTES:
        assert pickle_declared(io.BytesIO(pkl)).passed >= _copies(calls, size)
    elif _copies(calls, size) > MAX_CALL_BYTES + 2 * len(pkl) + 64 * calls:
        with pytest.raises(ManyCalls):
            pickle_declared(io.BytesIO(pkl))


@FEW
@given(
    calls=st.integers(0, 400),
    size=st.sampled_from([1024, 64 << 10, 512 << 10, MiB]),
    form=st.sampled_from(["encode", "bytearray"]),
)
def test_the_reader_counts_every_call_on_a_memoised_value(calls: int, size: int, form: str) -> None:
    pkl = repeated(calls, size, form)
    if _copies(calls, size) <= MAX_CALL_BYTES:
        found = inert_pickle.load(io.BytesIO(pkl))
        assert len(found["junk"]) == calls
    elif _copies(calls, size) > MAX_CALL_BYTES + 2 * len(pkl) + 64 * calls:
        with pytest.raises(inert_pickle.Refused, match=REFUSED):
            inert_pickle.load(io.BytesIO(pkl))


def test_a_checkpoint_passing_each_value_once_loads(tmp_path: Path, golden) -> None:
    """Protocol 2 writes bytes as `_codecs.encode(text, "latin1")`: a large value passed once (and its bytes to
    whatever takes them) is within the budget however large the file, as is torch.save's own output."""
    path = tmp_path / "p2.pt"
    weights = {f"ema_denoiser.{k}": v for k, v in golden.state.items()}
    torch.save({"state_dict": weights, "blob": b"\xff" * (3 * MiB)}, path, pickle_protocol=2)  # beside the weights
    check_checkpoint_tensors(path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.model.state_dict()["s_embedder.proj.weight"], golden.state["s_embedder.proj.weight"])


# ---------------------------------------------------------------- every surface


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    """The 1 MiB text passed to `_codecs.encode` 3000 times: a 3 GiB load in a 1 MiB file."""
    return _zip(tmp_path / "enc.pt", repeated(3000, MiB))


def test_refused_by_dip_sample(bomb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1G")
    out = tmp_path / "o.npz"
    code, err = sample(bomb, "--steps", "2", "--num-samples", "1", "--image-size", "32", "--out", out)
    one_line(code, err, 1, str(bomb), REFUSED)
    assert not out.exists()


def test_refused_by_the_api(bomb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1G")
    with pytest.raises(BudgetError, match=REFUSED) as raised:
        DiPPipeline.load(bomb, device="cpu")
    assert str(raised.value).startswith(f"{bomb}: ") and "\n" not in str(raised.value)


@pytest.mark.parametrize(("surface", "calls"), [("cli", 3000), ("api", 3000), ("api", 60)])
def test_the_load_takes_no_memory_of_the_copies(tmp_path: Path, surface: str, calls: int) -> None:
    """Refused (3000 copies) or read and found to hold no weights (60): the process grows by under 200 MB."""
    path = _zip(tmp_path / "enc.pt", repeated(calls, MiB))
    args = [path, "--steps", "2", "--num-samples", "1", "--image-size", "32", "--out", tmp_path / "o.npz"]
    lines, done = measured_load(surface, args if surface == "cli" else [path])
    assert lines.get("exit", lines.get("refused")) in ("1", "BudgetError", "CheckpointError"), done.stdout + done.stderr
    assert int(lines["grew"]) < 200 << 10, lines  # KiB: the copies alone would be 3 GiB
    if calls > 100:
        assert lines.get("exit", lines.get("refused")) in ("1", "BudgetError")
    if surface == "cli":
        assert len(done.stderr.strip().splitlines()) == 1 and REFUSED in done.stderr, done.stderr
