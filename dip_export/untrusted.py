"""The one reader for files the tool did not just write: JSON, class files, stored metadata.

Every such read is capped in size and nesting, checked against a schema of types and ranges, and
refused with one error naming the file. A file inside a folder (a manifest, a cache, shard
settings) is never a symlink and never resolves outside that folder. Content identities (cache
and resume keys) hash the bytes of every file that defines a model, whatever the files are named.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dip_export.errors import DipError


def sha256_file(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime): a 2.5 GB checkpoint takes seconds."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path_text: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    path = Path(path_text)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


MAX_JSON_BYTES = 16 << 20
MAX_DEPTH = 32
MAX_TEXT_BYTES = 64 << 20
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class UntrustedFileError(DipError):
    """A file that is too large, too deep, of the wrong shape, or outside its folder."""


def contained(folder: Path, path: Path | str, what: str = "file") -> Path:
    """`path` (relative to `folder` or absolute) when it resolves inside `folder`; else an error."""
    folder = Path(folder)
    candidate = folder / path
    root, resolved = folder.resolve(), candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise UntrustedFileError(f"{candidate}: the {what} leads outside {folder}; refusing to read it")
    return candidate


def check_file(path: Path, folder: Path | None, max_bytes: int, what: str) -> int:
    """A regular file of at most `max_bytes`; inside `folder` (and no symlink) when one is given. Its size."""
    path = Path(path)
    if folder is not None:
        if path.is_symlink():
            raise UntrustedFileError(f"{path}: the {what} is a symlink; refusing to follow it")
        contained(folder, path.relative_to(folder) if path.is_relative_to(folder) else path, what)
    try:
        stat = path.stat()
    except OSError as err:
        raise UntrustedFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if not path.is_file():
        raise UntrustedFileError(f"{path}: the {what} is not a regular file")
    if stat.st_size > max_bytes:
        raise UntrustedFileError(f"{path}: the {what} is larger than {max_bytes >> 20} MiB ({stat.st_size} bytes)")
    return stat.st_size


def nesting_depth(data: bytes) -> int:
    """How deep brackets nest in JSON text, counted without parsing (strings skipped); linear time in C and numpy."""
    import numpy as np

    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.zeros(256, dtype=np.int8)
    steps[[ord("["), ord("{")]], steps[[ord("]"), ord("}")]] = 1, -1
    return max(int(np.cumsum(steps[np.frombuffer(brackets, dtype=np.uint8)], dtype=np.int32).max()), 0)


def parse_json(data: bytes | str, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text from `source` (a file name for messages): bounded nesting, finite numbers only."""
    raw = data.encode() if isinstance(data, str) else data
    if nesting_depth(raw) > max_depth:
        raise UntrustedFileError(f"{source}: JSON nested deeper than {max_depth} levels")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a finite number")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise UntrustedFileError(f"{source}: not valid JSON{where}: {reason}") from None


def read_json(
    path: Path, *, folder: Path | None = None, schema: Schema | None = None, what: str = "JSON file",
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:  # fmt: skip
    """A JSON file read under every rule of this module; `schema` checks the top-level object."""
    check_file(path, folder, max_bytes, what)
    try:
        raw = Path(path).read_bytes()[: max_bytes + 1]
    except OSError as err:
        raise UntrustedFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    data = parse_json(raw, str(path))
    if schema is not None:
        schema.check(data, f"{path}")
    return data


@dataclass(frozen=True)
class Field:
    """One value's type and range: `kind` exact (bool is not an int), numbers within lo..hi, sizes up to `max_len`."""

    kind: type | tuple[type, ...]
    lo: float = -math.inf
    hi: float = math.inf
    required: bool = True
    max_len: int = 4096
    choices: tuple[Any, ...] = ()

    def problem(self, value: Any) -> str | None:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if type(value) not in kinds and not (float in kinds and type(value) is int):
            return f"must be {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and not (math.isfinite(value) and self.lo <= value <= self.hi):
            return f"must be in {self.lo:g}..{self.hi:g}, got {value!r}"
        if isinstance(value, str | list | dict) and len(value) > self.max_len:
            return f"is longer than {self.max_len}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        return None


@dataclass(frozen=True)
class Schema:
    """The fields of a JSON object; unknown fields are refused unless `open`."""

    fields: Mapping[str, Field]
    open: bool = False
    extra: Callable[[dict[str, Any]], str | None] | None = None  # a check across fields

    def problem(self, data: Any) -> str | None:
        if not isinstance(data, dict):
            return f"expected a JSON object, found {type(data).__name__}"
        for name, spec in self.fields.items():
            if name not in data:
                if spec.required:
                    return f"lacks the field {name}"
                continue
            problem = spec.problem(data[name])
            if problem:
                return f"field {name} {problem}"
        unknown = sorted(set(data) - set(self.fields))
        if unknown and not self.open:
            return f"unknown field {str(unknown[0])[:40]}"
        return self.extra(data) if self.extra is not None else None

    def check(self, data: Any, source: str) -> None:
        problem = self.problem(data)
        if problem:
            raise UntrustedFileError(f"{source}: {problem}")


def read_lines(path: Path, *, what: str, max_bytes: int = MAX_TEXT_BYTES) -> list[tuple[int, str]]:
    """The non-empty lines of a text file with their line numbers (1-based); never quoted in errors."""
    check_file(path, None, max_bytes, what)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = Path(path).read_bytes()[: err.start].count(b"\n") + 1
        raise UntrustedFileError(f"{path} line {line}: the {what} is not UTF-8 text") from None
    except OSError as err:
        raise UntrustedFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def content_identity(files: Iterable[Path], root: Path | None = None) -> str:
    """sha256 over the names (relative to `root`) and bytes of `files`: equal only for the same content."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(set(map(Path, files))):
        name = os.path.relpath(path, root) if root is not None else path.name
        digest.update(f"{name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def graph_files(folder: Path, graphs: Iterable[str]) -> list[Path]:
    """Every file an export's graphs are made of: the graphs and all external data they name, inside `folder`."""
    import onnx

    found: list[Path] = []
    for rel in graphs:
        path = contained(folder, rel, "graph")
        found.append(path)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and others on damaged files
            raise UntrustedFileError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    found.append(contained(path.parent, entry.value, "external data"))
    return sorted(set(found))


def source_identity(source: str | Path) -> str:
    """A checkpoint's identity by content (its sha256); a preset or other non-file source by name."""
    path = Path(source)
    return f"sha256:{sha256_file(path)}" if path.is_file() else str(source)
