"""`_codecs.encode` (a global weights-only loads allow) is taken only with latin1, the codec pickle protocol 2
writes bytes with: any other codec's work is not bounded by its bytes (punycode is quadratic in its text), so a
pickle naming one is refused before the call runs, by the scan every checkpoint goes through and by the inert
reader alike, in one line naming the file; pickles that write bytes the usual way still load."""

from __future__ import annotations

import _codecs
import io
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline, inert_pickle
from dip_export.budget import BudgetError, OddCodec, pickle_declared
from dip_export.checkpoint import load_checkpoint
from tests.test_hostile import RUN_SETTINGS, one_line, sample

CODECS = ["latin1", "latin-1", "utf-8", "utf_16", "punycode", "idna", "ascii", "cp1252", "raw_unicode_escape"]
LATIN1 = {"latin1", "latin-1"}


class _Encoded:
    def __init__(self, text: str, codec: str) -> None:
        self.text, self.codec = text, codec

    def __reduce__(self):
        return (_codecs.encode, (self.text, self.codec))


@RUN_SETTINGS
@given(codec=st.sampled_from(CODECS), text=st.text(alphabet=st.characters(max_codepoint=255), max_size=40))
def test_the_scan_and_the_reader_take_latin1_only(codec: str, text: str) -> None:
    pkl = pickle.dumps({"x": _Encoded(text, codec)}, protocol=2)
    if codec in LATIN1:
        pickle_declared(io.BytesIO(pkl))
        assert inert_pickle.load(io.BytesIO(pkl)) == {"x": text.encode("latin1")}
        return
    with pytest.raises(OddCodec):
        pickle_declared(io.BytesIO(pkl))
    with pytest.raises(inert_pickle.Refused, match="a codec other than latin1"):
        inert_pickle.load(io.BytesIO(pkl))


@pytest.fixture(scope="module")
def files(tmp_path_factory, golden) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("codecs")
    made = {}
    for name, extra in (("puny", _Encoded("\u0100\u2000" * 50, "punycode")), ("bytes", b"\x00\xff" * 8)):
        made[name] = folder / f"{name}.pt"
        torch.save({"state_dict": golden.state, "hyper_parameters": {"x": extra}}, made[name])
    return made


def test_refused_in_one_line_on_the_cli_and_the_api(files, tmp_path) -> None:
    code, err = sample(files["puny"], "--steps", "2", "--num-samples", "1", "--image-size", "32", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(files["puny"]), "a codec other than latin1")
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(BudgetError, match="a codec other than latin1"):
        DiPPipeline.load(files["puny"], device="cpu")


def test_bytes_written_the_usual_way_still_load(files) -> None:
    assert load_checkpoint(files["bytes"]).config is not None
