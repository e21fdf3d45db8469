"""The pickle torch reads is the pickle the budget scanned: a zip checkpoint with two records of one name (torch's
reader takes the first, Python's zipfile the last), names differing only in case counted as one, is refused unread;
a pickle record named in another case (`DATA.PKL`, which torch's reader also finds) is scanned like `data.pkl`.
Through `load_checkpoint`, `DiPPipeline.load` and dip-sample, in one line, before anything the pickle asks for."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.budget import BudgetError
from dip_export.checkpoint import load_checkpoint
from tests.test_hostile import RUN_SETTINGS, one_line, sample

BOMB = b"\x80\x02}X\x04\x00\x00\x00junkc__builtin__\nbytearray\n\x8a\x05" + (3 * 10**9).to_bytes(5, "little") + b"\x85Rs."


@pytest.fixture(scope="module")
def plain(tmp_path_factory, golden) -> Path:
    path = tmp_path_factory.mktemp("plain") / "plain.pt"
    torch.save(golden.state, path)
    return path


def _rewrite(plain: Path, out: Path, pickle_name: str, twice: str | None, bomb_first: bool) -> Path:
    """`plain` with its pickle record renamed, and (when `twice` names one) a record written twice."""
    with warnings.catch_warnings(), zipfile.ZipFile(plain) as src, zipfile.ZipFile(out, "w") as dst:
        warnings.simplefilter("ignore")  # zipfile's "Duplicate name": the point of the file
        names = src.namelist()
        (pkl,) = [n for n in names if n.endswith("/data.pkl")]
        renamed = pkl.rsplit("/", 1)[0] + "/" + pickle_name
        if twice == "pickle" and bomb_first:
            dst.writestr(renamed, BOMB)
        for name in names:
            data = src.read(name)
            if name == pkl:
                dst.writestr(renamed, data if twice == "pickle" or pickle_name == "data.pkl" else BOMB)
            else:
                dst.writestr(name, data)
            if twice == "tensor" and "/data/" in name:
                dst.writestr(name.upper() if name.upper() != name else name, data)
                twice = None
        if twice == "pickle" and not bomb_first:
            dst.writestr(renamed, BOMB)
    return out


@RUN_SETTINGS
@given(
    name=st.sampled_from(["data.pkl", "DATA.PKL", "Data.pkl", "data.PKL"]),
    twice=st.sampled_from([None, "pickle", "tensor"]),
    bomb_first=st.booleans(),
)
def test_the_pickle_torch_would_read_is_scanned_or_the_file_refused(
    tmp_path_factory, plain, monkeypatch_module, name, twice, bomb_first
) -> None:
    path = _rewrite(plain, tmp_path_factory.mktemp("z") / "z.pt", name, twice, bomb_first)
    if twice is None and name == "data.pkl":
        assert load_checkpoint(path).config is not None  # the file as torch.save wrote it
        return
    with pytest.raises(BudgetError) as err:
        load_checkpoint(path)
    reason = "two records of one name" if twice else "declares 2.8 GiB"
    assert str(err.value).startswith(f"{path}: ") and reason in str(err.value)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIP_MEMORY_LIMIT", "1G")
        yield mp


@pytest.mark.parametrize(("name", "twice"), [("data.pkl", "pickle"), ("DATA.PKL", None)])
def test_cli_and_api_refuse_before_the_pickle_allocates(tmp_path, plain, monkeypatch, name, twice) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1G")
    path = _rewrite(plain, tmp_path / "z.pt", name, twice, bomb_first=True)
    code, err = sample(path, "--steps", "2", "--num-samples", "1", "--image-size", "32", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path))
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(BudgetError):
        DiPPipeline.load(path, device="cpu")
