"""Settings: every public entry takes exact values; nothing is read as a default, rounded, or crashes.

The validators in dip_export/settings.py are property-tested; the API and CLI surfaces that use
them are checked with values that used to pass (0 as "the default size", '3_2' as 32, a dict of
classes) or to crash (a list as a preset, an int as a device, a huge int as a guidance weight).
"""

from __future__ import annotations

import fractions

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export.errors import UsageError
from dip_export.generate import make_plan, parse_image_size, parse_int_list
from dip_export.settings import MAX_IMAGE_SIDE, device_name, finite_float, image_size, int_list, optional_callable

NOT_TEXT = st.one_of(
    st.integers(), st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2), st.binary(max_size=4)
)


@given(st.integers(min_value=-(10**400), max_value=10**400) | st.fractions())
def test_finite_float_never_crashes_on_big_or_exact_numbers(value):
    if isinstance(value, fractions.Fraction):  # an exact rational is no float: refused as Decimal is
        with pytest.raises(UsageError, match=r"must be a number, got fractions\.Fraction"):
            finite_float(value, "x", 0.0, 100.0)
        return
    try:
        number = finite_float(value, "x", 0.0, 100.0)
    except UsageError:
        assert not 0 <= value <= 100
    else:
        assert 0 <= number <= 100 and abs(number - float(value)) <= 1e-12 * max(1.0, abs(number))


@given(st.integers(1, MAX_IMAGE_SIDE), st.integers(1, MAX_IMAGE_SIDE))
def test_image_size_reads_ascii_digits_exactly(h, w):
    assert image_size(f"{h}x{w}") == (h, w)
    assert image_size(str(h)) == (h, h)
    assert image_size(h) == (h, h)
    assert image_size(np.int64(w)) == (w, w)


@given(st.text(max_size=12))
def test_image_size_text_is_digits_or_refused(text):
    try:
        h, w = image_size(text)
    except UsageError:
        return
    stripped = text.strip()
    assert all(part.isascii() and part.isdigit() for part in stripped.lower().split("x"))
    assert 1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE


@pytest.mark.parametrize(
    "value", ["3_2", "\u0663\u0662", "0", "", "32x", "x32", "32.0", "+32", "1e2", False, True, 32.0, (32.0, 32), (True, 32), None]
)
def test_image_size_refuses_lenient_forms(value):
    with pytest.raises(UsageError):
        parse_image_size(value)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=20))
def test_int_list_text_round_trip(values):
    assert parse_int_list(",".join(map(str, values)), "--seeds") == values


@pytest.mark.parametrize("text", ["3_2", "0x10", "\u0663", "1,,2", "1.0", " ", "1e3"])
def test_int_list_text_refuses_lenient_forms(text):
    with pytest.raises(UsageError):
        parse_int_list(text, "--seeds")


@pytest.mark.parametrize("values", [{1, 2}, {1: 2}, (i for i in [1]), "12", b"12", np.array([1.0, 2.0]), np.zeros((1, 2), int)])
def test_int_list_refuses_unordered_or_non_integer_collections(values):
    with pytest.raises(UsageError):
        int_list(values, "--classes", 0, 9)


@given(st.lists(st.integers(0, 9), min_size=1, max_size=10))
def test_int_list_takes_ordered_sequences_and_arrays_alike(values):
    expected = tuple(values)
    assert int_list(values, "c", 0, 9) == int_list(tuple(values), "c", 0, 9) == int_list(np.array(values), "c", 0, 9) == expected


def test_plan_refuses_a_set_of_classes():
    with pytest.raises(UsageError):
        make_plan(10, classes={1, 2}, seeds=[0, 1])


@given(NOT_TEXT)
def test_device_name_is_text_only(value):
    with pytest.raises(UsageError):
        device_name(value)


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_accepted(value):
    assert device_name(value) == value


@pytest.mark.parametrize("value", ["meta", "cpu:7", "cuda:x", "CUDA", " cpu", "cuda:0:1"])
def test_device_names_refused(value):
    with pytest.raises(UsageError):
        device_name(value)


def test_callable_checked_before_work():
    assert optional_callable(None, "callback") is None
    with pytest.raises(UsageError):
        optional_callable(5, "callback")


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=10**300, max_value=10**400) | st.sampled_from([fractions.Fraction(10**400, 3)]))
def test_sampler_settings_refuse_huge_numbers_in_one_line(value):
    from dip_export.sampling import SamplerSettings

    with pytest.raises(UsageError):
        SamplerSettings(cfg=value)


@settings(max_examples=40, deadline=None)
@given(value=st.sampled_from([np.True_, np.False_, np.int64(1), np.float32(1.0), np.uint8(3), fractions.Fraction(1, 2)]))
def test_a_refused_value_of_another_library_is_named_with_its_module(value: object) -> None:
    """numpy's bool refused where a Python bool is asked is never named "bool" (the message would contradict
    itself); every type outside the builtins is named with its module."""
    from dip_export.settings import trust_flag, type_name

    expected = f"{type(value).__module__}.{type(value).__qualname__}"
    assert type_name(value) == expected and "." in expected
    with pytest.raises(UsageError, match=f"got {expected}$"):
        trust_flag(value, "trust_checkpoint")
