"""What a pickle's calls allocate by size alone is counted before torch reads the file.

A constructor a weights-only load allows (`UntypedStorage(n)`, `FloatStorage(n)`, `TypedStorage(n)`,
legacy tensor types `FloatTensor(a, b)`, `torch.Tensor(torch.Size(...))`, `bytearray(n)`) reached
by REDUCE, NEWOBJ, NEWOBJ_EX, INST or OBJ is counted at least as large as what it allocates; a file
that would allocate more than the memory limit is refused in one line before torch.load runs.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli, inert_pickle
from dip_export.budget import BudgetError, pickle_declared_bytes
from dip_export.checkpoint import load_checkpoint
from tests.hostile.test_inert_pickle import glob, torch_zip
from tests.test_hostile import one_line, run

SIZED = ["torch.storage.UntypedStorage", "torch.storage.TypedStorage", "torch.FloatStorage", "torch.ByteStorage",
         "torch.DoubleStorage", "torch.HalfStorage", "torch.LongStorage", "torch.FloatTensor", "torch.DoubleTensor",
         "torch.ByteTensor", "torch.Tensor", "builtins.bytearray"]  # fmt: skip
FORMS = ["REDUCE", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"]


def integer(n: int) -> bytes:
    return pickle.LONG1 + bytes([8]) + n.to_bytes(8, "little", signed=True)


def call(key: str, form: str, args: list[bytes]) -> bytes:
    """One call of the global `key` with `args`, by the opcode `form` (protocol 4 for NEWOBJ_EX)."""
    packed = pickle.MARK + b"".join(args) + pickle.TUPLE
    if form == "REDUCE":
        return glob(key) + packed + pickle.REDUCE
    if form == "NEWOBJ":
        return glob(key) + packed + pickle.NEWOBJ
    if form == "NEWOBJ_EX":
        return glob(key) + packed + pickle.EMPTY_DICT + pickle.NEWOBJ_EX
    if form == "INST":
        module, name = key.rsplit(".", 1)
        return pickle.MARK + b"".join(args) + pickle.INST + f"{module}\n{name}\n".encode()
    return pickle.MARK + glob(key) + b"".join(args) + pickle.OBJ


def whole(body: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + body + pickle.STOP


def allocated(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, (bytearray, bytes)):
        return len(obj)
    try:
        return int(obj.nbytes())  # a storage
    except AttributeError:
        return 0  # made by __new__ alone (NEWOBJ of TypedStorage): it holds no storage


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.sampled_from(SIZED), st.sampled_from(FORMS), st.lists(st.integers(1, 64), min_size=1, max_size=3))
def test_the_scan_counts_at_least_what_a_call_allocates(key: str, form: str, sizes: list[int]) -> None:
    data = whole(call(key, form, [integer(n) for n in sizes]))
    try:
        made = inert_pickle.load(io.BytesIO(data))  # the reader a file without trust is read by
    except Exception:
        return  # this constructor takes no such arguments (nothing allocated)
    assert pickle_declared_bytes(io.BytesIO(data)) >= allocated(made)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(SIZED), st.sampled_from(FORMS))
def test_a_size_through_torch_size_is_counted(key: str, form: str) -> None:
    size = glob("torch.Size") + pickle.MARK + integer(3000) + integer(3000) + pickle.TUPLE + pickle.TUPLE1 + pickle.REDUCE
    data = whole(call(key, form, [size]))
    counted = pickle_declared_bytes(io.BytesIO(data))
    if key.startswith("torch.") and key.endswith(("Tensor", "TypedStorage")):
        assert counted >= 3000 * 3000 * (1 if "Byte" in key else 4)


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1G")

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load ran: the file was read before its declared bytes were checked")

    monkeypatch.setattr(torch, "load", never)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("key", ["torch.storage.UntypedStorage", "torch.FloatStorage", "torch.storage.TypedStorage"])
def test_a_small_file_that_allocates_gigabytes_is_refused_first(tmp_path: Path, small_limit: None, key: str, form: str) -> None:
    n = 2_000_000_000 // (4 if key == "torch.FloatStorage" else 1)
    path = torch_zip(tmp_path / "alloc.pt", whole(call(key, form, [integer(n)])))
    assert path.stat().st_size < 4096
    with pytest.raises(BudgetError, match=str(path)):
        load_checkpoint(path)


def test_api_and_cli_refuse_in_one_line(tmp_path: Path, small_limit: None) -> None:
    path = torch_zip(tmp_path / "storage_alloc.pt", whole(call("torch.storage.UntypedStorage", "REDUCE", [integer(2 << 30)])))
    with pytest.raises(BudgetError) as refused:
        DiPPipeline.load(path)
    assert "\n" not in str(refused.value)
    legacy = tmp_path / "tensor_alloc.pt"
    legacy.write_bytes(whole(call("torch.FloatTensor", "NEWOBJ", [integer(40000), integer(40000)])))  # a plain pickle
    code, err = run(cli.sample_main, legacy, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(legacy))


def test_sizes_packed_in_a_struct_are_not_file_content_echoed(tmp_path: Path, small_limit: None) -> None:
    body = call("torch.storage.UntypedStorage", "REDUCE", [pickle.BININT + struct.pack("<i", 2**31 - 1)])
    path = torch_zip(tmp_path / "a.pt", whole(body))
    with pytest.raises(BudgetError) as refused:
        load_checkpoint(path)
    assert "UntypedStorage" not in str(refused.value)
