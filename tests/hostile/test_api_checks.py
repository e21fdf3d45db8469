"""The API's own checks go through the shared validators: `check_budget`'s arguments, callbacks' arities, numpy
integers (no wrap-around) and decimals that underflow to 0.0.

The validators in dip_export/settings.py are property-tested; the pipeline and the CLI are checked with the values
that used to pass (a uint8 seed, batch 0, a one-argument progress callback, --cfg 1e-400) or to crash.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import DEMO_CHECKPOINT
from dip_export.errors import ExportError, UsageError
from dip_export.sampling import SamplerSettings
from dip_export.settings import _DECIMAL_TEXT, MAX_SEED, decimal_text, exact_int, finite_float, optional_callable
from tests.test_hostile import one_line, run

INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
FLOAT_DTYPES = (np.float16, np.float32, np.float64, np.longdouble)


@pytest.fixture(scope="module")
def pipe():
    return DiPPipeline.load(device="cpu")


# ------------------------------------------------------------------ plain Python numbers


@st.composite
def numpy_ints(draw, lo: int | None = None):
    dtype = draw(st.sampled_from(INT_DTYPES))
    info = np.iinfo(dtype)
    return dtype(draw(st.integers(max(int(info.min), lo) if lo is not None else int(info.min), int(info.max))))


@given(numpy_ints())
def test_exact_int_returns_a_plain_int_for_every_numpy_integer(value):
    number = exact_int(value, "x", -(2**64), 2**64)
    assert type(number) is int and number == int(value)


@given(st.sampled_from(FLOAT_DTYPES), st.floats(-100.0, 100.0))
def test_finite_float_returns_a_plain_float(dtype, value):
    given_value = dtype(value)
    number = finite_float(given_value, "x", -100.0, 100.0)
    assert type(number) is float and number == float(given_value)


@settings(max_examples=40)
@given(numpy_ints(lo=0).filter(lambda v: int(v) <= MAX_SEED - 20), st.integers(1, 20))
def test_a_numpy_seed_of_any_integer_dtype_does_not_wrap(pipe, seed, count):
    plan = pipe.plan(num_samples=count, seed=seed)
    assert plan.seeds == list(range(int(seed), int(seed) + count))
    assert all(type(s) is int for s in plan.seeds)
    with_classes = pipe.plan(classes=[1] * count, seed=seed)
    assert with_classes.seeds == plan.seeds


def test_a_uint8_seed_near_its_top_does_not_wrap(pipe):
    from dip_export.generate import make_plan

    assert pipe.plan(num_samples=10, seed=np.uint8(250)).seeds == list(range(250, 260))
    for kwargs in ({"num_samples": 10}, {"classes": [1] * 10}):  # the plan maker every surface uses, both forms
        assert make_plan(10, seed=np.uint8(250), **kwargs).seeds == list(range(250, 260))


# ------------------------------------------------------------------ decimals that underflow


@given(st.integers(1, 10**10), st.integers(-9999, -340))
def test_decimal_text_refuses_a_nonzero_value_that_reads_as_zero(mantissa, exponent):
    for text in (f"{mantissa}e{exponent}", f"-{mantissa}E{exponent}", f"0.{mantissa}e{exponent}"):
        with pytest.raises(UsageError, match=r"^--cfg is too small to be a float"):
            decimal_text(text, "--cfg")


@given(st.from_regex(_DECIMAL_TEXT, fullmatch=True))
def test_decimal_text_never_turns_a_nonzero_number_into_zero(text):
    try:
        number = decimal_text(text, "--cfg")
    except UsageError as error:
        assert "\n" not in str(error) and str(error).startswith("--cfg ")
        return
    zero = re.search("[1-9]", re.split("[eE]", text)[0]) is None
    assert number == float(text) and (number == 0.0) == zero


@given(st.integers(330, 4000))
def test_finite_float_refuses_a_longdouble_that_underflows(exponent):
    value = np.longdouble(f"1e-{exponent}")
    if value == 0:  # below this platform's long double too: a zero, taken as one
        assert finite_float(value, "cfg", 0.0, 100.0) == 0.0
        return
    with pytest.raises(UsageError, match=r"^cfg is too small to be a float"):
        finite_float(value, "cfg", 0.0, 100.0)


@given(st.floats(min_value=5e-324, max_value=1e-300, allow_subnormal=True))
def test_a_tiny_float_that_is_a_float_is_taken_as_itself(value):
    assert finite_float(value, "shift", 0.0, 1000.0, above_lo=True) == value  # a subnormal is a float, not a zero
    assert decimal_text(repr(value), "--shift") == value


@pytest.mark.parametrize(
    ("option", "value"), [("--cfg", "1e-400"), ("--shift", "1e-400"), ("--shift", "-1e-400"), ("--cfg", "0.5e-330")]
)
def test_cli_refuses_a_decimal_that_underflows(tmp_path, no_sampling, option, value):
    code, err = run(cli.sample_main, "--steps", "2", option, value, "--out", tmp_path / "o.npz")
    one_line(code, err, 2, option, "too small to be a float", value)
    assert "got 0.0" not in err


def test_cli_names_the_underflow_inside_a_list(tmp_path, no_sampling):
    code, err = run(cli.sample_main, "--steps", "2", "--guidance-interval", "1e-400,0.5", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "--guidance-interval", "too small to be a float", "1e-400")


# ------------------------------------------------------------------ callables


def _function(required: int, optional: int, star: bool):
    names = [f"a{i}" for i in range(required)] + [f"b{i}=0" for i in range(optional)] + (["*rest"] if star else [])
    return eval(f"lambda {', '.join(names)}: None")  # a signature made to order from ints, no input


@given(st.integers(0, 3), st.integers(0, 2), st.booleans(), st.integers(0, 3))
def test_optional_callable_takes_exactly_the_functions_that_can_be_called_so(required, optional, star, args):
    value = _function(required, optional, star)
    fits = required <= args and (star or args <= required + optional)
    if fits:
        assert optional_callable(value, "callback", args=args) is value
    else:
        with pytest.raises(UsageError, match=f"^callback must take {args} positional argument"):
            optional_callable(value, "callback", args=args)


class NoCall:
    __call__ = None  # callable() says True; calling it fails


class NumberCall:
    __call__ = 5


class Counter:
    def __call__(self, done, total):
        pass


@pytest.mark.parametrize("value", [NoCall(), NumberCall(), 5, "print"])
def test_optional_callable_refuses_what_cannot_be_called(value):
    with pytest.raises(UsageError, match="must be callable or None"):
        optional_callable(value, "callback", args=2)


def test_optional_callable_takes_a_callable_without_a_signature_and_a_callable_object():
    assert optional_callable(max, "callback", args=2) is max  # no signature to read (a builtin): taken
    counter = Counter()
    assert optional_callable(counter, "callback", args=2) is counter
    with pytest.raises(UsageError, match=r"^on_step must take 1 positional argument"):
        optional_callable(counter, "on_step", args=1)


@pytest.mark.parametrize("callback", [NoCall(), NumberCall(), lambda done: None, lambda: None, lambda a, b, c: None])
def test_call_refuses_a_callback_it_cannot_call_before_any_step(pipe, no_sampling, callback):
    with pytest.raises(UsageError, match=r"^callback must"):
        pipe(classes=[1], seeds=[1], steps=2, callback=callback)


@pytest.mark.parametrize("on_step", [NoCall(), lambda: None, lambda a, b: None])
def test_generate_refuses_an_on_step_it_cannot_call_before_any_step(pipe, no_sampling, on_step):
    with pytest.raises(UsageError, match=r"^on_step must"):
        pipe.generate(pipe.plan([1], [1]), pipe.sampler_settings(steps=2), on_step=on_step)


def test_callbacks_are_called_as_checked(pipe):
    seen: list[tuple[int, ...]] = []
    pipe(classes=[1, 2], seeds=[1, 2], steps=2, batch_size=1, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    steps: list[int] = []
    pipe.generate(pipe.plan([1], [1]), pipe.sampler_settings(steps=2), on_step=steps.append)
    assert len(steps) == 2


# ------------------------------------------------------------------ check_budget


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"samples": -1}, "samples"),
        ({"samples": 0}, "samples"),
        ({"samples": 2.0}, "samples"),
        ({"samples": "3"}, "samples"),
        ({"samples": True}, "samples"),
        ({"batch": 0}, "batch"),
        ({"batch": -2}, "batch"),
        ({"batch": 1.5}, "batch"),
        ({"size": (-1, -1)}, "image size"),
        ({"size": (float("nan"), 32)}, "image size"),
        ({"size": 0}, "image size"),
        ({"size": "32_0"}, "image size"),
        ({"size": 12}, "image size"),  # not a multiple of the patch size, as generate refuses it
        ({"backend": 1}, "backend"),
        ({"backend": "bogus"}, "backend"),
        ({"backend": "torch:int3"}, "backend"),
        ({"backend": ""}, "backend"),
    ],
)
def test_check_budget_refuses_each_bad_argument_in_one_line(pipe, kwargs, word):
    with pytest.raises(UsageError, match=word) as caught:
        pipe.check_budget(**kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"samples": np.int64(3)}, {"batch": np.uint8(2)}, {"size": 32}, {"size": "32x32"}, {"size": [32, 32]},
     {"backend": "auto"}, {"backend": "torch"}, {"backend": "torch:fp32"}],
)  # fmt: skip
def test_check_budget_takes_what_the_calls_take(pipe, kwargs):
    pipe.check_budget(**kwargs)


@settings(max_examples=40)
@given(st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=4) | st.none(), st.integers(-(2**65), 2**65) | st.none())
def test_check_budget_raises_only_usage_errors(pipe, samples, batch):
    try:
        pipe.check_budget(samples if samples is not None else 1, batch)
    except UsageError as error:
        assert "\n" not in str(error)


# ------------------------------------------------------------------ a caller's object whose own methods raise

DUNDERS = ("__eq__", "__ne__", "__hash__", "__index__", "__int__", "__float__", "__bool__", "__len__", "__iter__",
           "__getitem__", "__str__", "__repr__", "__format__", "__fspath__", "__getattr__", "__lt__", "__le__")  # fmt: skip


class Raised(Exception):
    pass


def _hostile(names: list[str], callable_: bool = False) -> object:
    """An object whose `names` each raise (the same class, whatever is asked of it); callable with two positionals."""

    def boom(self, *args):
        raise Raised(args)

    body: dict[str, object] = dict.fromkeys(names, boom)
    if "__signature__" in names:
        body["__signature__"] = property(boom)
    if callable_:
        body["__call__"] = lambda self, done, total: None
    return type("Hostile", (), body)()


HOSTILE = st.lists(st.sampled_from(DUNDERS), min_size=1, max_size=4, unique=True).map(_hostile)


@settings(max_examples=60, deadline=None)
@given(HOSTILE, st.sampled_from(["samples", "batch", "size", "backend"]))
def test_check_budget_refuses_an_object_whose_own_methods_raise(pipe, value, name):
    with pytest.raises(UsageError):  # never the caller's own exception: the type is checked before anything is asked
        pipe.check_budget(**{name: value})


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([*DUNDERS, "__signature__"]), min_size=1, max_size=4, unique=True))
def test_a_callback_whose_signature_cannot_be_read_is_taken_as_it_is(names):
    callback = _hostile(names, callable_=True)
    assert optional_callable(callback, "callback", args=2) is callback


# ------------------------------------------------------------------ a caller's str subclass, sequence or long name


class _Text(str):
    """Text whose own methods all raise: only str's slots may read it."""

    def __eq__(self, other):
        raise Raised("eq")

    __hash__ = str.__hash__

    def __getattribute__(self, name):
        if name.startswith("__") and name.endswith("__"):
            return super().__getattribute__(name)
        raise Raised(name)


@pytest.mark.parametrize(
    "call",
    [lambda p: p.check_budget(1, backend=_Text("torch")), lambda p: DiPPipeline.load(backend=_Text("torch")),
     lambda p: DiPPipeline.load(preset=_Text("dip-s-16")), lambda p: DiPPipeline.load(device=_Text("cpu")),
     lambda p: p(classes=[1], seeds=[0], steps=1, sampler=_Text("euler")),
     lambda p: p(classes=[1], seeds=[0], steps=1, image_size=_Text("32"))],
)  # fmt: skip
def test_a_str_subclass_is_read_as_plain_text(pipe, call):
    call(pipe)  # its own methods never run: the same as the plain text


@pytest.mark.parametrize("length", [-1, 2**64, 0])
def test_a_sequence_whose_own_len_fails_or_lies_is_read_once_and_bounded(pipe, no_sampling, length):
    class Lying(list):
        def __len__(self):
            return length

    class Unreadable(Sequence):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise Raised(i)

    for classes in (Lying([1]), Unreadable()):
        with pytest.raises((UsageError, AssertionError)) as caught:  # AssertionError: no_sampling, the plan was taken
            pipe(classes=classes, seeds=[0], steps=1)
        assert caught.type is not AssertionError or isinstance(classes, Lying), caught.value


@settings(max_examples=40)
@given(st.integers(256, 600), st.integers(0, 2), st.sampled_from(["a", "é", "x.pt"]))
def test_a_model_name_longer_than_the_file_system_takes_is_a_usage_error(length, depth, piece):
    name = "/".join(["d"] * depth + [(piece * length)[:length]])
    with pytest.raises(UsageError, match="longer than the file system allows"):
        DiPPipeline.load(name)


# ------------------------------------------------------------------ numbers, sequences and paths of a caller's own type


def _int_kind(behaviour: str) -> type:
    def boom(self, *args):
        raise Raised(behaviour)

    methods = {"__int__": boom, "__index__": boom, "__float__": boom} if behaviour == "raise" else {
        "__int__": lambda self: 3, "__index__": lambda self: 3, "__float__": lambda self: 3.0}  # fmt: skip
    return type("CallerInt", (int,), methods)


@given(st.integers(-(10**6), 10**6), st.sampled_from(["raise", "lie"]))
def test_an_int_subclass_is_read_as_the_int_it_holds(number, behaviour):
    value = _int_kind(behaviour)(number)
    assert exact_int(value, "x", -(10**6), 10**6) == number and type(exact_int(value, "x", -(10**6), 10**6)) is int
    assert finite_float(value, "x", -(10**6), 10**6) == float(number)


@given(st.floats(-100, 100), st.sampled_from(["raise", "lie"]))
def test_a_float_subclass_is_read_as_the_float_it_holds(number, behaviour):
    def boom(self, *args):
        raise Raised(behaviour)

    kind = type("CallerFloat", (float,), {"__float__": boom if behaviour == "raise" else (lambda self: 0.5)})
    assert finite_float(kind(number), "x", -100.0, 100.0) == number


def _sequence_kind(base: type, broken: str) -> type:
    def boom(self, *args):
        raise Raised(broken)

    return type(f"Caller{base.__name__}", (base,), {broken: boom})


@pytest.mark.parametrize("base", [list, tuple])
@pytest.mark.parametrize("broken", ["__len__", "__iter__", "__getitem__"])
def test_a_list_or_tuple_subclass_is_read_through_its_own_slots(pipe, base, broken):
    kind = _sequence_kind(base, broken)
    images = pipe(classes=kind([1]), seeds=kind([0]), steps=2, image_size=kind([32, 32]), guidance_interval=kind([0.1, 1.0]))
    assert images.shape == (1, 32, 32, 3)
    pipe.check_budget(1, size=kind([32, 32]))
    pipe.engine(kind([32, 32]))


@pytest.mark.parametrize("value", [bytearray(b"\x07"), memoryview(b"\x01"), b"\x01", "1"])
def test_bytes_like_values_are_no_class_list(pipe, no_sampling, value):
    with pytest.raises(UsageError, match="must be a list of integers"):
        pipe(classes=value, seeds=[0], steps=1)


def test_a_path_like_that_gives_no_path_and_a_console_that_is_none_are_usage_errors():
    class Broken(os.PathLike):
        def __fspath__(self):
            raise Raised("fspath")

    class Nothing(os.PathLike):
        def __fspath__(self):
            return None

    for model in (Broken(), Nothing()):
        with pytest.raises(UsageError, match="gives no path"):
            DiPPipeline.load(model)

    class Asked:
        def __getattr__(self, name):
            raise Raised(name)

    with pytest.raises(UsageError, match="console must be a rich Console"):
        DiPPipeline.load(console=Asked())


def test_a_path_like_is_read_once():
    class Changing(os.PathLike):
        calls = 0

        def __fspath__(self):
            Changing.calls += 1
            return str(DEMO_CHECKPOINT) if Changing.calls == 1 else "/nowhere/else.pt"

    assert DiPPipeline.load(Changing(), device="cpu").name == "dip-digits" and Changing.calls == 1


def test_settings_whose_class_lies_are_refused(pipe, no_sampling):
    class Lie:
        @property
        def __class__(self):
            return SamplerSettings

    with pytest.raises(UsageError, match="settings must be a SamplerSettings"):
        pipe(classes=[1], seeds=[0], settings=Lie())


@pytest.mark.parametrize("where", ["/", ".", "parent", "itself"])
def test_a_folder_with_no_manifest_is_no_export_wherever_the_owner_key_lies(tmp_path, monkeypatch, where):
    """The owner key's place is checked against an export folder only: a folder with no manifest holding the key
    (the root, the working folder) is named as no export, not sent to move the key."""
    folder = tmp_path / "plain"
    (folder / "sub").mkdir(parents=True)
    monkeypatch.setenv("DIP_EXPORT_KEY_FILE", str(folder / "sub" / "owner.key"))
    monkeypatch.chdir(folder)
    given = {"/": "/", ".": ".", "parent": str(folder), "itself": str(folder / "sub")}[where]
    with pytest.raises(ExportError) as caught:
        DiPPipeline.load(given)
    assert str(caught.value) == f"{given} is not an export folder (no manifest.json); run `dip-export onnx` first"
    if where != "/":  # every output lies inside the root: refused as such first
        code, err = run(cli.sample_main, given, "--out", tmp_path / "x.npz")
        one_line(code, err, 1, "is not an export folder (no manifest.json)")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_manifest_that_is_no_regular_file_is_named_as_such(tmp_path, kind):
    import os

    folder = tmp_path / "exp"
    folder.mkdir()
    os.mkfifo(folder / "manifest.json") if kind == "fifo" else (folder / "manifest.json").mkdir()
    with pytest.raises(ExportError, match=r"manifest.json: not a regular file; an export's manifest.json is one$"):
        DiPPipeline.load(folder)
    code, err = run(cli.sample_main, folder, "--out", tmp_path / "x.npz")
    one_line(code, err, 1, "manifest.json: not a regular file")
