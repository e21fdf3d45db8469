"""Numbers typed as text: one parser for every int option, one for every float option and comma list.

typer's own int type rounds `2.0` to 2 and reads `1_0` as 10; the API refuses a float seed. Every
command's int and float options now go through `settings.whole_text` / `settings.decimal_text`,
and the comma lists (--classes, --seeds, --nfe, --band, --guidance-interval, trt --batch) through
`settings.number_list`, so the CLI takes exactly what the API takes.
"""

from __future__ import annotations

import math
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.settings import decimal_text, number_list, whole_text
from tests.test_hostile import one_line, run

APPS = {"dip-sample": cli.sample_app, "dip-export": cli.export_app, "dip-bench": cli.bench_app}
MAINS = {"dip-sample": cli.sample_main, "dip-export": cli.export_main, "dip-bench": cli.bench_main}


@given(st.integers(min_value=-(10**39), max_value=10**39))
def test_whole_text_reads_every_integer_as_written(n):
    assert whole_text(str(n), "x") == n
    assert whole_text(f"+{n}" if n >= 0 else str(n), "x") == n


@given(st.integers(min_value=41, max_value=6000), st.sampled_from(["", "+", "-"]), st.sampled_from("123456789"))
def test_a_whole_number_of_too_many_digits_is_named_by_its_size(digits, sign, first):
    """Digits only, too many for any limit: called a whole number of so many digits, never "not a whole number"."""
    with pytest.raises(UsageError) as caught:
        whole_text(sign + first + "0" * (digits - 1), "--steps")
    assert str(caught.value) == f"--steps is a whole number of {digits} digits, beyond any limit of the tool"


def test_a_huge_step_count_is_refused_by_its_size_on_the_command_line(tmp_path):
    code, err = run(cli.sample_main, "--steps", "9" * 5000, "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "--steps", "is a whole number of 5000 digits")


@given(st.text(max_size=8))
def test_whole_text_takes_only_ascii_digits_with_a_sign(text):
    try:
        n = whole_text(text, "x")
    except UsageError:
        return
    assert text and set(text) <= set("+-0123456789") and text.lstrip("+-").isdigit() and text.lstrip("+-").isascii()
    assert n == int(text)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_decimal_text_reads_every_finite_float_as_written(x):
    assert decimal_text(repr(x), "x") == x


@given(st.text(max_size=10))
def test_decimal_text_takes_only_finite_plain_decimals(text):
    try:
        x = decimal_text(text, "x")
    except UsageError:
        return
    assert set(text) <= set("+-.0123456789eE") and "_" not in text
    assert math.isfinite(x) and x == float(text)


@pytest.mark.parametrize("text", ["1.0", "1_0", "1e3", " 3", "3 ", "0x10", "\uff12", "\u0663", "", "+", "--1", "1.", True, 3.0])
def test_whole_text_refuses_lenient_forms(text):
    with pytest.raises(UsageError):
        whole_text(text, "--steps")


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "1_5", "0x1p3", " 1", "1,5", "", ".", "e3", "\uff11"])
def test_decimal_text_refuses_lenient_forms(text):
    with pytest.raises(UsageError):
        decimal_text(text, "--cfg")


@given(st.lists(st.integers(-(10**6), 10**6), min_size=1, max_size=5))
def test_number_list_round_trips_and_counts(values):
    text = ",".join(map(str, values))
    assert number_list(text, "x", whole_text) == values
    with pytest.raises(UsageError, match="must be"):
        number_list(text, "x", whole_text, count=len(values) + 1)


def _number_parameters():
    """(command, option name, annotation base, parser) of every int and float option of every command."""
    for tool, app in APPS.items():
        for info in app.registered_commands:
            hints = typing.get_type_hints(info.callback, include_extras=True)
            for name, hint in hints.items():
                if typing.get_origin(hint) is not typing.Annotated:
                    continue
                base, *metadata = typing.get_args(hint)
                kinds = [a for a in typing.get_args(base) if a is not type(None)] or [base]
                if kinds in ([int], [float]):
                    yield tool, info.name or info.callback.__name__, name, kinds[0], metadata


NUMBER_PARAMETERS = list(_number_parameters())


def test_every_number_option_of_every_command_has_the_strict_parser():
    assert len(NUMBER_PARAMETERS) >= 20  # sample, export onnx/trt/schedule and bench all have some
    for tool, command, name, kind, metadata in NUMBER_PARAMETERS:
        parsers = {getattr(m, "parser", None) for m in metadata} - {None}
        want = cli.whole_number if kind is int else cli.decimal_number
        assert parsers == {want}, (tool, command, name)


def _flag(tool, command, name):
    """The option's first flag as the user types it."""
    for info in APPS[tool].registered_commands:
        if (info.name or info.callback.__name__) == command:
            hint = typing.get_type_hints(info.callback, include_extras=True)[name]
            for meta in typing.get_args(hint)[1:]:
                given = [getattr(meta, "default", None), *(getattr(meta, "param_decls", None) or ())]
                decls = [d for d in given if isinstance(d, str) and d.startswith("--")]
                if decls:
                    return decls[0]
    return "--" + name.replace("_", "-")


@pytest.mark.parametrize(
    ("tool", "command", "name", "kind"),
    [(t, c, n, k) for t, c, n, k, _ in NUMBER_PARAMETERS],
    ids=[f"{t}-{c}-{n}" for t, c, n, _, _ in NUMBER_PARAMETERS],
)
def test_every_number_option_refuses_a_lenient_value_before_any_work(
    tool, command, name, kind, no_sampling, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # anything a run made by mistake would land here
    bad = "2_0" if kind is int else "nan"
    prefix = [] if tool != "dip-export" else [command]
    code, err = run(MAINS[tool], *prefix, _flag(tool, command, name), bad)
    one_line(code, err, 2, "whole number" if kind is int else "finite decimal")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--num-samples", "2.0"],
        ["--seed", "1.0"],
        ["--steps", "1_0"],
        ["--batch-size", "1e3"],
        ["--cache-interval", "2.0"],
        ["--cfg", "1_5"],
        ["--cfg", "inf"],
        ["--guidance-interval", "0.1,1_0"],
        ["--guidance-interval", "nan,1"],
        ["--classes", "1,2.0"],
        ["--seeds", "\u0661"],
    ],
)
def test_dip_sample_takes_what_the_api_takes(args, no_sampling, tmp_path):
    code, err = run(cli.sample_main, *args, "--out", tmp_path / "o.npz")
    one_line(code, err, 2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["trt", "--opt-level", "3.0"],
        ["trt", "--batch", "1,2_0,4"],
        ["schedule", "--nfe", "1_5"],
        ["schedule", "--band", "1_5,2"],
        ["schedule", "--cfg", "1e999"],
    ],
)
def test_dip_export_takes_what_the_api_takes(args, tmp_path):
    code, err = run(cli.export_main, *args)
    one_line(code, err, 2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [(["schedule", "--output", "f.safetensors", "--cfg", "1.5", "--band", "3,4"], "leaves out --cfg 1.5"),
     (["onnx", "--precision", "fp32", "--output-dir", "x", "--target", "onnx", "--image-size", "3_2"], "")],
)  # fmt: skip
def test_contradicting_export_options_are_refused_before_work(args, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.export_main, *args)
    one_line(code, err, 2, words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["onnx:", "torch:", " : "])
def test_a_backend_with_an_empty_precision_is_refused(text):
    from dip_export.runtime.backends import BackendSpec

    with pytest.raises(UsageError):
        BackendSpec.parse(text)
