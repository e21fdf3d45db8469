"""One way to print: control characters and markup from files never reach the terminal; lines are capped."""

from __future__ import annotations

import io
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from dip_export import cli
from dip_export.messages import MAX_LINE, plain_line, say
from tests.test_hostile import one_line, run

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=2000))
def test_any_text_prints_as_one_capped_line_of_visible_characters(text: str) -> None:
    line = plain_line(text)
    assert not CONTROL.search(line) and "\n" not in line
    assert len(line) <= MAX_LINE
    whole = plain_line(text, 10**9)  # every character, escaped
    if len(whole) > MAX_LINE:  # the middle is cut: the end (a message's reason) is kept
        assert " more characters) ... " in line and whole.endswith(line.rsplit(" ... ", 1)[1])


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.text(min_size=1, max_size=3000), st.sampled_from(["", "[red]error:[/red] ", "warning: "]))
def test_a_printed_line_with_its_prefix_never_passes_the_cap(text: str, prefix: str) -> None:
    out = io.StringIO()
    say(Console(file=out, width=5000, color_system=None), text, prefix=prefix)
    assert len(out.getvalue().rstrip("\n")) <= MAX_LINE


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.text(alphabet=st.sampled_from("ab[]/\\=:# red"), max_size=80))
def test_markup_in_text_is_printed_literally(text: str) -> None:
    out = io.StringIO()
    say(Console(file=out, width=500, color_system=None), text)
    assert out.getvalue().rstrip("\n") == plain_line(text)


def test_cli_error_with_markup_and_escape_codes_in_a_name(tmp_path: Path) -> None:
    name = tmp_path / "[bold red]x[/] \x1b]0;owned\x07 \x1b[2J.txt"
    code, err = run(cli.sample_main, "--out", name)
    one_line(code, err, 2, "[bold red]x[/]", "\\x1b]0;owned\\x07")
    assert "\x1b" not in err and "\x07" not in err


def test_cli_error_line_is_capped(tmp_path: Path) -> None:
    code, err = run(cli.sample_main, "--out", tmp_path / ("y" * 5000 + ".txt"))
    assert code == 2 and len(err.strip()) <= MAX_LINE and "more characters)" in err


def test_a_long_path_is_shortened_and_the_reason_kept(tmp_path: Path) -> None:
    code, err = run(cli.sample_main, "--num-samples", "2", "--class-file", tmp_path / ("a" * 400), "--out", tmp_path / "o.npz")
    assert code != 0 and len(err.strip()) <= MAX_LINE and "more characters)" in err
    assert re.search(r"a+: [A-Za-z]", err.strip().rsplit(" ... ", 1)[1]), err  # the path's end, then the reason


def test_class_file_content_is_never_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "classes.txt"
    secret.write_text("1\n2\nhf_SECRETTOKEN123\n")
    code, err = run(cli.sample_main, "--class-file", secret, "--num-samples", "3", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "classes.txt line 3")
    assert "SECRET" not in err


@given(st.text(max_size=2000), st.integers(40, 400))
def test_a_shortened_part_keeps_its_start_and_its_end(text, limit):
    from dip_export.messages import shortened

    cut = shortened(text, limit)
    if len(text) <= limit:
        assert cut == text
        return
    keep = limit // 2 - 10
    assert cut.startswith(text[:keep]) and cut.endswith(text[-keep:])
    assert len(cut) <= limit + 30 and f"({len(text) - 2 * keep} more characters)" in cut


def test_a_skipped_rows_reason_keeps_its_advice():
    from dip_export.measure.bench import failure
    from dip_export.runtime.backends import BackendSpec
    from dip_export.untrusted import UntrustedFileError

    err = UntrustedFileError("engines/" + "x" * 400 + "-calib/calib.npz: not this tool's (edited); delete it to calibrate again")
    row = failure(BackendSpec.parse("onnx:int8"), err)
    assert row.status == "skipped" and row.reason.endswith("delete it to calibrate again") and len(row.reason) < 240
