"""Nothing outside a zip checkpoint's records is ever read as weights: a tensor record shorter than the storage the
pickle declares for it is refused (the tensor would be read past it, from the zip's next headers), and a zip whose
local headers disagree with its directory is refused as damaged, in one line naming the file, not a traceback.
Through `load_checkpoint`, `DiPPipeline.load` and dip-sample."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def plain(tmp_path_factory, golden) -> Path:
    path = tmp_path_factory.mktemp("plain") / "plain.pt"
    torch.save(golden.state, path)
    return path


def _records(plain: Path) -> list[str]:
    with zipfile.ZipFile(plain) as z:
        return [n for n in z.namelist() if "/data/" in n and z.getinfo(n).file_size > 0]


def _cut(plain: Path, out: Path, record: str, cut: int) -> Path:
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[: len(data) - cut] if name == record else data)
    return out


@RUN_SETTINGS
@given(data=st.data())
def test_a_record_shorter_than_its_storage_is_refused(tmp_path_factory, plain, data) -> None:
    record = data.draw(st.sampled_from(_records(plain)))
    with zipfile.ZipFile(plain) as z:
        size = z.getinfo(record).file_size
    cut = data.draw(st.integers(0, size))
    path = _cut(plain, tmp_path_factory.mktemp("cut") / "cut.pt", record, cut)
    if cut == 0:
        assert load_checkpoint(path).config is not None
        return
    with pytest.raises(BudgetError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"{path}: truncated or damaged: a tensor record holds {size - cut} bytes where its storage needs {size}; "
        "refusing to load it"
    )


@pytest.fixture
def renamed(tmp_path, plain) -> Path:
    """The pickle's local header names another record than the directory does."""
    raw = bytearray(plain.read_bytes())
    at = raw.find(b"/data.pkl")
    raw[at : at + 9] = b"/data.pkx"
    path = tmp_path / "renamed.pt"
    path.write_bytes(bytes(raw))
    return path


def test_a_zip_whose_headers_disagree_is_refused_as_damaged(renamed) -> None:
    with pytest.raises(BudgetError, match="a damaged zip"):
        load_checkpoint(renamed)


@pytest.mark.parametrize("kind", ["short record", "headers disagree"])
def test_cli_and_api_refuse_in_one_line(tmp_path, plain, renamed, kind) -> None:
    path = renamed if kind == "headers disagree" else _cut(plain, tmp_path / "cut.pt", _records(plain)[-1], 4)
    code, err = sample(path, "--steps", "2", "--num-samples", "1", "--image-size", "32", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "damaged")
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(BudgetError, match="damaged"):
        DiPPipeline.load(path, device="cpu")
