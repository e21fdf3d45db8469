"""No value is trimmed: a number, list item, size, name or class-file line with whitespace around it is refused
(` 3` is not 3), by the one parser of its kind, on every surface."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.distributed import read_class_file
from dip_export.errors import UsageError
from dip_export.runtime.backends import BackendSpec
from dip_export.settings import FORECASTS, choice_list, decimal_text, image_size, number_list, optional_text, whole_text
from tests.test_hostile import one_line, run

FAST = settings(max_examples=200, deadline=None, derandomize=True)
SPACES = st.text(st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003"), min_size=1, max_size=3)


@st.composite
def padded(draw: st.DrawFn, core: st.SearchStrategy[str]) -> tuple[str, str]:
    """(valid text, the same text with whitespace before, after or both)."""
    text = draw(core)
    where = draw(st.sampled_from(["before", "after", "both"]))
    before = draw(SPACES) if where != "after" else ""
    after = draw(SPACES) if where != "before" else ""
    return text, before + text + after


WHOLE = st.integers(-(10**6), 10**6).map(str)
DECIMAL = st.floats(-1e6, 1e6, allow_nan=False).map(repr)
SIZE = st.one_of(st.integers(1, 4096).map(str), st.tuples(st.integers(1, 99), st.integers(1, 99)).map(lambda p: f"{p[0]}x{p[1]}"))
NAMES = st.sampled_from(["torch", "onnx", "torch:fp32", "onnx:fp16"])


@FAST
@given(pair=padded(WHOLE))
def test_whole_numbers(pair: tuple[str, str]) -> None:
    text, spaced = pair
    assert whole_text(text, "--x") == int(text)
    with pytest.raises(UsageError, match="--x must be a whole number"):
        whole_text(spaced, "--x")


@FAST
@given(pair=padded(DECIMAL))
def test_decimal_numbers(pair: tuple[str, str]) -> None:
    text, spaced = pair
    assert decimal_text(text, "--x") == float(text)
    with pytest.raises(UsageError, match="--x must be a finite decimal number"):
        decimal_text(spaced, "--x")


@FAST
@given(items=st.lists(WHOLE, min_size=1, max_size=4), at=st.integers(0, 3), pad=SPACES, after=st.booleans())
def test_number_list_items(items: list[str], at: int, pad: str, after: bool) -> None:
    assert number_list(",".join(items), "--seeds", whole_text) == [int(v) for v in items]
    i = at % len(items)
    items[i] = items[i] + pad if after else pad + items[i]
    with pytest.raises(UsageError, match="--seeds must be comma-separated integers"):
        number_list(",".join(items), "--seeds", whole_text)


@FAST
@given(pair=padded(SIZE))
def test_image_sizes(pair: tuple[str, str]) -> None:
    text, spaced = pair
    image_size(text)
    with pytest.raises(UsageError, match="image size must be N or HxW"):
        image_size(spaced)


@FAST
@given(pair=padded(st.sampled_from(FORECASTS)))
def test_choice_lists_and_names(pair: tuple[str, str]) -> None:
    text, spaced = pair
    assert choice_list(text, "--f", FORECASTS) == [text]
    with pytest.raises(UsageError, match="--f must be one of"):
        choice_list(f"{text},{spaced}", "--f", FORECASTS)
    assert optional_text(text, "revision") == text
    with pytest.raises(UsageError, match="revision must not start or end with whitespace"):
        optional_text(spaced, "revision")


@FAST
@given(pair=padded(NAMES))
def test_backend_names(pair: tuple[str, str]) -> None:
    text, spaced = pair
    assert str(BackendSpec.parse(text)).startswith(text.split(":")[0])
    with pytest.raises(UsageError):
        BackendSpec.parse(spaced)


@FAST
@given(pad=SPACES.filter(lambda s: "\n" not in s and "\r" not in s), line=st.integers(1, 3), after=st.booleans())
def test_class_file_lines(tmp_path_factory: pytest.TempPathFactory, pad: str, line: int, after: bool) -> None:
    lines = ["1", "2", "3"]
    path = tmp_path_factory.mktemp("cf") / "classes.txt"
    path.write_text("\n".join(lines) + "\n")
    assert read_class_file(path, 10, 3) == [1, 2, 3]
    lines[line - 1] = lines[line - 1] + pad if after else pad + lines[line - 1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=f"classes.txt line {line}: one non-negative integer class per line"):
        read_class_file(path, 10, 3)


@pytest.mark.parametrize("args", [
    ["--classes", "1,2", "--seeds", "0, 1"],
    ["--classes", "1", "--seeds", "0", "--image-size", " 32"],
    ["--num-samples", "1", "--backend", " onnx"],
    ["--num-samples", "1", "--backend", "torch "],
    ["--num-samples", "1", "--guidance-interval", "0.1, 1.0"],
    ["--num-samples", "1", "--cfg", " 2"],
])  # fmt: skip
def test_dip_sample_refuses_spaced_values(tmp_path: Path, no_sampling, args: list[str]) -> None:
    code, err = run(cli.sample_main, "--steps", "2", *args, "--out", tmp_path / "o.npz")
    one_line(code, err, 2)
    assert not (tmp_path / "o.npz").exists()


def test_dip_sample_refuses_a_class_file_line_with_a_tab(tmp_path: Path, no_sampling) -> None:
    (tmp_path / "cf.txt").write_text("1\n\t2\n")
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "2", "--class-file", tmp_path / "cf.txt",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 2, "cf.txt line 2")


@pytest.mark.parametrize("backends", [" torch", "torch:fp32, onnx", "torch ,onnx"])
def test_dip_bench_refuses_spaced_backend_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backends: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.bench_main, "--backends", backends, "--steps", "2")
    one_line(code, err, 2, "unknown backend")


@pytest.mark.parametrize("kwargs", [{"backend": " torch"}, {"backend": "torch "}, {"image_size": " 32"}])
def test_the_python_api_refuses_spaced_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        DiPPipeline.load(**kwargs)
