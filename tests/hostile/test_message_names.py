"""Names from a file or a caller (a checkpoint's weight names, a call's setting names) reach a message through one
formatter, `settings.name_text`: a short plain name as it is, anything else quoted, escaped and shortened, so an
API caller's exception is one short line too, not only what the commands print."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.checkpoint import load_checkpoint
from dip_export.errors import CheckpointError, UsageError
from dip_export.settings import name_text

UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=2000))
def test_a_name_is_shown_short_on_one_line_and_as_it_is_when_plain(name: str) -> None:
    shown = name_text(name)
    assert not UNSAFE.search(shown) and len(shown) <= 45
    if re.fullmatch(r"[A-Za-z0-9_]{1,40}", name):
        assert shown == name
    else:
        assert shown.startswith(("'", '"'))


NAMES = ["\x1b[31mq\nx", "x" * 1_000_000, "[red]x[/red]\r", "a\u2028b", "é\x00"]


@pytest.fixture(scope="module")
def pipe():
    return DiPPipeline.load()


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_setting_of_a_call_is_named_in_one_short_line(pipe, name: str) -> None:
    with pytest.raises(UsageError) as caught:
        pipe(classes=[0], seeds=[0], **{name: 1})
    text = str(caught.value)
    assert text.startswith("unknown sampler setting(s): ") and not UNSAFE.search(text) and len(text) < 120


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_s_unexpected_weight_is_named_in_one_short_line(tmp_path: Path, golden, name: str) -> None:
    state = {**golden.state, name: torch.zeros(1)}
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    text = str(caught.value)
    assert "unexpected: " in text and not UNSAFE.search(text) and len(text) < 400


# ------------------------------------------------------------- escaped once: in the exception, never again in print

ESCAPE = re.compile(r"\\(n|t|r|x[0-9a-f]{2}|u[0-9a-f]{4})")


def _unescape(line: str) -> str:
    return ESCAPE.sub(lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), line)


VALUE = st.text(st.sampled_from("abq[]/:. \x1b\x07\n\t\r\x7f\u2028"), min_size=1, max_size=20).filter(
    lambda v: v.strip() == v and v.strip()
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(value=VALUE)
def test_a_value_with_control_characters_is_escaped_once_in_the_exception_and_in_print(value: str) -> None:
    from dip_export import cli
    from dip_export.sampling import SamplerSettings
    from tests.test_hostile import one_line, run

    with pytest.raises(UsageError) as caught:
        SamplerSettings(method=value)
    text = str(caught.value)
    assert not UNSAFE.search(text) and "\\\\" not in text and value in _unescape(text)
    code, err = run(cli.sample_main, "--sampler", value, "--num-samples", "1", "--out", "never.npz")
    one_line(code, err, 2, "sampler must be one of")
    line = err.strip()
    assert "\\\\" not in line and value in _unescape(line)  # once: `\x1b`, never `\\x1b`


@pytest.mark.parametrize("name", ["org\\name", "a\\nb.pt", "c:\\x\\y.safetensors"])
def test_a_path_with_a_backslash_is_printed_as_typed(tmp_path: Path, monkeypatch, name: str) -> None:
    from dip_export import cli
    from tests.test_hostile import one_line, run

    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, name, "--num-samples", "1", "--out", "o.npz")
    one_line(code, err, 1, name)  # as typed: a backslash is not doubled
    assert name.replace("\\", "\\\\") not in err and not (tmp_path / "o.npz").exists()


# ------------------------------------------------------------- every exception of the package: escaped when made

ERRORS = ["DipError", "UsageError", "CheckpointError", "ExportError", "NonFiniteError"]
SEEN_AS_ITSELF = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(ERRORS), text=st.text(max_size=60))
def test_every_package_exception_holds_its_message_escaped_once(kind: str, text: str) -> None:
    import dip_export.errors as errors
    from dip_export.messages import plain_line

    err = getattr(errors, kind)(f"{text}: refused")
    message = str(err)
    assert not SEEN_AS_ITSELF.search(message) and len(message.splitlines()) == 1
    assert plain_line(message) == plain_line(plain_line(message))  # printing adds no second escape
    err.args = (text,)  # rewritten later (a file named as typed): escaped the same way
    assert not SEEN_AS_ITSELF.search(str(err))


def test_a_non_tensor_entry_s_name_from_a_checkpoint_is_escaped(tmp_path: Path, golden) -> None:
    path = tmp_path / "odd.pt"
    torch.save({**golden.state, "\x1b[2Jevil\nkey": 5}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert not UNSAFE.search(str(caught.value)) and "\\x1b[2Jevil\\nkey" in str(caught.value)
