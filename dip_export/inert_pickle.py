"""A pickle module for `torch.load` that never runs what a file names.

Globals torch's weights-only loader allows (tensor rebuilders, storages, dtypes, plain containers)
resolve as usual; every other class or function a file names (training configs, functools.partial,
user classes) becomes an inert placeholder: it is never imported, called or constructed, and it
only records the arguments and state the file gives it. Tensors are rebuilt by torch's own code.
"""

from __future__ import annotations

import pickle
from pickle import PickleError, UnpicklingError  # noqa: F401 (torch.load reads these off the module)
from typing import Any

replaced: set[str] = set()  # names resolved to placeholders by the last loads (for messages)


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


class Unpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        key = f"{module}.{name}"
        if key in self._allowed:
            return self._allowed[key]
        replaced.add(key)
        return _placeholder(key)


def load(file: Any, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()
