"""A pickle cannot allocate by size past the budget, whatever way it gets the size onto the stack.

Two guards, both tested: the static scan before torch reads the file (`budget.check_checkpoint_tensors`)
refuses a size it cannot read (a value duplicated, computed or fetched) instead of counting it as none,
and the inert reader counts every call that allocates by size with its real arguments before it runs
(`inert_pickle.MAX_CALL_BYTES`), so a form the scan misses still allocates nothing.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli, inert_pickle
from dip_export.budget import BudgetError, check_checkpoint_tensors
from dip_export.inert_pickle import MAX_CALL_BYTES, Refused
from tests.test_hostile import one_line, run


def _long(n: int) -> bytes:
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _call(glob: bytes, size_ops: bytes) -> bytes:
    """PROTO 2, GLOBAL `glob`, the ops that leave the size on the stack, TUPLE1, REDUCE, STOP."""
    return b"\x80\x02" + pickle.GLOBAL + glob + b"\n" + size_ops + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP


FORMS = {  # name: (global, ops leaving n on the stack, bytes per unit)
    "plain": (b"builtins\nbytearray", lambda n: _long(n), 1),
    "dup": (b"builtins\nbytearray", lambda n: _long(n) + pickle.DUP + pickle.POP, 1),
    "memo": (b"builtins\nbytearray", lambda n: _long(n) + pickle.BINPUT + b"\x00" + pickle.POP + pickle.BINGET + b"\x00", 1),
    "storage dup": (b"torch.storage\nUntypedStorage", lambda n: _long(n) + pickle.DUP + pickle.POP, 1),
}


def _file(form: str, n: int) -> bytes:
    glob, ops, _ = FORMS[form]
    return _call(glob, ops(n))


@settings(max_examples=30, deadline=None)
@given(form=st.sampled_from(sorted(FORMS)), n=st.integers(MAX_CALL_BYTES + 8, 512 << 20))
def test_the_inert_reader_refuses_before_it_allocates(form: str, n: int) -> None:
    """Run the reader itself (no scan before it): past the allowance it refuses; the call never runs."""
    with pytest.raises(Refused, match="by size"):
        inert_pickle.load(io.BytesIO(_file(form, n)))


@given(form=st.sampled_from(sorted(FORMS)), n=st.integers(0, 1 << 16))
def test_small_sizes_are_read(form: str, n: int) -> None:
    assert len(inert_pickle.load(io.BytesIO(_file(form, n)))) * FORMS[form][2] >= n - 3


@settings(max_examples=30, deadline=None)
@given(form=st.sampled_from(sorted(FORMS)), n=st.integers(2 << 20, 1 << 40))
def test_the_scan_refuses_every_form_before_torch_reads_it(tmp_path_factory: pytest.TempPathFactory, form: str, n: int) -> None:
    path = tmp_path_factory.mktemp("p") / "x.pt"
    path.write_bytes(_file(form, n))
    with pytest.raises(BudgetError) as err:
        check_checkpoint_tensors(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_cli_and_api_refuse_the_duplicated_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dup.pt"
    path.write_bytes(_file("dup", 1_500_000_000))
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1G")
    code, err = run(cli.sample_main, path, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "refusing")
    with pytest.raises(BudgetError):
        DiPPipeline.load(path)
    assert not (tmp_path / "o.npz").exists()
