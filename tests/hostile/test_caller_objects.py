"""Settings read a caller's objects through the builtin types' own slots: none of the caller's methods runs.

A subclass of int, float, str, list or tuple whose __repr__, __eq__, __ne__, __len__ or __iter__ raises (or lies)
is read as the plain value it holds, or refused with one line; an int too long for str() is named by its size;
a time grid is a list of numbers (no generator, text, set, mapping, Fraction or complex); a config is made from
a dict of field names.
"""

from __future__ import annotations

import fractions
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export.config import PRESETS, DiPConfig
from dip_export.errors import UsageError
from dip_export.sampling.rules import SamplerSettings, grid_times
from dip_export.settings import BuildSettings, exact_int, image_size, plain_value


class Boom(Exception):
    """Raised by a caller's method; a test fails if it ever escapes."""


def _boom(*_args, **_kwargs):
    raise Boom("a caller's method ran")


HOSTILE = {name: _boom for name in ("__repr__", "__str__", "__eq__", "__ne__", "__hash__", "__len__", "__iter__")}
HOSTILE |= {"__lt__": _boom, "__le__": _boom, "__gt__": _boom, "__ge__": _boom, "__format__": _boom}
HInt = type("HInt", (int,), dict(HOSTILE))
HFloat = type("HFloat", (float,), dict(HOSTILE))
HStr = type("HStr", (str,), dict(HOSTILE))
HList = type("HList", (list,), dict(HOSTILE))
HTuple = type("HTuple", (tuple,), dict(HOSTILE))
HKey = type("HKey", (str,), HOSTILE | {"__hash__": str.__hash__})  # a dict key must hash; nothing else runs


def _hostile(value):
    """The value wrapped in a hostile subclass of its own builtin type (items too)."""
    if type(value) is int:
        return HInt(value)
    if type(value) is float:
        return HFloat(value)
    if type(value) is str:
        return HStr(value)
    if type(value) is list:
        return HList(_hostile(v) for v in value)
    if type(value) is tuple:
        return HTuple(_hostile(v) for v in value)
    return value


VALUES = st.recursive(
    st.integers(min_value=-(10**5000), max_value=10**5000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=60)
    | st.booleans()
    | st.none(),
    lambda inner: st.lists(inner, max_size=12) | st.lists(inner, max_size=12).map(tuple),
    max_leaves=30,
)


@settings(max_examples=300)
@given(VALUES)
def test_plain_value_is_short_and_runs_no_method_of_the_value(value):
    for shown in (plain_value(value), plain_value(_hostile(value))):
        assert isinstance(shown, str) and len(shown) <= 43
    assert plain_value(_hostile(value)) == plain_value(value)


@settings(max_examples=200)
@given(st.builds(lambda e, m, sign: sign * m * 10**e, st.integers(30, 9000), st.integers(1, 10**6), st.sampled_from([1, -1])))
def test_an_int_beyond_any_limit_is_refused_by_its_size_not_its_digits(number):
    for value in (number, HInt(number)):
        with pytest.raises(UsageError) as err:
            exact_int(value, "--steps", 1, 1000)
        message = str(err.value)
        assert len(message) < 120
        digits = len(str(abs(number))) if abs(number) < 10**4000 else None  # str() refuses more digits
        assert ("a negative integer of" if number < 0 else "an integer of") in message
        if digits is not None:
            assert message.endswith(f" integer of {digits} digits")


@pytest.mark.parametrize("field", ["steps", "cache_interval"])
@pytest.mark.parametrize("number", [10**4301, -(10**9000), HInt(10**5000)], ids=["e4301", "-e9000", "hostile"])
def test_sampler_int_fields_refuse_ints_too_long_to_print(field, number):
    with pytest.raises(UsageError, match=r"integer of [0-9]+ digits"):
        SamplerSettings(**{field: number})


@pytest.mark.parametrize("number", [10**4400, HInt(2**20000)], ids=["e4400", "hostile"])
def test_image_size_refuses_ints_too_long_to_print(number):
    with pytest.raises(UsageError, match=r"integer of [0-9]+ digits"):
        image_size(number)


def test_a_duration_is_no_count():
    for value in (np.timedelta64(5, "s"), np.timedelta64(100)):
        with pytest.raises(UsageError, match="must be an integer"):
            exact_int(value, "--steps", 1, 1000)
        with pytest.raises(UsageError):
            SamplerSettings(steps=value)


@settings(max_examples=100)
@given(st.floats(0.0, 50.0), st.integers(1, 200))
def test_hostile_numbers_are_read_as_the_numbers_they_hold(cfg, steps):
    try:
        plain = SamplerSettings(cfg=cfg, steps=steps)
    except UsageError:  # e.g. guidance that no step of a 1-step grid reaches: refused alike
        with pytest.raises(UsageError):
            SamplerSettings(cfg=HFloat(cfg), steps=HInt(steps))
        return
    read = SamplerSettings(cfg=HFloat(cfg), steps=HInt(steps))
    assert (type(read.cfg), type(read.steps)) == (float, int)
    assert (read.cfg, read.steps) == (plain.cfg, plain.steps)


def test_hostile_values_out_of_range_are_refused_without_running_their_methods():
    with pytest.raises(UsageError):
        SamplerSettings(cfg=HFloat(-1.0))
    with pytest.raises(UsageError):
        SamplerSettings(steps=HInt(0))
    with pytest.raises(UsageError):
        image_size(HInt(0))
    with pytest.raises(UsageError):
        SamplerSettings(method=HStr("no-such-solver"))
    with pytest.raises(UsageError, match="hidden_size"):
        DiPConfig(hidden_size=HInt(64))  # a config's fields are exact ints: the subclass is named, not shown


@settings(max_examples=100)
@given(st.sampled_from(["fp32", "fp16", "bf16", "int8"]), st.integers(1, 30))
def test_build_settings_keep_plain_values_only(precision, opset):
    try:
        expected = BuildSettings(precision=precision, opset=opset)
    except UsageError:
        with pytest.raises(UsageError):
            BuildSettings(precision=HStr(precision), opset=HInt(opset))
        return
    built = BuildSettings(precision=HStr(precision), opset=HInt(opset))
    assert (type(built.precision), type(built.opset)) == (str, int)
    assert built == expected


class LyingStr(str):
    """Equal to every text: a set or `in` test through its own __eq__ would take it for any precision."""

    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


def test_a_lying_equality_does_not_choose_a_setting():
    with pytest.raises(UsageError, match="--precision"):
        BuildSettings(precision=LyingStr("nonsense"))
    with pytest.raises(UsageError, match="sampler must be one of"):
        SamplerSettings(method=LyingStr("nonsense"))


GOOD_GRID = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "grid",
    [
        (t for t in GOOD_GRID),  # a generator: read once, gone
        "0,0.5,1",
        b"\x00\x01",
        {0.0: 1, 1.0: 2},
        set(GOOD_GRID),
        frozenset(GOOD_GRID),
        [fractions.Fraction(i, 4) for i in range(5)],
        [complex(t) for t in GOOD_GRID],
        [False, True],
        [[0.0], [1.0]],
        ["0", "1"],
        itertools.count(),
        range(10**12),
        np.zeros((2, 3)),
        42,
        [0.0, float("nan"), 1.0],
        [0.0, 1e300, 1.0],
        [0.0] * 100_000,
    ],
    ids=lambda g: type(g).__name__,
)
def test_a_time_grid_is_a_bounded_list_of_numbers(grid):
    with pytest.raises(UsageError):
        SamplerSettings(steps=4, grid=grid)


def test_a_grid_list_subclass_is_read_through_lists_own_slots():
    read = SamplerSettings(steps=4, grid=HList(HFloat(t) for t in GOOD_GRID))
    assert read.grid == tuple(GOOD_GRID) and all(type(t) is float for t in read.grid)
    assert grid_times(HTuple(GOOD_GRID)) == tuple(GOOD_GRID)
    assert grid_times(np.array(GOOD_GRID, dtype=np.float32)) == tuple(GOOD_GRID)


@pytest.mark.parametrize("data", [None, [("hidden_size", 64)], "hidden_size=64", {1: 2}, {b"depth": 2}, {HKey("x"): 1}])
def test_a_config_is_made_from_a_dict_of_field_names(data):
    with pytest.raises(UsageError) as err:
        DiPConfig.from_dict(data)
    assert len(str(err.value)) < 200


def test_a_config_key_is_exact_text():
    assert DiPConfig.from_dict({"depth": 2}).depth == 2
    with pytest.raises(UsageError, match="unknown DiPConfig fields: 'depth'"):
        DiPConfig.from_dict({HKey("depth"): 2})  # a subclass key is named, never compared


@pytest.fixture(scope="module")
def demo():
    from dip_export import DiPPipeline

    return DiPPipeline.load(batch_size=2)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=3), st.sampled_from([HList, HTuple]))
def test_a_call_counts_a_hostile_list_by_its_builtin_length(demo, classes, kind):
    seeds = list(range(len(classes)))
    expected = demo(classes=classes, seeds=seeds, steps=2)
    images = demo(classes=kind(HInt(c) for c in classes), seeds=kind(HInt(s) for s in seeds), steps=2)
    assert images.shape == expected.shape == (len(classes), 32, 32, 3)
    assert np.array_equal(images, expected)


def test_a_lying_length_does_not_size_the_memory_check(demo):
    class Huge(list):
        def __len__(self):
            return 10**7

    assert demo(classes=Huge([1]), seeds=[0], steps=2).shape == (1, 32, 32, 3)
    with pytest.raises(UsageError, match="number of classes/seeds must be in"):
        demo(classes=range(10**40), seeds=[0], steps=2)  # a range past any limit, measured without len()


def test_load_reads_a_preset_revision_and_trust_flag_as_plain_values():
    from dip_export import DiPPipeline

    pipe = DiPPipeline.load(preset=HStr("dip-s-16"), image_size=32, batch_size=1)
    assert pipe.config == PRESETS["dip-s-16"]
    with pytest.raises(UsageError, match="revision"):
        DiPPipeline.load(revision=HStr("main"))  # no Hub name: refused, and the text read without its methods
    for flag in ("no", 1, None, HInt(1)):
        with pytest.raises(UsageError, match="trust_checkpoint"):
            DiPPipeline.load(trust_checkpoint=flag)


@pytest.mark.parametrize(("args", "kwargs"), [((None, "x"), {}), ((), {"foo": 1}), ((), {"steps": 2, "nope": HInt(1)})])
def test_load_refuses_arguments_it_does_not_have_in_one_line(args, kwargs):
    from dip_export import DiPPipeline

    with pytest.raises(UsageError, match=r"DiPPipeline\.load takes the model and keyword settings") as err:
        DiPPipeline.load(*args, **kwargs)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("side", [10**30, 10**5000, HInt(10**40)], ids=["e30", "e5000", "hostile"])
def test_a_huge_image_size_reads_as_one_sentence(demo, side):
    with pytest.raises(UsageError) as err:
        demo(classes=[1], seeds=[0], steps=2, image_size=side)
    assert "with a side that is an integer of" in str(err.value) and "digitsx" not in str(err.value)
