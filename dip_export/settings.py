"""Settings as objects: frozen dataclasses that validate themselves on construction.

Every limit lives here, once, and every public entry builds these objects: the CLI from its
options, `DiPPipeline.load` / `__call__` from their arguments, stored sampling defaults (safetensors
metadata, manifests) from their JSON. Types are exact: a bool is a bool (no truthy strings), an
integer is an int (no float seeds, no bools), a number is a finite int or float.

The sampler's own settings object is `dip_export.sampling.SamplerSettings` (the sampler is pure
math and owns it); it validates its fields with the checks and limits below.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dip_export.errors import UsageError
from dip_export.runtime.catalog import CATALOG
from dip_export.text import visible

# Upper bounds checked before anything is allocated (a file or an argument cannot ask for terabytes).
MAX_STEPS = 10_000  # sampler steps (network evaluations for all but Heun)
MAX_IMAGE_SIDE = 4096  # pixels per side
MAX_SEED = 2**63 - 1  # seeds are 0..MAX_SEED (torch.Generator().manual_seed takes them all)
MAX_SAMPLES = 10_000_000  # images per run
MAX_BATCH = 4096  # images per sampler batch
MAX_CFG = 100.0  # guidance weight
MAX_SHIFT = 1000.0  # time shift
MAX_CLASS = 2**31 - 1  # class labels (a model's own range is checked against its config)
MAX_SHARD_BATCHES = 10_000  # batches per resumable shard
MAX_REPEATS = 1000  # timed repeats (and warm-up runs) of a measurement


def exact_int(value: Any, what: str, lo: int, hi: int) -> int:
    """An int in lo..hi: numpy integers pass, bools, floats and strings do not.

    Always a plain Python int: arithmetic on a numpy integer (a uint8 seed + i) would wrap around silently."""
    number = plain_int(value)
    if number is None:
        raise UsageError(f"{what} must be an integer, got {type_name(value)}")
    if not lo <= number <= hi:
        raise UsageError(f"{what} must be in {lo}..{hi}, got {int_text(number)}")
    return number


def _numpy_own(value: Any, kind: type) -> bool:
    """A scalar of numpy's own `kind` (np.integer, np.floating), not a caller's subclass of one."""
    return issubclass(type(value), kind) and type(value).__module__ == "numpy"


def plain_int(value: Any) -> int | None:
    """An int or a numpy integer as a plain int, read through int's own slot or numpy's (no method of a caller's
    subclass runs: its own __int__ or __index__ may raise or lie); None for anything else, bools included."""
    kind = type(value)
    if kind is bool or _numpy_own(value, np.bool_):
        return None
    if issubclass(kind, int):
        return int.__int__(value)
    if _numpy_own(value, np.timedelta64):  # numpy files it under integer; a duration is no count
        return None
    if _numpy_own(value, np.integer):
        return int(value)
    return None


def plain_float(value: Any) -> float | None:
    """An int, a float, or a numpy integer or float, as a plain float read through the builtin types' own slots
    (or numpy's); None for anything else (bools, strings, Fraction, Decimal, a caller's numeric class)."""
    number = plain_int(value)
    if number is not None:
        try:
            return float(number)
        except OverflowError:  # an int beyond float range
            return math.inf if number > 0 else -math.inf
    if type(value) is not bool and issubclass(type(value), float):
        return float.__float__(value)
    if _numpy_own(value, np.floating):
        return float(value)
    return None


def finite_float(value: Any, what: str, lo: float, hi: float, *, above_lo: bool = False) -> float:
    """A finite number in lo..hi (above lo when `above_lo`): ints and floats pass, bools and strings do not."""
    number = plain_float(value)  # a plain float: no numpy float arithmetic downstream
    if number is None:
        raise UsageError(f"{what} must be a number, got {type_name(value)}")  # a Fraction or Decimal is no float
    # a longdouble 1e-400 is not the zero it would silently become (numpy's own types only: no caller code runs)
    if number == 0 and _numpy_own(value, np.floating) and bool(value != 0):
        raise UsageError(f"{what} is too small to be a float (nonzero, nearer 0 than any float), got {plain_value(value)}")
    if not (math.isfinite(number) and (lo < number if above_lo else lo <= number) and number <= hi):
        raise UsageError(f"{what} must be in {lo:g}..{hi:g}{f' (above {lo:g})' if above_lo else ''}, got {number}")
    return number


def exact_bool(value: Any, what: str) -> bool:
    """True or False only: "no", 0 and None are not booleans."""
    if type(value) is not bool and not isinstance(value, np.bool_):
        raise UsageError(f"{what} must be True or False, got {type_name(value)}")
    return bool(value)


def trust_flag(value: Any, what: str = "trust_checkpoint") -> bool:
    """The flag that lets a pickle run code: Python's own True or False and nothing else (no numpy or torch bool,
    no 1, no "yes"), so that nothing but a deliberate `True` ever grants it."""
    if type(value) is not bool:
        raise UsageError(f"{what} must be True or False (a Python bool), got {type_name(value)}")
    return value


def type_name(value: Any) -> str:
    """A value's type as a message names it: a builtin's bare name (int, str), any other's with its module
    (numpy.bool, numpy.int64, decimal.Decimal), so that a numpy bool is never named "bool" where a bool is refused."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def exact_str(value: Any) -> Any:
    """A str subclass as a plain str, read through str's own slot (no method of the subclass runs); anything else
    as it is. Every text check starts here, so a caller's object is never compared, hashed or called."""
    return str.__str__(value) if issubclass(type(value), str) else value


def optional_bool(value: Any, what: str) -> bool | None:
    """None (not given: the default), True or False; "no", 0 and 1 are none of them."""
    if value is not None and type(value) is not bool and not isinstance(value, np.bool_):
        raise UsageError(f"{what} must be True, False or None, got {type_name(value)}")
    return None if value is None else bool(value)


def one_of(value: Any, what: str, choices: Sequence[str]) -> str:
    value = exact_str(value)
    if not isinstance(value, str) or value not in choices:
        shown = plain_value(value, 60) if isinstance(value, str) else type_name(value)
        raise UsageError(f"{what} must be one of {', '.join(choices)}, got {shown}")
    return value


def list_items(text: Any, what: str) -> list[str]:
    """'a,b' -> ['a', 'b'], each item as typed (" a" stays " a"); no item may be empty (`a,,b`, `a,`, `,a`, ``)."""
    text = exact_str(text)
    if not isinstance(text, str):
        raise UsageError(f"{what} must be comma-separated names, got {type_name(text)}")
    items = text.split(",")
    if not all(items):
        where = "is empty" if text == "" else "holds an empty item (two commas, or one at an end)"
        raise UsageError(f"{what} {where}; name each item once")
    return items


def choice_list(text: Any, what: str, choices: Sequence[str]) -> list[str]:
    """'a,b' -> ['a', 'b']: a non-empty comma-separated list of known names (`list_items`), each once."""
    names = list_items(text, what)  # " a" is refused below like any unknown name
    for name in names:
        one_of(name, what, choices)
    if len(set(names)) != len(names):
        raise UsageError(f"{what} names {next(n for n in names if names.count(n) > 1)} twice; name each once")
    return names


def int_list(values: Any, what: str, lo: int, hi: int) -> tuple[int, ...]:
    """A non-empty ordered sequence (list, tuple, range, 1-D array) of at most MAX_SAMPLES ints in lo..hi.

    Sets, dicts and generators are refused: their order (hence which seed goes with which class) is not the caller's.
    """
    items = values if type(values) is range else plain_items(values, what, MAX_SAMPLES)  # numpy ints become ints
    if items is None:  # text and bytes-like values too: b"\x07" is no list of classes
        raise UsageError(f"{what} must be a list of integers, got {type_name(values)}")
    values = items
    if not 1 <= len(values) <= MAX_SAMPLES:
        shown = len(values) if len(values) <= MAX_SAMPLES else f"over {MAX_SAMPLES}"
        raise UsageError(f"{what} must hold 1..{MAX_SAMPLES} values, got {shown}")
    return tuple(exact_int(v, what, lo, hi) for v in values)


def image_side(value: Any, what: str) -> int:
    return exact_int(value, what, 1, MAX_IMAGE_SIDE)


# What every surface takes as an image size: N, "N" / "HxW", or (H, W) as a pipeline reports it.
ImageSize = int | str | tuple[int, int] | list[int]

_IMAGE_SIZE = re.compile(r"([0-9]{1,9})(?:[xX]([0-9]{1,9}))?")


def image_size(value: Any, what: str = "image size") -> tuple[int, int]:
    """An int N, text `N` / `HxW` (ASCII digits only) or a pair (H, W) of ints (the form a pipeline's own
    `image_size` takes: a tuple or list) -> (H, W), each side 1..MAX_IMAGE_SIDE. Bools and floats are refused."""
    value = exact_str(value)
    if isinstance(value, str):
        match = _IMAGE_SIZE.fullmatch(value)
        if match is None:
            raise UsageError(f"{what} must be N or HxW, got {plain_value(value)}")
        h, w = int(match.group(1)), int(match.group(2) or match.group(1))
    elif plain_int(value) is not None:
        h = w = plain_int(value)  # type: ignore[assignment]
    elif issubclass(type(value), tuple | list) and len(pair := plain_items(value, what, 2) or []) == 2:
        h, w = exact_int(pair[0], f"{what} height", 1, MAX_IMAGE_SIDE), exact_int(pair[1], f"{what} width", 1, MAX_IMAGE_SIDE)
    else:
        items = plain_items(value, what, 2) if issubclass(type(value), tuple | list) else None
        kind = type_name(value) + (f" of {len(items)}" if items is not None else "")
        raise UsageError(f"{what} must be an integer N, text N or HxW, or a pair (H, W) of integers, got {kind}")
    if min(h, w) < 1:
        raise UsageError(f"{what} must be N or HxW with positive sides, got {plain_value(value)}")
    if max(h, w) > MAX_IMAGE_SIDE:
        shown = f"{h}x{w}" if max(h, w) < 10**30 else f"with a side that is {int_text(max(h, w))}"
        raise UsageError(f"{what} {shown} exceeds the limit of {MAX_IMAGE_SIDE} pixels per side")
    return (h, w)


# Numbers typed as text (CLI options, comma lists): ASCII digits, no `_`, no `0x`, no other scripts' digits, no
# whitespace around them. No text value is trimmed anywhere: a list item, a name or a size with a space is refused.
_WHOLE_TEXT = re.compile(r"[+-]?[0-9]{1,40}")
_LONG_WHOLE_TEXT = re.compile(r"[+-]?[0-9]{41,}")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})(?:[eE][+-]?[0-9]{1,4})?")


class _TooSmall(UsageError):
    """A nonzero decimal that reads as 0.0: its own message, not a list's form (`number_list`)."""


def whole_text(text: Any, what: str) -> int:
    """An integer typed as text: `12`, `-3`, `+4`; not `1.0`, `1_0`, `1e3`, ` 3` or `０`."""
    if isinstance(text, str) and _LONG_WHOLE_TEXT.fullmatch(text):  # digits only, too many for any setting
        digits = len(text.lstrip("+-"))
        raise UsageError(f"{what} is a whole number of {digits} digits, beyond any limit of the tool")
    if not isinstance(text, str) or not _WHOLE_TEXT.fullmatch(text):
        raise UsageError(f"{what} must be a whole number, got {plain_value(text)}")
    return int(text)


def decimal_text(text: Any, what: str) -> float:
    """A finite number typed as text: `1.5`, `-2`, `.5`, `1e-3`; not `nan`, `inf`, `1e999` or `1_5`."""
    if not isinstance(text, str) or not _DECIMAL_TEXT.fullmatch(text):
        raise UsageError(f"{what} must be a finite decimal number, got {plain_value(text)}")
    number = float(text)
    if not math.isfinite(number):
        raise UsageError(f"{what} is beyond the range of a float, got {plain_value(text)}")
    nonzero = re.search("[1-9]", re.split("[eE]", text)[0]) is not None  # the digits, not the exponent
    if nonzero and number == 0:  # `1e-400` would silently read as 0.0 (a subnormal such as `5e-324` is a float)
        raise _TooSmall(f"{what} is too small to be a float (nonzero, nearer 0 than any float), got {plain_value(text)}")
    return number


def number_list(text: Any, what: str, parse: Callable[[Any, str], Any], count: int | None = None, form: str = "") -> list[Any]:
    """'a,b,c' -> [parse(a), ...] with `whole_text` or `decimal_text`; `count` items exactly when given."""
    if not isinstance(text, str):
        raise UsageError(f"{what} must be text, got {type_name(text)}")
    parts = text.split(",")  # " 1" is refused by `parse` like any text that is not a number
    if count is not None and len(parts) != count:
        raise UsageError(f"{what} must be {form or f'{count} comma-separated numbers'}, got {plain_value(text)}")
    if not any(parts):
        raise UsageError(f"{what} is empty")
    try:
        return [parse(part, what) for part in parts]
    except _TooSmall:
        raise  # the form is right: say what is wrong with the number
    except UsageError:
        kind = "integers" if parse is whole_text else "numbers"
        raise UsageError(f"{what} must be {form or f'comma-separated {kind}'}, got {plain_value(text)}") from None


def int_text(number: int) -> str:
    """An int as a message shows it: its digits, or its size where they would be too many to print (str() of an int
    of more than 4300 digits raises)."""
    if abs(number) < 10**30:
        return str(number)
    digits = int((abs(number).bit_length() - 1) * math.log10(2)) + 1  # exact or one short
    digits += abs(number) >= 10**digits
    return f"{'a negative' if number < 0 else 'an'} integer of {digits} digits"


def plain_value(value: Any, limit: int = 40) -> str:
    """A short form of a user's value for a message, made through the builtin types' own slots: no method of a
    caller's class runs (its __repr__ may raise or lie), and an object of another type is named by its type alone.
    Text is quoted with its control characters escaped (`messages.visible`, which printing leaves as it is): no
    exception carries one, and a value shows escaped once."""
    kind = type(value)
    if issubclass(kind, str):
        raw = str.__str__(value)
        text = visible(raw)
        return f"'{text}'" if len(text) + 2 <= limit else "'" + visible(raw, limit + 2)  # cut between escapes
    elif kind is bool or _numpy_own(value, np.bool_):
        text = repr(bool(value))
    elif plain_int(value) is not None:
        text = int_text(plain_int(value))  # type: ignore[arg-type]
    elif _numpy_own(value, np.floating):  # numpy's own text (a longdouble may be nearer 0 than any float)
        text = str(value)
    elif plain_float(value) is not None:
        text = float.__repr__(plain_float(value))  # type: ignore[arg-type]
    elif issubclass(kind, tuple | list):
        items = plain_items(value, "value", 8) or []
        inner = ", ".join(plain_value(v, limit) for v in items[:8]) + (", ..." if len(items) > 8 else "")
        text = f"({inner})" if issubclass(kind, tuple) else f"[{inner}]"
    else:
        text = f"a {kind.__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def name_text(name: Any, allowed: str = r"[A-Za-z0-9_]{1,40}") -> str:
    """A name from a file or a caller (a key, a setting's name) as a message shows it: as it is when short and plain
    (`allowed`), else as `plain_value` shows it (quoted, escaped, shortened)."""
    return name if isinstance(name, str) and re.fullmatch(allowed, name) else plain_value(name)


DEVICES = ("auto", "cpu", "cuda")
_CUDA_INDEX = re.compile(r"cuda:[0-9]{1,3}")


def device_name(value: Any) -> str:
    """auto, cpu, cuda or cuda:N (text only)."""
    value = exact_str(value)
    if not isinstance(value, str) or not (value in DEVICES or _CUDA_INDEX.fullmatch(value)):
        shown = plain_value(value) if isinstance(value, str) else type_name(value)
        raise UsageError(f"unknown device {shown}; use auto, cpu or cuda")
    return value


def optional_text(value: Any, what: str, max_len: int = 1024) -> str | None:
    """None, or a non-empty string of at most `max_len` characters (names, revisions, backends) that neither starts
    nor ends with whitespace (no value is trimmed: ` torch` is refused, as ` 3` is)."""
    if value is None:
        return None
    value = exact_str(value)
    if not isinstance(value, str) or not value or len(value) > max_len:
        shown = f"text of 1..{max_len} characters"
        got = type_name(value) if not isinstance(value, str) else f"{len(value)} characters"
        raise UsageError(f"{what} must be None or {shown}, got {got}")
    if value != value.strip():
        raise UsageError(f"{what} must not start or end with whitespace, got {plain_value(value)}")
    return value


def path_text(value: Any, what: str, kind: str = "a path") -> str:
    """A path a caller gives (str, or an os.PathLike whose `__fspath__` runs once and gives text): never empty, no
    NUL, at most 4096 characters; anything else, bytes too, is refused in one line (`what` names the argument,
    `kind` what it must be)."""
    if not issubclass(type(value), str | os.PathLike):
        raise UsageError(f"{what} must be {kind} (text), got {type_name(value)}")
    try:
        text = exact_str(value if issubclass(type(value), str) else os.fspath(value))
    except Exception:  # a PathLike whose own __fspath__ fails
        raise UsageError(f"{what} must be {kind}: this {type_name(value)} gives no path") from None
    if not isinstance(text, str) or not text or "\x00" in text or len(text) > 4096:
        raise UsageError(f"{what} must be {kind}: got no text, empty text, a NUL byte or over 4096 characters")
    return text


def optional_callable(value: Any, what: str, args: int | None = None) -> Any:
    """None, or something callable with `args` positional arguments (checked before the work, not at its first use:
    a wrong arity would otherwise fail with a TypeError after a step ran). `args` None: callability only.

    `callable()` alone is True for an instance whose class sets `__call__ = None`; the class's `__call__` is what a
    call runs. A callable with no signature to read (some builtins) is taken as it is."""
    if value is None:
        return None
    if not callable(value) or not callable(inspect.getattr_static(type(value), "__call__", None)):
        raise UsageError(f"{what} must be callable or None, got {type_name(value)}")
    if args is None:
        return value
    try:
        signature = inspect.signature(value)
    except Exception:  # no signature to read (some builtins; an object whose own __signature__ or __getattr__ fails)
        return value  # accepted, as the call itself will tell
    try:
        signature.bind(*[0] * args)
    except TypeError:
        takes = f"{args} positional argument{'' if args == 1 else 's'}"
        raise UsageError(f"{what} must take {takes}, got one with signature {plain_value(str(signature))}") from None
    return value


def plain_items(value: Any, what: str, limit: int) -> list[Any] | None:
    """The items of a list, tuple, 1-D numpy array or other sequence as a plain list, read once and bounded: a list
    or tuple subclass through list's or tuple's own slots (none of its methods runs), any other sequence by
    iterating it at most `limit + 1` times (its own failure is refused as bad input). None for text, bytes and
    anything that is no sequence."""
    kind = type(value)
    if issubclass(kind, (str, bytes, bytearray, memoryview)):
        return None
    if issubclass(kind, list):
        return list.copy(value)
    if issubclass(kind, tuple):
        return list(tuple.__getitem__(value, slice(None)))
    if issubclass(kind, np.ndarray) and kind.__module__ == "numpy":
        return value.tolist() if value.ndim == 1 else None
    if not isinstance(value, Sequence) or isinstance(value, np.ndarray):
        return None
    try:
        return list(itertools.islice(iter(value), limit + 1))
    except Exception:  # the sequence's own __iter__ / __getitem__ failed
        raise UsageError(f"{what}: this {kind.__name__} cannot be read as a sequence") from None


def guidance_interval(value: Any, what: str = "guidance interval") -> tuple[float, float]:
    """(lo, hi) with lo < hi, each finite in -1..2 (t lives in 0..1; the bounds are strict)."""
    items = plain_items(value, what, 2)
    if items is None or len(items) != 2:
        raise UsageError(f"{what} must be a pair lo,hi")
    lo, hi = (finite_float(v, what, -1.0, 2.0) for v in items)
    if not lo < hi:
        raise UsageError(f"{what} must be lo < hi, got {lo},{hi}")
    return (lo, hi)


# Stored sampling defaults (safetensors metadata, manifests): key -> the check of the field it sets.
SAMPLING_DEFAULTS = {
    "steps": lambda v: exact_int(v, "stored sampling default steps", 1, MAX_STEPS),
    "cfg": lambda v: finite_float(v, "stored sampling default cfg", 0.0, MAX_CFG),
    "shift": lambda v: finite_float(v, "stored sampling default shift", 0.0, MAX_SHIFT, above_lo=True),
    "cache_interval": lambda v: exact_int(v, "stored sampling default cache_interval", 1, MAX_STEPS),
    "sampler": lambda v: one_of(v, "stored sampling default sampler", _solvers()),
    "token_forecast": lambda v: one_of(v, "stored sampling default token_forecast", _forecasts()),
    "guidance_interval": lambda v: guidance_interval(v, "stored sampling default guidance_interval"),
    "grids": lambda v: v,  # fitted time grids: checked by sampling's own format (config.check_sampling_defaults)
}


SOLVERS = ("euler", "heun", "ab2", "ab3", "dpmpp_2m", "unipc")  # the sampler's names (sampling.rules reads them here)
FORECASTS = ("off", "linear", "quadratic", "auto")


def _solvers() -> tuple[str, ...]:
    return SOLVERS


def _forecasts() -> tuple[str, ...]:
    return FORECASTS


def value_kind(value: Any) -> str:
    """What a stored value is, without its content: 'a str of 12 characters', 'an int', 'a list of 3'."""
    name = type_name(value)
    if isinstance(value, str):  # the builtin's own length: a subclass's __len__ does not run
        return f"a {name} of {str.__len__(value)} characters"
    if isinstance(value, list):
        return f"a {name} of {list.__len__(value)}"
    if isinstance(value, dict):
        return f"a {name} of {dict.__len__(value)}"
    return f"a {name}" if name[0] not in "aeiou" else f"an {name}"


def parse_sampling_defaults(data: Any) -> dict[str, Any]:
    """Recommended sampler settings stored in a file: a JSON object whose known keys are within the limits."""
    if not isinstance(data, dict):
        raise UsageError(f"sampling defaults must be a JSON object, got {type_name(data)}")
    for key, value in data.items():
        if key not in SAMPLING_DEFAULTS:  # a key no version writes: a damaged or foreign file, not one to half-trust
            raise UsageError(f"an unknown stored sampling default (key {list(data).index(key) + 1} of {len(data)}); known: "
                             f"{', '.join(SAMPLING_DEFAULTS)}")  # fmt: skip
        try:
            SAMPLING_DEFAULTS[key](value)
        except UsageError:
            raise UsageError(
                f"stored sampling default {key} ({value_kind(value)}) is out of range or of the wrong type"
            ) from None
    return dict(data)


@dataclass(frozen=True)
class OptionRule:
    """One dependency between options, as data: `option` goes only with one of `needs`, and with none of `excludes`.

    Names are the CLI's (`--seed`); the Python API checks its keyword arguments under the same names. A name
    without dashes is a condition of the run, not an option (`torchrun`: started by torchrun).
    """

    option: str
    needs: tuple[str, ...] = ()  # at least one of these is given with it (an option it only modifies)
    excludes: tuple[str, ...] = ()  # none of these is given with it (an option it would ignore or contradict)
    why: str = ""

    def broken_by(self, given: Collection[str]) -> str | None:
        """The one-line refusal when `given` (the options given) breaks this rule, else None."""
        if self.option not in given:
            return None
        if self.needs and not any(name in given for name in self.needs):
            return f"{self.option} goes only with {' or '.join(self.needs)}: {self.why}"
        hits = sorted(name for name in self.excludes if name in given)
        if hits:
            verb = "does not take" if hits[0].startswith("-") else "does not apply to"  # an option, or a condition of the run
            return f"{self.option} {verb} {', '.join(hits)}: {self.why}"
        return None


# An explicit --cuda-graphs (cuda_graphs=True) where graphs cannot apply; its conditions are named by
# `run_conditions` (the device of the run, the backend it runs on). Left out (None), graphs are used where they apply.
CUDA_GRAPHS_RULE = OptionRule(
    "--cuda-graphs",
    excludes=("device cpu", *(f"backend {i.name}" for i in CATALOG if not i.graphable)),
    why=f"whole-step CUDA graphs replay the CUDA kernels of {', '.join(i.name for i in CATALOG if i.graphable)}; "
    "leave it out (graphs wherever they apply) or give --no-cuda-graphs",
)


def run_conditions(device_type: str, backends: Collection[str] = ()) -> frozenset[str]:
    """The conditions of a run that options' rules name: `device cpu`, `backend onnx` (each backend it runs on)."""
    return frozenset({f"device {device_type}", *(f"backend {name}" for name in backends)})


# What dip-sample and `DiPPipeline.__call__` refuse rather than ignore: which images, and how a run is sharded.
SAMPLE_RULES = (
    OptionRule("--num-samples", excludes=("--classes", "--seeds"),
               why="give either --classes/--seeds or --num-samples, not both"),
    OptionRule("--seeds", excludes=("--seed",),
               why="each image's seed is listed (--seed is the first seed of --num-samples, or of --classes alone)"),
    OptionRule("--class-file", needs=("--num-samples",), why="its line i is the class of sample i (and not with --classes)"),
    OptionRule("--shard-batches", needs=("--resume", "torchrun"), why="only a sharded run writes shards"),
    CUDA_GRAPHS_RULE,
)  # fmt: skip

# What dip-bench refuses rather than ignore: --headline's recipes are fixed, the yardstick picks its own solvers and counts.
BENCH_RULES = (
    OptionRule("--headline", excludes=("--backends", "--variants", "--samplers", "--nfe", "--plot", "--steps", "--sampler",
                                       "--cache-interval", "--token-forecast"),
               why="it compares two fixed recipes (the release's Euler 100 on eager PyTorch, and the model's "
               "recommendation on --backend auto) at the model's guidance or --cfg"),
    OptionRule("--samplers", excludes=("--variants", "--steps", "--sampler"),
               why="--samplers measures solvers instead, each at every --nfe count"),
    OptionRule("--nfe", needs=("--samplers",), why="the evaluation counts of the solver yardstick"),
    CUDA_GRAPHS_RULE,
)  # fmt: skip


def given_options(values: Mapping[str, Any]) -> frozenset[str]:
    """The names given: a value that is None (an option not typed) or False (a flag left off) is not given.

    Options that must be told apart from their default have None as their default on every surface.
    """
    return frozenset(name for name, value in values.items() if value is not None and value is not False)


def check_options(rules: Sequence[OptionRule], given: Collection[str]) -> None:
    """Refuse, in one line, the first rule the given options break (before any work)."""
    for rule in rules:
        broken = rule.broken_by(given)
        if broken is not None:
            raise UsageError(broken)


@dataclass(frozen=True)
class RunSettings:
    """What to sample: one class per seed, in batches, at an image size (None: the model's)."""

    classes: tuple[int, ...]
    seeds: tuple[int, ...]
    batch_size: int = 16  # images per sampler batch
    image_size: tuple[int, int] | None = None  # (H, W)
    cuda_graphs: bool | None = None  # whole-step CUDA graphs: None where they apply, True asked for, False off

    def __post_init__(self) -> None:
        classes = int_list(self.classes, "--classes", 0, MAX_CLASS)
        seeds = int_list(self.seeds, "--seeds", 0, MAX_SEED)
        if len(classes) == 1 and len(seeds) > 1:
            classes = classes * len(seeds)  # a single class goes with every seed
        if len(classes) != len(seeds):
            raise UsageError(f"{len(classes)} classes but {len(seeds)} seeds; give one seed per class")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "batch_size", exact_int(self.batch_size, "--batch-size", 1, MAX_BATCH))
        if self.image_size is not None:
            object.__setattr__(self, "image_size", image_size(self.image_size))
        object.__setattr__(self, "cuda_graphs", optional_bool(self.cuda_graphs, "cuda_graphs"))


BUILD_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
BUILD_TARGETS = ("onnx", "trt")
# What the exporter writes and ONNX Runtime runs for this model. Not 17: the exporter writes 18 and cannot convert
# the backbone's ReduceMean down (the export checks the opset its graphs import all the same).
OPSETS = range(18, 21)


@dataclass(frozen=True)
class BuildSettings:
    """How an export is built: the precision inside the graph, the runtime it targets, the ONNX opset."""

    precision: str = "fp32"
    target: str = "onnx"  # onnx: ONNX Runtime graphs; trt: Q/DQ graphs shaped for TensorRT (int8, fp8)
    opset: int = 18

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", one_of(self.precision, "--precision", BUILD_PRECISIONS))
        object.__setattr__(self, "target", one_of(self.target, "--target", BUILD_TARGETS))
        if self.precision == "fp8" and self.target != "trt":
            raise UsageError("fp8 is a TensorRT graph: add --target trt")
        if self.target != "onnx" and self.precision not in ("int8", "fp8"):
            raise UsageError(f"--target trt shapes int8 and fp8 graphs; a {self.precision} export has no target (leave it out)")
        object.__setattr__(self, "opset", exact_int(self.opset, "--opset", OPSETS.start, OPSETS.stop - 1))
