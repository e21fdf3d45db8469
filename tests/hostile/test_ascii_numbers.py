"""Numbers and names are read as ASCII: a digit of another script (`१`, `８`) is no digit, in the environment as on
the command line; a Hub name or revision of other letters is never requested.

`budget.memory_limit` is property-tested on DIP_MEMORY_LIMIT; dip-sample and DiPPipeline.load are run with one.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.budget import memory_limit
from dip_export.errors import UsageError
from dip_export.hub import looks_like_hub_name
from tests.test_hostile import one_line, run

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
OTHER_DIGITS = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())


@given(st.integers(1, 10**6), st.sampled_from(sorted(UNITS)), st.sampled_from(["", "B", "iB"]))
def test_ascii_figures_are_taken(n, unit, tail):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIP_MEMORY_LIMIT", f"{n}{unit}{tail if unit or tail == 'B' else ''}")
        assert memory_limit() <= n * UNITS[unit]


@given(st.text(st.sampled_from("0123456789"), min_size=0, max_size=3), OTHER_DIGITS, st.sampled_from(["", "G", "M"]))
def test_a_digit_of_another_script_is_refused(before, digit, unit):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIP_MEMORY_LIMIT", f"{before}{digit}{unit}")
        with pytest.raises(UsageError, match="DIP_MEMORY_LIMIT must be bytes"):
            memory_limit()


@given(st.sampled_from(["1Gı", "1ＧB", "１G", "1G\u0130"]))
def test_letters_that_upper_case_to_ascii_are_refused(text):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIP_MEMORY_LIMIT", text)
        with pytest.raises(UsageError, match="DIP_MEMORY_LIMIT must be bytes"):
            memory_limit()


@pytest.mark.parametrize("text", ["१G", "８G"])
def test_the_cli_and_the_api_refuse_another_scripts_digits(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIP_MEMORY_LIMIT", text)
    code, err = run(cli.sample_main, "--num-samples", "1", "--steps", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "DIP_MEMORY_LIMIT must be bytes")
    with pytest.raises(UsageError, match="DIP_MEMORY_LIMIT must be bytes"):
        DiPPipeline.load(device="cpu")
    assert not (tmp_path / "o.npz").exists()


@given(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.characters(categories=["Ll", "Lu"]).filter(lambda c: not c.isascii()))
def test_a_name_of_other_letters_is_no_hub_name(word, letter):
    assert not looks_like_hub_name(f"org{word}/{word}{letter}") and not looks_like_hub_name(f"o{letter}/{word}")
    assert looks_like_hub_name(f"org{word}/{word}")
    assert re.fullmatch(r"[a-z]+", word)
