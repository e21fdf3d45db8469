"""Settings given to a call are built again from their fields (`rules.checked_settings`): a subclass whose checks are
none, or an instance changed after it was made, is refused as the plain settings would be, before any work. A
decimal is an int, a float or a numpy float: a Fraction or Decimal is refused (`settings.finite_float`)."""

from __future__ import annotations

import dataclasses
import decimal
import fractions

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.errors import UsageError
from dip_export.sampling import SamplerSettings
from dip_export.sampling.rules import checked_settings
from dip_export.settings import finite_float

Unchecked = type("Unchecked", (SamplerSettings,), {"__post_init__": lambda self: None})
BAD = st.one_of(
    st.builds(lambda s: {"steps": s}, st.integers(-(10**6), 0)),
    st.builds(lambda c: {"cfg": c}, st.sampled_from([float("nan"), float("inf"), -1.0, 1e9])),
    st.builds(lambda m: {"method": m}, st.sampled_from(["", "nope", "EULER"])),
    st.builds(lambda s: {"shift": s}, st.sampled_from([0.0, -2.0, float("nan")])),
)


@given(BAD)
def test_a_subclass_or_a_changed_instance_is_checked_as_the_plain_settings(bad):
    with pytest.raises(UsageError) as plain:
        SamplerSettings(**bad)
    with pytest.raises(UsageError) as sub:
        checked_settings(Unchecked(**bad))
    changed = SamplerSettings()
    for name, value in bad.items():
        object.__setattr__(changed, name, value)
    with pytest.raises(UsageError) as again:
        checked_settings(changed)
    assert str(plain.value) == str(sub.value) == str(again.value)


@given(st.integers(2, 50), st.floats(1.0, 10.0))
def test_good_settings_come_back_equal_and_plain(steps, cfg):
    settings = checked_settings(Unchecked(steps=steps, cfg=cfg))
    assert type(settings) is SamplerSettings and dataclasses.astuple(settings) == dataclasses.astuple(
        SamplerSettings(steps=steps, cfg=cfg)
    )


@given(st.one_of(st.fractions(), st.decimals(allow_nan=False), st.complex_numbers(), st.text(max_size=3)))
def test_a_number_of_another_kind_is_no_decimal(value):
    with pytest.raises(UsageError, match="must be a number"):
        finite_float(value, "x", -1e300, 1e300)


@given(st.one_of(st.integers(-100, 100), st.floats(-100, 100), st.floats(-100, 100).map(np.float32)))
def test_ints_floats_and_numpy_floats_are_decimals(value):
    assert finite_float(value, "x", -200, 200) == float(value)


def test_the_call_and_generate_refuse_before_any_work():
    pipe = DiPPipeline.load(device="cpu")
    with pytest.raises(UsageError, match=r"steps must be in 1\.\."):
        pipe(classes=[1], seeds=[0], settings=Unchecked(steps=-4))
    with pytest.raises(UsageError, match=r"steps must be in 1\.\."):
        pipe.generate(pipe.plan([1], [0]), Unchecked(steps=-4))
    with pytest.raises(UsageError, match=r"guidance scale must be a number, got fractions\.Fraction"):
        pipe(classes=[1], seeds=[0], cfg=fractions.Fraction(3, 2), steps=2)
    with pytest.raises(UsageError, match=r"must be a number, got decimal\.Decimal"):
        pipe(classes=[1], seeds=[0], cfg=decimal.Decimal("1.5"), steps=2)
