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
