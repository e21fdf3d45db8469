"""The one reader for files the tool did not just write: JSON, .npz arrays, class files, stored metadata.

Every such read is capped in size and nesting, checked against a schema of types and ranges (of
dtypes and shapes for arrays), and refused with one error naming the file. A file is opened only
when it is a regular file (a FIFO would block the reader forever), and never with pickles. A file
inside a folder (a manifest, a cache, shard settings) is never a symlink and never resolves outside
that folder. Content identities (cache and resume keys) hash the bytes of
every file that defines a model, whatever the files are named.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import re
import stat as stat_kind
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np

from dip_export.errors import DipError


def sha256_file(path: Path) -> str:
    """sha256 of a file, computed once per path and `file_stamp` (a 2.5 GB checkpoint takes seconds): a file rewritten
    or replaced keeping its size and modification time (`cp -p`, `touch -r`) has another change time or inode."""
    return _sha256(str(path.resolve()), file_stamp(path))


Stamp = tuple[int, int, int, int, int]


def file_stamp(path: Path) -> Stamp:
    """What changes whenever a file's bytes may have: its device and inode, size, and modification and change times
    (the change time cannot be set back by hand, so a file rewritten in place or replaced by another never keeps it)."""
    found = path.stat()
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


class ChangedFileError(DipError):
    """A file that changed after the tool read it: what was read and what the file now holds differ."""


def sha256_as_read(path: Path, stamp: Stamp) -> str:
    """sha256 of `path` as it was when stamped (`file_stamp`): a file changed since is refused, never hashed in place
    of the bytes that were read."""
    if _stamp_or_none(path) != stamp:
        raise ChangedFileError(f"{path} changed after it was read; load it again")
    digest = sha256_file(path)
    if _stamp_or_none(path) != stamp:
        raise ChangedFileError(f"{path} changed while it was hashed; load it again")
    return digest


def _stamp_or_none(path: Path) -> Stamp | None:
    try:
        return file_stamp(path)
    except OSError:
        return None


@functools.lru_cache(maxsize=32)
def _sha256(path_text: str, stamp: Stamp, chunk: int = 1 << 22) -> str:
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


MAX_NAME_BYTES = 255  # one path component (NAME_MAX of the common file systems)
MAX_PATH_BYTES = 4096  # a whole path (PATH_MAX)


def name_problem(path: Path | str) -> str | None:
    """Why the file system cannot take `path` as a name (a NUL or control character, text that does not encode,
    a component or the whole too long), or None; the name itself is never quoted."""
    text = str(path)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "it holds a NUL or control character"
    try:
        raw = os.fsencode(text)
    except UnicodeError:
        return "it is not text the file system can encode"
    if len(raw) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in raw.split(b"/")):
        return f"it is longer than the file system allows: {MAX_NAME_BYTES} bytes a name, {MAX_PATH_BYTES} a path"
    return None


def contained(folder: Path, path: Path | str, what: str = "file", source: Path | str | None = None) -> Path:
    """`folder/path` (`path` relative to `folder`, or absolute below it) when no component below `folder` is a
    symlink (wherever it leads, dangling or not) and the path stays inside `folder`; else one error. The one check
    of every file read from inside a folder: manifests, graphs, external data, shards, caches.

    A name the file system cannot take (`name_problem`) is refused before anything is looked up, in one line
    naming `source`, the file that held the name (the folder when none is given)."""
    folder = Path(folder)
    problem = name_problem(path)
    if problem is not None:
        raise UntrustedFileError(f"{source or folder}: the {what} path it names is not a valid file name ({problem})")
    candidate = folder / path
    try:
        parts = candidate.relative_to(folder).parts
    except ValueError:
        parts = ("..",)
    if ".." in parts:
        raise UntrustedFileError(f"{candidate}: the {what} leads outside {folder}; refusing to read it")
    step = folder
    for part in parts:
        step = step / part
        if step.is_symlink():
            where = "is a symlink" if step == candidate else f"lies in a symlinked folder ({part})"
            raise UntrustedFileError(f"{candidate}: the {what} {where}; refusing to follow it")
    root, resolved = folder.resolve(), candidate.resolve()
    if resolved != root and root not in resolved.parents:  # a folder renamed meanwhile: still never outside
        raise UntrustedFileError(f"{candidate}: the {what} leads outside {folder}; refusing to read it")
    return candidate


def check_file(path: Path, folder: Path | None, max_bytes: int, what: str) -> int:
    """A regular file of at most `max_bytes`; `contained` in `folder` (no symlink on the way) when one is given. Its size."""
    path = Path(path)
    if folder is not None:
        contained(folder, path.relative_to(folder) if path.is_relative_to(folder) else path, what)
    try:
        stat = path.stat()
    except OSError as err:
        raise UntrustedFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    if not path.is_file():
        raise UntrustedFileError(f"{path}: the {what} is not a regular file")
    if stat.st_size > max_bytes:
        limit = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes} bytes"
        raise UntrustedFileError(f"{path}: the {what} is larger than {limit} ({stat.st_size} bytes)")
    return stat.st_size


def open_regular(path: Path, folder: Path | None, max_bytes: int, what: str) -> BinaryIO:
    """`check_file`, then open without blocking or following a last symlink (inside `folder`): the file opened
    is the regular file that was checked, even if the name was replaced by a FIFO or a link meanwhile."""
    check_file(path, folder, max_bytes, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (getattr(os, "O_NOFOLLOW", 0) if folder is not None else 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise UntrustedFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    opened = os.fstat(fd)
    if not stat_kind.S_ISREG(opened.st_mode) or opened.st_size > max_bytes:
        os.close(fd)
        raise UntrustedFileError(f"{path}: the {what} changed while it was opened; refusing to read it")
    return os.fdopen(fd, "rb")


def read_regular(path: Path, folder: Path | None, max_bytes: int, what: str) -> bytes:
    """The bytes of `open_regular`'s file (never more than `max_bytes`); a read that fails is one line naming it."""
    with open_regular(path, folder, max_bytes, what) as f:
        try:
            return f.read(max_bytes)
        except OSError as err:
            raise UntrustedFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None


def nesting_depth(data: bytes) -> int:
    """How deep brackets nest in JSON text, counted without parsing (strings skipped); linear time in C and numpy."""
    import numpy as np

    brackets = _STRINGS.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = np.zeros(256, dtype=np.int8)
    steps[[ord("["), ord("{")]], steps[[ord("]"), ord("}")]] = 1, -1
    return max(int(np.cumsum(steps[np.frombuffer(brackets, dtype=np.uint8)], dtype=np.int32).max()), 0)


class _NotFinite(Exception):
    """A JSON number no float holds finitely (NaN, Infinity, 1e400)."""


class _RepeatedKey(Exception):
    """A JSON object names one key twice (raised inside the decoder, reported as the file's error)."""


def parse_json(data: bytes | str, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text from `source` (a file name for messages): bounded nesting, finite numbers only, each key once."""
    raw = data.encode() if isinstance(data, str) else data
    if nesting_depth(raw) > max_depth:
        raise UntrustedFileError(f"{source}: JSON nested deeper than {max_depth} levels")

    def no_constant(name: str) -> Any:
        raise _NotFinite  # NaN, Infinity, -Infinity

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):  # 1e400 reads as inf: a number no float holds
            raise _NotFinite
        return value

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):  # which of the values is meant is unknowable; the key itself is not quoted
            raise _RepeatedKey
        return obj

    try:
        found = json.loads(raw.decode("utf-8"), parse_constant=no_constant, parse_float=finite, object_pairs_hook=unique_keys)
        if unusable_text(found):
            raise UntrustedFileError(f"{source}: a text in it holds a NUL character or a lone surrogate (no name has one)")
        return found
    except _RepeatedKey:
        raise UntrustedFileError(f"{source}: not valid JSON: an object repeats a key") from None
    except _NotFinite:
        raise UntrustedFileError(f"{source}: a number in it is not finite (NaN, Infinity or beyond a float's range)") from None
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise UntrustedFileError(f"{source}: not valid JSON{where}: {reason}") from None


_UNUSABLE = re.compile("[\x00\ud800-\udfff]")


def unusable_text(found: Any) -> bool:
    """Whether a key or text anywhere in JSON data holds a NUL or a lone surrogate: no file name or message can (the
    reader refuses such a file, so no writer writes one). Each list and dict is looked into once (a caller's data
    may share one, or hold itself)."""
    stack, seen = [found], set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNUSABLE.search(item):
                return True
        elif isinstance(item, dict | list | tuple):  # a tuple: written as a list
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(itertools.chain(item, item.values()) if isinstance(item, dict) else item)
    return False


class JsonShapeError(ValueError):
    """Data a writer cannot write as JSON: a list or dict that holds itself, or more items than its reader takes."""


def json_items(data: Any, limit: int) -> int:
    """How many values the JSON text of `data` holds (a list or dict held n times counts n times), each list and dict
    walked once; a JsonShapeError for one that holds itself, or past `limit` values (before any text is made)."""
    counts: dict[int, int] = {}  # a finished list or dict: the values its text holds, itself included
    open_now: set[int] = set()  # the lists and dicts on the path being walked
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        item, finished = stack.pop()
        if not isinstance(item, dict | list | tuple):  # a tuple: written as a list
            continue
        children = list(itertools.chain(item, item.values())) if isinstance(item, dict) else item
        if finished:
            counts[id(item)] = 1 + sum(counts.get(id(c), 1) for c in children)
            open_now.discard(id(item))
            if counts[id(item)] > limit:
                raise JsonShapeError(f"it would hold more than {limit} values")
        elif id(item) in open_now:
            raise JsonShapeError("a list or dict in it holds itself")
        elif id(item) not in counts:
            open_now.add(id(item))
            stack.append((item, True))
            stack.extend((c, False) for c in children)
    return counts.get(id(data), 1)


def read_json(
    path: Path, *, folder: Path | None = None, schema: Schema | None = None, what: str = "JSON file",
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:  # fmt: skip
    """A JSON file read under every rule of this module; `schema` checks the top-level object."""
    try:
        with open_regular(path, folder, max_bytes, what) as f:
            raw = f.read(max_bytes + 1)
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
            from dip_export.settings import plain_value

            return f"must be in {self.lo:g}..{self.hi:g}, got {plain_value(value)}"
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


MAX_NPZ_BYTES = 4 << 30  # declared bytes of all arrays together (and the file's size)
MAX_NPZ_RATIO = 64  # unpacked / stored bytes of a member: real arrays stay far below, zip bombs far above
MAX_NPZ_MEMBERS = 4096


@dataclass(frozen=True)
class ArraySpec:
    """One array's element type and shape: `dtype` a numpy name ("float32") or a kind ("U": any text),
    None in `shape` any size of that dimension; `finite` refuses NaN and infinities."""

    dtype: str
    shape: tuple[int | None, ...]
    finite: bool = True

    def problem(self, dtype: np.dtype, shape: tuple[int, ...]) -> str | None:
        import numpy as np

        kind_only = self.dtype in ("U", "S")
        same_type = dtype.kind == self.dtype if kind_only else dtype == np.dtype(self.dtype)
        same_shape = len(shape) == len(self.shape) and all(w is None or w == d for w, d in zip(self.shape, shape, strict=False))
        if same_type and same_shape:
            return None
        dims = ", ".join("any" if d is None else str(d) for d in self.shape)
        kind = {"U": "text", "S": "bytes"}.get(self.dtype, self.dtype)
        return f"must be {kind} of shape ({dims}{',' if len(self.shape) == 1 else ''})"


@dataclass(frozen=True)
class ArraySchema:
    """The arrays of an .npz file: each name of `arrays` is required, a name matching (in full) a regular
    expression of `patterns` is allowed, nothing else is; `extra` checks across the arrays read."""

    arrays: Mapping[str, ArraySpec]
    patterns: Mapping[str, ArraySpec] = field(default_factory=dict)
    extra: Callable[[Mapping[str, np.ndarray]], str | None] | None = None

    def spec(self, name: str) -> ArraySpec | None:
        if name in self.arrays:
            return self.arrays[name]
        return next((s for p, s in self.patterns.items() if re.fullmatch(p, name)), None)


@dataclass(frozen=True)
class _Member:
    info: Any  # zipfile.ZipInfo
    spec: ArraySpec


def read_npz(
    path: Path, *, folder: Path, what: str, check: ArraySchema, load: Iterable[str] | None = None,
    max_bytes: int = MAX_NPZ_BYTES, max_members: int = MAX_NPZ_MEMBERS,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The arrays of an .npz file inside `folder`, read under every rule of this module and `check`.

    Every member's .npy header is checked (name, dtype, shape, declared bytes against `max_bytes`)
    before any array is read; then the arrays named in `load` (all when None) are read, without
    pickles, and checked for finite values. A damaged zip or .npy is one error naming the file.
    """
    import zipfile

    with open_regular(path, folder, max_bytes, what) as f:
        try:
            with zipfile.ZipFile(f) as zf:
                members = _npz_members(zf, path, what, check, max_bytes, max_members)
                wanted = list(members) if load is None else list(load)
                arrays = {name: _npz_array(zf, members[name], path, name) for name in wanted}
        except DipError:  # a refusal of ours (the file's own fault, or its size against the memory budget)
            raise
        except Exception as err:  # zipfile, zlib, lzma and numpy's header errors of a damaged file all land here
            raise UntrustedFileError(f"{path}: the {what} is not a readable .npz file ({type(err).__name__})") from None
    problem = check.extra(arrays) if check.extra is not None else None
    if problem:
        raise UntrustedFileError(f"{path}: the {what} {problem}")
    return arrays


def _npz_members(zf: Any, path: Path, what: str, check: ArraySchema, max_bytes: int, max_members: int) -> dict[str, _Member]:
    """Each member checked against `check`: first by the zip's own record alone (count, names exactly those of
    `check`, declared unpacked sizes against `max_bytes`, the memory budget and the packing ratio), before
    anything is unpacked; then by its .npy header, reading only that, which with its data must make up the
    member exactly (no byte before or after the array)."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise UntrustedFileError(f"{path}: the {what} holds more than {max_members} members")
    specs: dict[str, tuple[Any, ArraySpec]] = {}
    total = 0
    for index, info in enumerate(infos):
        name = info.filename.removesuffix(".npy")
        spec = check.spec(name) if info.filename.endswith(".npy") else None
        if spec is None or name in specs:
            raise UntrustedFileError(f"{path}: the {what} holds an unexpected member (number {index + 1})")
        total += info.file_size
        if total > max_bytes or info.file_size > max_bytes:
            raise UntrustedFileError(f"{path}: the {what} declares more than {max_bytes >> 20} MiB of arrays")
        if info.file_size > MAX_NPZ_RATIO * info.compress_size + (1 << 20):
            raise UntrustedFileError(f"{path}: array {name} of the {what} unpacks to over {MAX_NPZ_RATIO}x its stored size")
        specs[name] = (info, spec)
    missing = [name for name in check.arrays if name not in specs]
    if missing:
        raise UntrustedFileError(f"{path}: the {what} lacks the array {missing[0]}")
    from dip_export.budget import check_memory

    check_memory(total, f"{path}: the arrays of the {what}")  # what reading them would take, before any is unpacked
    members: dict[str, _Member] = {}
    for name, (info, spec) in specs.items():
        shape, dtype, header_bytes = _npy_header(zf, info, path, what, name)
        declared = math.prod(shape) * dtype.itemsize
        if declared > max_bytes:
            raise UntrustedFileError(f"{path}: the {what} declares more than {max_bytes >> 20} MiB of arrays")
        if header_bytes + declared > info.file_size:
            raise UntrustedFileError(f"{path}: array {name} of the {what} is truncated")
        if header_bytes + declared < info.file_size:
            raise UntrustedFileError(f"{path}: array {name} of the {what} holds bytes past its array")
        problem = spec.problem(dtype, shape)
        if problem:
            raise UntrustedFileError(f"{path}: array {name} of the {what} {problem}")
        members[name] = _Member(info, spec)
    return members


def _npy_header(zf: Any, info: Any, path: Path, what: str, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of one .npy member; Python objects are refused here."""
    from numpy.lib import format as npy

    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    with zf.open(info) as member:
        version = npy.read_magic(member)
        if version not in readers:
            raise UntrustedFileError(f"{path}: array {name} of the {what} has an unsupported .npy version")
        shape, _, dtype = readers[version](member)
        header_bytes = member.tell()
    if dtype.hasobject:
        raise UntrustedFileError(f"{path}: array {name} of the {what} holds Python objects; refusing to read it")
    return tuple(shape), dtype, header_bytes


def _npz_array(zf: Any, member: _Member, path: Path, name: str) -> np.ndarray:
    import numpy as np
    from numpy.lib import format as npy

    with zf.open(member.info) as f:
        array = npy.read_array(f, allow_pickle=False)
        if f.read(1):  # the zip's record said otherwise (its CRC is checked on reaching the end)
            raise UntrustedFileError(f"{path}: array {name} holds bytes past its array")
    if member.spec.finite and array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise UntrustedFileError(f"{path}: array {name} holds NaN or infinite values")
    return array


def _without_line_ending(raw: bytes) -> bytes:
    """A line less its one ending, "\\n" or "\\r\\n" (none on the last line); any other carriage return is the
    line's own, for its parser to refuse: "5\\r" is not "5"."""
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    return raw[:-1] if raw.endswith(b"\n") else raw


def read_lines(path: Path, *, what: str, max_bytes: int = MAX_TEXT_BYTES, max_lines: int | None = None) -> list[tuple[int, str]]:
    """The lines of a text file that are not blank, as written (less one "\\n" or "\\r\\n"), with their line numbers
    (1-based); never quoted in errors.
    Reading stops after `max_lines` non-empty lines (what the caller can use), so a long file costs no more."""
    lines: list[tuple[int, str]] = []
    try:
        with open_regular(Path(path), None, max_bytes, what) as f:
            for number, raw in enumerate(f, 1):
                try:
                    text = _without_line_ending(raw).decode("utf-8")  # the line as written: its parser refuses spaces
                except UnicodeDecodeError:
                    raise UntrustedFileError(f"{path} line {number}: the {what} is not UTF-8 text") from None
                if text.strip():
                    lines.append((number, text))
                    if max_lines is not None and len(lines) >= max_lines:
                        break
    except OSError as err:
        raise UntrustedFileError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    return lines


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
        sparse = [t for s in model.graph.sparse_initializer for t in (s.values, s.indices)]  # refused by the reader too
        for tensor in [*model.graph.initializer, *sparse]:
            for entry in tensor.external_data:
                if entry.key == "location":
                    found.append(contained(path.parent, entry.value, "external data", source=path))
    return sorted(set(found))


def source_identity(source: str | Path, stamp: Stamp | None = None) -> str:
    """A checkpoint's identity by content (its sha256, of the bytes read when `stamp` was taken); a preset or other
    non-file source by name."""
    path = Path(source)
    if stamp is not None:
        return f"sha256:{sha256_as_read(path, stamp)}"
    return f"sha256:{sha256_file(path)}" if path.is_file() else str(source)
