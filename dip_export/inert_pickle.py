"""A pickle module for `torch.load` that never runs what a file names, and changes nothing it did not make.

Globals torch's weights-only loader allows (tensor rebuilders, storages, dtypes, plain containers)
resolve as usual; every other class or function a file names (training configs, functools.partial,
user classes) becomes an inert placeholder: it is never imported, called or constructed, and it
only records the arguments and state the file gives it. Tensors are rebuilt by torch's own code.

A file read this way changes no object it did not create: the opcodes that change an object
(BUILD, which sets state or attributes, and SETITEM(S), APPEND(S), ADDITEMS) are carried out only
on objects this load made (a list, dict or set, a storage, an instance a class constructed, a
tensor), never on a class, module, function, any other global the file names, or what a function
returned otherwise (e.g. `torch.UntypedStorage`'s methods, `collections.Counter`'s, a placeholder
class shared by every load). Anything else refuses the file (`Refused`). The reader is pickle's
own Python implementation with those opcodes checked first.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from pickle import PickleError, UnpicklingError  # noqa: F401 (torch.load reads these off the module)
from typing import Any, ClassVar

from dip_export.budget import MAX_CALL_BYTES  # what a load may allocate through calls by size

replaced: set[str] = set()  # names resolved to placeholders by the last loads (for messages)


class Refused(UnpicklingError):
    """The file asks to change an object it did not create; the text is the reason (no file content)."""


class Inert:
    """Stands for a global of the file; holds what the file passed to it and does nothing else."""

    qualified_name = "?"
    args: tuple[Any, ...] = ()  # what the file passed to the constructor or function
    state: Any = None  # what the file passed to __setstate__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    @property
    def items(self) -> list[Any]:
        """Entries the file added as to a list or dict (pickle's APPEND / SETITEM on objects made by __new__)."""
        return self.__dict__.setdefault("_items", [])

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __call__(self, *args: Any, **kwargs: Any) -> Inert:
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


_placeholders: dict[str, type[Inert]] = {}


def _placeholder(key: str) -> type[Inert]:
    if key not in _placeholders:
        _placeholders[key] = type("Inert", (Inert,), {"qualified_name": key})
    return _placeholders[key]


def _allowed() -> dict[str, Any]:
    from torch import _weights_only_unpickler, serialization

    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    for obj in serialization.get_safe_globals():
        if isinstance(obj, tuple):
            obj, name = obj
            allowed[name] = obj
        else:
            allowed[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return allowed


# what a global or a call may return that is never an object of this load's own (nothing of it may change)
_NOT_MADE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
             types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType,
             types.GetSetDescriptorType, types.MemberDescriptorType, property, staticmethod, classmethod)  # fmt: skip
_CONTAINERS = (pickle.EMPTY_DICT, pickle.DICT, pickle.EMPTY_LIST, pickle.LIST, pickle.EMPTY_SET, pickle.BINPERSID,
               pickle.PERSID)  # fmt: skip
_CALLS = {pickle.REDUCE: 2, pickle.NEWOBJ: 2, pickle.NEWOBJ_EX: 3}  # where the callable sits on the stack before it runs
_CHANGERS = {pickle.BUILD: "set the state of", pickle.SETITEM: "add entries to", pickle.SETITEMS: "add entries to",
             pickle.APPEND: "append to", pickle.APPENDS: "append to", pickle.ADDITEMS: "add items to"}  # fmt: skip
_TARGET_DEPTH = {pickle.BUILD: 2, pickle.SETITEM: 3, pickle.APPEND: 2}  # the others change what lies under their mark


def _target(unpickler: Unpickler, code: bytes) -> Any:
    """The object an opcode that changes one would change (where it sits on the stack before the opcode runs)."""
    if code in _TARGET_DEPTH:
        depth = _TARGET_DEPTH[code]
        return unpickler.stack[-depth] if len(unpickler.stack) >= depth else None
    outer = unpickler.metastack[-1] if unpickler.metastack else None
    return outer[-1] if outer else None


def _container(code: bytes, original: Any) -> Any:
    def run(self: Unpickler) -> None:
        original(self)
        self._mark(self.stack[-1], None)

    return run


def _call(code: bytes, original: Any) -> Any:
    depth = _CALLS[code]

    def run(self: Unpickler) -> None:
        maker = self.stack[-depth] if len(self.stack) >= depth else None
        args = self.stack[1 - depth] if len(self.stack) >= depth else None
        self._allocate(maker, args)
        _check_state(maker, args)
        original(self)
        self._mark(self.stack[-1], maker)

    return run


def _changing(code: bytes, original: Any) -> Any:
    import torch

    def run(self: Unpickler) -> None:
        target = _target(self, code)
        if self._made.get(id(target)) is not target or id(target) in self._named:
            raise Refused(f"it asks to {_CHANGERS[code]} an object it did not create (a class, function or other global)")
        if isinstance(target, torch.Tensor):
            raise Refused(_ATTRIBUTES)
        original(self)

    return run


_ATTRIBUTES = "it sets attributes on a tensor it rebuilds (a checkpoint's tensors carry none)"
_WITH_STATE = {"torch._tensor._rebuild_from_type_v2": 3, "torch._utils._rebuild_parameter_with_state": 3}  # state's place


def carries_state(state: Any) -> bool:
    """Whether a rebuilder's `state` (a dict of attributes, or a tuple of such dicts and slots) sets anything."""
    if state is None:
        return False
    if type(state) is dict:
        return bool(state)
    if type(state) is tuple:
        return any(carries_state(part) for part in state)
    return True  # anything else (a placeholder, a list): not what a plain tensor's state is


def _check_state(maker: Any, args: Any) -> None:
    """A tensor rebuilt with attributes (`_rebuild_from_type_v2`'s or `_rebuild_parameter_with_state`'s state) is
    refused before the rebuilder runs: a file could otherwise replace a tensor's methods (`t.float`, ...)."""
    key = f"{getattr(maker, '__module__', '')}.{getattr(maker, '__qualname__', '')}"
    place = _WITH_STATE.get(key)
    if place is not None and isinstance(args, tuple | list) and len(args) > place and carries_state(args[place]):
        raise Refused(_ATTRIBUTES)


_PythonUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]  # the Python one: its opcodes can be checked


class Unpickler(_PythonUnpickler):
    dispatch: ClassVar[dict[int, Any]] = dict(_PythonUnpickler.dispatch)
    for _code in _CONTAINERS:
        dispatch[_code[0]] = _container(_code, dispatch[_code[0]])
    for _code in _CALLS:
        dispatch[_code[0]] = _call(_code, dispatch[_code[0]])
    for _code in _CHANGERS:
        dispatch[_code[0]] = _changing(_code, dispatch[_code[0]])
    del _code

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import torch

        super().__init__(*args, **kwargs)
        self._allowed = _allowed()
        self._made: dict[int, Any] = {}  # id -> object, for every object this load made (kept alive: ids stay unique)
        self._named: dict[int, Any] = {}  # id -> object, for every global the file named
        self._allocated = 0  # bytes the calls that allocate by size have asked for so far
        self._passed = 0  # bytes of the values passed to the allowed globals' calls so far
        self._source: Any = args[0] if args else kwargs.get("file")  # where the pickle is read from (its position)
        self._fresh = (torch.Tensor, Inert)  # what any call returns new: no global is a tensor or a placeholder instance

    def _mark(self, obj: Any, maker: Any) -> None:
        """Record `obj` as made by this load: a new container or storage (`maker` None), an instance a class made
        (the allowed classes and the placeholders construct new objects), or a tensor or placeholder instance
        whatever made it; never a class, module, function or global the file named."""
        if isinstance(obj, _NOT_MADE) or id(obj) in self._named:
            return
        if maker is None or isinstance(maker, type) or isinstance(obj, self._fresh):
            self._made[id(obj)] = obj

    def _allocate(self, maker: Any, args: Any) -> None:
        """A call that allocates by size (`bytearray(n)`, `UntypedStorage(n)`, ...) is counted before it runs; a
        load's such calls together stay under `MAX_CALL_BYTES` (the weights come from the file's records instead)."""
        from dip_export.budget import OddCodec, call_budget, call_bytes, passed_bytes

        try:
            self._allocated += call_bytes(maker, tuple(args) if isinstance(args, list) else args)
        except OddCodec:
            raise Refused("it encodes text with a codec other than latin1 (the one pickle writes bytes with)") from None
        if self._allocated > MAX_CALL_BYTES:
            raise Refused(f"it builds buffers or storages of more than {MAX_CALL_BYTES >> 20} MiB by size while loading")
        if (isinstance(maker, type) and issubclass(maker, Inert)) or isinstance(maker, Inert):
            return  # a placeholder keeps what it is given and copies nothing
        limit = call_budget(self._read())
        self._passed += passed_bytes(args, limit - self._passed)
        if self._passed > limit:
            raise Refused(f"it passes more than {limit >> 20} MiB of values to the calls it makes (repeating values it holds)")

    def _read(self) -> int:
        """How far into its pickle this load has read (0 where the file cannot say)."""
        try:
            return int(self._source.tell())
        except Exception:  # a stream without a position: only MAX_CALL_BYTES is allowed
            return 0

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ
        self._allocate(klass, args)
        _check_state(klass, args)
        super()._instantiate(klass, args)
        self._mark(self.stack[-1], klass)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names (a protocol 2 pickle's __builtin__.set), as pickle does
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = f"{module}.{name}"
        if key in self._allowed:
            found = self._allowed[key]
        else:
            replaced.add(key)
            found = _placeholder(key)
        self._named[id(found)] = found
        return found


def load(file: Any, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()
