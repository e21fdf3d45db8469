"""Line i of --class-file is the class of sample i: a blank line among the lines a run reads is refused with its
number (skipping it would shift every later class by one), never quoting the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.distributed import read_class_file
from dip_export.errors import UsageError
from tests.test_hostile import one_line, run

BLANKS = ["", " ", "\t", "  \t ", "\r"]  # what a text editor leaves on an "empty" line
ENDINGS = ["\n", "\r\n"]


@st.composite
def class_files(draw: st.DrawFn) -> tuple[list[str | int], bytes]:
    """Lines that are each a class or blank, joined with any line ending (the last one optional)."""
    lines: list[str | int] = draw(st.lists(st.one_of(st.integers(0, 9), st.sampled_from(BLANKS)), min_size=0, max_size=12))
    ending = draw(st.sampled_from(ENDINGS))
    text = ending.join(str(line) for line in lines) + (ending if draw(st.booleans()) else "")
    return lines, text.encode()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(file=class_files(), n=st.integers(1, 14))
def test_the_first_n_lines_are_the_classes_or_the_first_blank_one_is_named(
    tmp_path_factory: pytest.TempPathFactory, file: tuple[list[str | int], bytes], n: int
) -> None:
    lines, data = file
    path = tmp_path_factory.mktemp("cf") / "classes.txt"
    path.write_bytes(data)
    classes = [line for line in lines if isinstance(line, int)]
    read = min(n, len(classes))  # the lines a run needs: the first n classes, or all there are
    blank = next((i for i, line in enumerate(lines[:read], 1) if not isinstance(line, int)), None)
    if blank is not None:
        with pytest.raises(UsageError, match=f"classes.txt line {blank} is blank; line i is the class of sample i"):
            read_class_file(path, 10, n)
    elif read < n:
        with pytest.raises(UsageError, match=f"has {read} classes for {n} samples"):
            read_class_file(path, 10, n)
    else:
        assert read_class_file(path, 10, n) == lines[:n]  # line i is sample i


@pytest.mark.parametrize(("text", "blank"), [("3\n\n7\n", 2), ("\n3\n7\n", 1), ("3\n \n7\n5\n", 2), ("3\r\n\r\n7\r\n", 2)])
def test_dip_sample_refuses_a_blank_line_before_any_sampling(tmp_path: Path, no_sampling: None, text: str, blank: int) -> None:
    path = tmp_path / "cf.txt"
    path.write_bytes(text.encode())
    out = tmp_path / "o.npz"
    code, err = run(cli.sample_main, "--num-samples", "2", "--class-file", path, "--steps", "2", "--out", out)
    one_line(code, err, 2, f"--class-file {path} line {blank} is blank")
    assert not out.exists() and not (tmp_path / "o.png").exists()


def test_lines_after_the_last_sample_may_be_blank_and_line_i_is_sample_i(tmp_path: Path) -> None:
    """A trailing blank line (or many) past the samples is never read; the classes are the file's first lines."""
    path = tmp_path / "cf.txt"
    path.write_text("3\n7\n\n\n")
    out, ref = tmp_path / "o.npz", tmp_path / "ref.npz"
    code, err = run(cli.sample_main, "--num-samples", "2", "--class-file", path, "--steps", "2", "--out", out)
    assert code == 0, err
    code, err = run(cli.sample_main, "--classes", "3,7", "--seeds", "0,1", "--steps", "2", "--out", ref)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out)["arr_0"], np.load(ref)["arr_0"])


@settings(max_examples=100, deadline=None)
@given(classes=st.lists(st.integers(0, 20), min_size=1, max_size=10), num_classes=st.integers(1, 20))
def test_a_class_out_of_range_is_named_by_its_line(
    tmp_path_factory: pytest.TempPathFactory, classes: list[int], num_classes: int
) -> None:
    path = tmp_path_factory.mktemp("cf") / "classes.txt"
    path.write_text("".join(f"{c}\n" for c in classes))
    bad = next((i for i, c in enumerate(classes, 1) if c >= num_classes), None)
    if bad is None:
        assert read_class_file(path, num_classes, len(classes)) == classes
    else:
        with pytest.raises(UsageError, match=f"classes.txt line {bad}: class out of range"):
            read_class_file(path, num_classes, len(classes))


def test_dip_sample_names_the_line_of_a_class_out_of_range(tmp_path: Path, no_sampling: None) -> None:
    path = tmp_path / "c.txt"
    path.write_text("1\n10\n")
    code, err = run(cli.sample_main, "--num-samples", "2", "--class-file", path, "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, f"{path} line 2", "out of range")


@st.composite
def lines_with_carriage_returns(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """Class lines, each with its ending ("\\n", "\\r\\n", none on the last), one of which has carriage returns put
    anywhere in it (before, inside or after the digits, next to its ending or not)."""
    count = draw(st.integers(1, 6))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in range(count - 1)] + [draw(st.sampled_from([b"", b"\n", b"\r\n"]))]
    lines = [str(draw(st.integers(0, 9999))).encode() for _ in range(count)]
    bad = draw(st.integers(0, count - 1))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines[bad])))
        lines[bad] = lines[bad][:at] + b"\r" + lines[bad][at:]
    return [line + ending for line, ending in zip(lines, endings, strict=True)], bad + 1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(file=lines_with_carriage_returns())
def test_a_carriage_return_that_is_not_a_line_ending_is_refused_with_its_line(
    tmp_path_factory: pytest.TempPathFactory, file: tuple[list[bytes], int]
) -> None:
    lines, bad = file
    path = tmp_path_factory.mktemp("cf") / "classes.txt"
    path.write_bytes(b"".join(lines))
    raw = lines[bad - 1]
    body = raw.removesuffix(b"\r\n") if raw.endswith(b"\r\n") else raw.removesuffix(b"\n")
    if body.isdigit():  # the only \r was the line's own CRLF ending
        assert read_class_file(path, 10**4, len(lines))[bad - 1] == int(body)
    else:
        with pytest.raises(UsageError, match=f"classes.txt line {bad}: one non-negative integer class per line expected"):
            read_class_file(path, 10**4, len(lines))


@pytest.mark.parametrize(("text", "bad"), [(b"1\r\n2\r\r\n", 2), (b"1\n2\r", 2), (b"1\r2\r3\r", 1), (b"\r1\n2\n", 1)])
def test_dip_sample_refuses_a_stray_carriage_return_before_any_sampling(
    tmp_path: Path, no_sampling: None, text: bytes, bad: int
) -> None:
    path = tmp_path / "cf.txt"
    path.write_bytes(text)
    out = tmp_path / "o.npz"
    code, err = run(cli.sample_main, "--num-samples", "2", "--class-file", path, "--steps", "2", "--out", out)
    one_line(code, err, 2, f"--class-file {path} line {bad}: one non-negative integer class per line expected")
    assert not out.exists() and not (tmp_path / "o.png").exists()
