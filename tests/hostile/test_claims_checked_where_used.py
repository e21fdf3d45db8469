"""Three rules of one kind (what a file or a shared value claims is checked where it is used):
- an export's manifest must record a verification against PyTorch that passed, with at least one comparison: one
  without the record is refused like any missing field;
- the token huggingface_hub would read from its token file (HF_TOKEN unset) is one token of printable ASCII, checked
  before any request (`hub.check_hub_environment`);
- the released presets are read-only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import PRESETS, DiPPipeline, cli
from dip_export.errors import UsageError
from dip_export.hub import check_hub_environment, token_file
from tests.test_hostile import one_line, run


@pytest.mark.parametrize(("change", "said"), [
    (lambda d: d.pop("verification"), "the field verification is missing"),
    (lambda d: d["verification"].update(rows=[]), "verification.rows is empty"),
    (lambda d: d["verification"].pop("passed"), "verification.passed is not true"),
])  # fmt: skip
def test_an_export_without_a_passed_verification_is_refused(pristine: Path, tmp_path: Path, change, said) -> None:
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match=said):
        DiPPipeline.load(folder)
    code, err = run(cli.sample_main, folder, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, said)
    assert not (tmp_path / "o.npz").exists()


TOKENISH = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)


@given(TOKENISH, st.sampled_from(["", "\n", "\r\n", "  \n"]))
def test_a_token_file_holding_one_token_is_taken(token, end):
    with pytest.MonkeyPatch.context() as mp, _folder() as folder:
        (folder / "token").write_text(token + end)
        mp.delenv("HF_TOKEN", raising=False)
        check_hub_environment({"HF_TOKEN_PATH": str(folder / "token")})


@given(TOKENISH, st.sampled_from([" ", "\x1b", "\t", "\x00", "é"]), TOKENISH)
def test_a_token_file_holding_anything_else_is_refused(left, bad, right):
    with _folder() as folder:
        (folder / "token").write_text(left + bad + right, encoding="utf-8")
        with pytest.raises(UsageError, match=r"the Hub token file .* must hold one token of printable ASCII"):
            check_hub_environment({"HF_TOKEN_PATH": str(folder / "token")})
        check_hub_environment({"HF_TOKEN_PATH": str(folder / "token"), "HF_TOKEN": "hf_given"})  # not read then


def _folder():
    import contextlib
    import tempfile

    @contextlib.contextmanager
    def made():
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)

    return made()


def test_the_token_file_is_found_as_huggingface_hub_finds_it(tmp_path: Path) -> None:
    assert token_file({"HF_HOME": str(tmp_path)}) == tmp_path / "token"
    assert token_file({"HF_TOKEN_PATH": str(tmp_path / "t"), "HF_HOME": "/x"}) == tmp_path / "t"
    assert token_file({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "huggingface" / "token"


def test_the_cli_and_the_api_refuse_a_file_that_is_no_token_before_any_request(fake_hub, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", "/etc/passwd" if Path("/etc/passwd").is_file() else str(tmp_path))
    code, err = run(cli.sample_main, "org/model", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "the Hub token file")
    with pytest.raises(UsageError, match="the Hub token file"):
        DiPPipeline.load("org/model")
    assert fake_hub == []


def test_the_presets_are_read_only():
    with pytest.raises(TypeError):
        PRESETS["dip-s-16"] = PRESETS["dip-xl-16"]  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["x"] = 1  # type: ignore[index]
    assert DiPPipeline.load(preset="dip-s-16", image_size=32, device="cpu").config.depth == 12
