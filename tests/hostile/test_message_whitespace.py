"""A name is printed as it is: whitespace is neither collapsed nor dropped, newlines/tabs/returns are shown as
`\\n` `\\t` `\\r`, other control characters as `\\xNN`, and nothing else changes (a backslash prints as itself), so
escaping is idempotent: a value escaped in a message is escaped once when printed, and the printed line of a text
with no backslash, unescaped, is the text."""

from __future__ import annotations

import io
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from dip_export import cli
from dip_export.errors import DipError
from dip_export.messages import MAX_LINE, plain_line, say, where
from dip_export.text import visible
from tests.test_hostile import one_line, run

ESCAPE = re.compile(r"\\(n|t|r|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
NAMED = {"n": "\n", "t": "\t", "r": "\r"}
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def unescape(line: str) -> str:
    """The reader's side: every escape the printer writes, back to its character."""
    return ESCAPE.sub(lambda m: NAMED.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), line)


WHITESPACE = st.text(st.sampled_from(" \t\n\r\x0b\x0c\\nt x/._-\u2028\u3000é[]\u0301\u20dd"), max_size=120)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(WHITESPACE | st.text(max_size=120))
def test_a_printed_line_unescaped_gives_back_the_text(text: str) -> None:
    line = plain_line(text)
    assert len(line.splitlines()) <= 1 and "\n" not in line and "\r" not in line and "\t" not in line
    assert not line.startswith(" ") and not line.endswith(" ")  # an edge space would not be seen
    assert not CONTROL.search(line) and plain_line(line) == line  # printed twice: the same line
    if len(line) < MAX_LINE and " more characters) ... " not in line and "\\" not in text:
        assert unescape(line) == text
    unseen = ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")  # control, format, surrogate, private use, separators
    plain = not any(unicodedata.category(c)[0] == "M" or unicodedata.category(c) in unseen for c in text)
    if plain and not CONTROL.search(text) and text.strip(" ") == text and len(text) <= MAX_LINE:
        assert line == text  # nothing to escape: printed exactly as it is


@given(st.sampled_from(["\u0301", "\u20dd", "\U0001e944", "\u0903"]), st.sampled_from(["", " ", ": ", "'", "/"]))
def test_a_mark_with_no_letter_under_it_is_escaped_and_one_on_a_letter_is_not(mark: str, before: str) -> None:
    shown = plain_line(f"x{before}{mark}y") if before else plain_line(f"{mark}y")
    assert mark not in shown and unescape(shown) == (f"x{before}{mark}y" if before else f"{mark}y")
    assert mark in plain_line(f"e{mark}y")  # on a letter it is part of how the name is written


@settings(max_examples=100, deadline=None, derandomize=True)
@given(WHITESPACE.map(lambda t: t.replace("\\", "")), WHITESPACE.map(lambda t: t.replace("\\", "")))
def test_two_names_with_no_backslash_print_alike_only_if_they_are_alike(a: str, b: str) -> None:
    assert (plain_line(f"wrote {a}.npz") == plain_line(f"wrote {b}.npz")) == (a == b)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.text(st.sampled_from(" \t\n\\ab"), max_size=2000))
def test_a_long_line_is_cut_in_the_middle_never_inside_an_escape(text: str) -> None:
    line = plain_line(text)
    assert len(line) <= MAX_LINE
    if " more characters) ... " in line:
        head, tail = line.split(" ... (", 1)[0], line.rsplit(") ... ", 1)[1]
        assert text.startswith(unescape(head)) and text.endswith(unescape(tail))


def test_say_prints_the_line_once_escaped() -> None:
    out = io.StringIO()
    say(Console(file=out, width=5000, color_system=None), "a\tb\nc  d\\n ", prefix="error: ")
    assert out.getvalue() == "error: a\\tb\\nc  d\\n\\x20\n"  # a backslash typed prints as itself


def test_where_names_a_file_as_it_is(tmp_path: Path) -> None:
    name = tmp_path / " a\tb\n"
    assert where(name, 3) == f"{name} line 3"  # escaped once, where the whole line is printed


@pytest.mark.parametrize("name", ["a\tb.txt", "a\nerror: fake.txt", "two  spaces.txt", " lead.txt", "back\\nslash.txt"])
def test_cli_names_the_out_file_as_given(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    code, err = run(cli.sample_main, "--out", out)
    one_line(code, err, 2)
    assert plain_line(str(out)) in err.strip()  # the name printed is the name given, escaped once
    if "\\" not in name:
        assert str(out) in unescape(err.strip())  # not another valid-looking one


def test_cli_wrote_line_names_the_files_written(tmp_path: Path) -> None:
    out = tmp_path / "b\nerror:  x\t.npz"
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "1", "--out", out)
    assert code == 0 and out.is_file()
    wrote = [line for line in err.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 1 and unescape(wrote[0]).startswith(f"wrote {out} (1 x 32x32) and {out.with_suffix('.png')}")


@pytest.mark.parametrize("name", [" org/name", "org/name ", "a\nb.pt", "a\tb.safetensors"])
def test_api_error_and_cli_line_carry_the_checkpoint_name(tmp_path: Path, monkeypatch, name: str) -> None:
    from dip_export import DiPPipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DipError) as caught:
        DiPPipeline.load(name)
    text = str(caught.value)
    assert visible(name) in text and not CONTROL.search(text)  # the API text holds the name escaped, on one line
    code, err = run(cli.sample_main, name, "--out", tmp_path / "o.npz")
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert err.strip() == f"error: {plain_line(text)}"  # the API text, escaped once: not again (an edge space shown)
