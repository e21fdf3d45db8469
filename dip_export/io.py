"""Atomic file output: a file either appears complete or not at all."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import hmac
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dip_export.budget import GRID_COLUMNS, GRID_GUTTER, GRID_MIN_CELL, check_memory, grid_bytes
from dip_export.errors import DipError, UsageError
from dip_export.ownership import (
    JSON_KINDS,
    MARK_KEY,
    NPZ_COMMENT,
    OUTPUT_KINDS,
    PNG_KEY,
    PNG_KINDS,
    check_file_text,
    check_free_space,
    check_output_name,
    check_outputs_apart,
    check_replaceable_output,
    is_ours,
    journal_path,
    mark,
    owner_key,
    png_text,
    put_aside,
    recover_swap,
    swap_in,
    temporary_names,
)
from dip_export.settings import exact_str, path_text, plain_value
from dip_export.untrusted import MAX_JSON_BYTES, JsonShapeError, json_items, unusable_text


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(target: Path, create: bool = True) -> str:
    """Temporaries carry host, pid and a tag under the owner key: a leftover of a killed run of this tool can be
    told from a live one, and from a user's file that merely looks like one (only a tagged name is ever deleted).
    `create` False: the key is never made for it (a check before the key's own place is checked)."""
    host, pid = socket.gethostname(), os.getpid()
    return f".{target.name}.{host}-{pid}-{_tmp_tag(target.name, host, pid, create=create) or 'untagged'}."


def temporary_pattern(target: str) -> str:
    """A regex of the names `atomic_path` gives its temporaries beside a file whose name matches regex `target`,
    made by any host and process (`ownership.temporary_names`)."""
    return temporary_names(f"(?:{target})", role="").pattern


def _tmp_tag(name: str, host: str, pid: int, create: bool) -> str | None:
    """16 hex digits of HMAC(owner key, name, host, pid); None without a usable key (then nothing is deleted)."""
    try:
        key = owner_key(create=create)
    except (DipError, OSError):
        return None
    if key is None:
        return None
    return hmac.new(key, f"{name}\0{host}\0{pid}".encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:16]


PLACED_KINDS = frozenset(OUTPUT_KINDS) - {"auto-backend-cache"}  # a user's outputs (the cache lives in engines/)
EXPORT_FORMAT_PREFIX = "dip-export/"  # the `format` of every manifest.json this tool writes
MANIFEST_NAME = "manifest.json"


def remove_stale_temporaries(target: Path) -> None:
    """Delete temporaries beside `target` left by processes of this host that no longer run (kill -9).

    Only names exactly of the form this module makes (`.NAME.HOST-PID-TAG.XXXXXXXX.tmp`) whose TAG is this
    user's HMAC of name, host and pid are touched; a replaced export (`.spent.`) loses only its own files, as its
    manifest lists them (`ownership.put_aside`).
    """
    finish_groups(target.parent)  # a killed group's renames first: its temporaries are files to put in place
    host = socket.gethostname()
    own = temporary_names(re.escape(target.name), re.escape(host), tag="[0-9a-f]{16}")
    swapping = os.path.lexists(journal_path(target))  # its backup is the only copy until the swap is recovered (a name
    # too long for a journal beside it: none)
    for path in target.parent.glob(f".{glob.escape(target.name)}.{glob.escape(host)}-*.tmp"):
        match = own.fullmatch(path.name)
        if match is None or _alive(int(match["pid"])) or (swapping and match["role"] == "old."):
            continue
        if match["role"] == "old." and path.is_dir() and not path.is_symlink() and any(path.iterdir()):
            continue  # a swap's backup whose journal is gone: it may be the only copy of an export, kept
        if match["tag"] != _tmp_tag(target.name, host, int(match["pid"]), create=False):
            continue  # not a name this tool made: a user's file, kept
        if match["role"] == "spent." and path.is_dir() and not path.is_symlink():
            put_aside(path, target)  # a replaced export a kill left half-removed: its own files only
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # a new export or file the killed run was writing: all its own
        else:
            with contextlib.suppress(OSError):  # a folder this user may not write: the leftover stays, harmless
                path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _checked_output(target: Path | str, kind: str | None, size: int) -> tuple[Path, str | None]:
    """`atomic_path`'s checks before anything is made: the kind, the path, its place, what it replaces, the space."""
    if kind is not None:
        kind = output_kind(kind, OUTPUT_KINDS, "marked")
    if not isinstance(target, Path):  # a caller's path: text (or a path-like giving text), never bytes or a number
        target = path_text(target, "the output path")
    check_file_text(target)
    target = Path(target)
    check_output_file(target, probe=False)  # the temporary made below is the write test
    if kind in PLACED_KINDS:  # a user's output, whoever calls the writer: never inside an artifact of the tool
        check_output_place(target)
    if kind is not None:
        check_replaceable_output(target, kind)
    if size:
        check_free_space(target, size)
    return target, kind


@contextlib.contextmanager
def atomic_path(target: Path | str, kind: str | None = None, size: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    With a `kind` (ownership.OUTPUT_KINDS) an existing `target` is replaced only if it carries this tool's mark
    for that kind, checked before and again after the block, and the new file must carry the mark itself.
    Inside `output_group()` the rename waits for the group's end, with the others. `size`: the bytes the block
    will write at most, checked against the free space there before anything is made.
    """
    target, kind = _checked_output(target, kind, size)
    made = _folders_to_make(target.parent)
    tmp: Path | None = None
    try:
        with uninterrupted():  # the temporary is made and named at once: a Ctrl-C cannot come between
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(target)
                fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent)
            except OSError as err:
                raise DipError(f"cannot write {target}: {err.strerror or err}") from None
            os.close(fd)
            tmp = Path(tmp_name)
        with _write_errors(target, tmp):
            yield tmp
        if not tmp.is_symlink():  # mkstemp makes 0600 (so does a writer that makes the file anew at the name, as
            os.chmod(tmp, 0o666 & ~_umask())  # safetensors does): the result reads like any new file
        if kind is not None:
            if not is_ours(tmp, kind):
                raise DipError(f"cannot write {target}: the new file lacks this tool's mark")
            check_replaceable_output(target, kind)  # still the tool's after the work
        group = _GROUP.pending
        if group is not None:
            group.append((tmp, target, kind, made))  # the group renames it, or removes it
            tmp, made = None, []
        else:
            with uninterrupted():
                _rename_into_place(tmp, target)
            made = []  # written: the folders made for it stay
    finally:
        with uninterrupted():  # a second Ctrl-C does not break into the clean-up
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            _remove_made(made)


def _rename_into_place(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError as err:
        raise DipError(f"cannot write {target}: {err.strerror or err}") from None


class _Group(threading.local):
    pending: list[tuple[Path, Path, str | None, list[Path]]] | None = None


_GROUP = _Group()


@contextlib.contextmanager
def output_group() -> Iterator[None]:
    """The files `atomic_path` writes in the block (a run's npz, grid and PNGs) are renamed into place together at
    its end, with Ctrl-C and SIGTERM held for the renames: a run that fails or is interrupted before then leaves
    none of them, and every earlier file as it was. Nested, the inner block joins the outer group."""
    if _GROUP.pending is not None:
        yield
        return
    pending: list[tuple[Path, Path, str | None, list[Path]]] = []
    journals: list[Path] = []
    _GROUP.pending, done = pending, False
    try:
        yield
        _GROUP.pending = None
        with _folders_locked([target.parent for _, target, _, _ in pending]):  # another run's group: before or after
            for _, target, kind, _ in pending:
                if kind is not None:
                    check_replaceable_output(target, kind)  # still the tool's after the work
            with uninterrupted():
                journals = _write_group_journals(pending) if len(pending) > 1 else []
                for tmp, target, _, _ in pending:
                    _rename_into_place(tmp, target)
                done = True
    finally:
        _GROUP.pending = None
        with uninterrupted():
            for tmp, _, _, made in reversed(pending):
                tmp.unlink(missing_ok=True)
                if not done:
                    _remove_made(made)
            for journal in journals:
                journal.unlink(missing_ok=True)


@contextlib.contextmanager
def _folders_locked(folders: Iterable[Path]) -> Iterator[None]:
    """An exclusive advisory lock (flock) on each folder an output group writes to, taken in one order: two runs'
    groups into the same folders check and rename one after the other, never interleaved (one run's npz beside the
    other's grid). Waiting for it can be interrupted; a platform or file system that takes no lock gets none."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        yield
        return
    fds: list[int] = []
    try:
        for folder in sorted({os.path.abspath(f) for f in folders}):
            try:
                fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                continue
            fds.append(fd)
            with contextlib.suppress(OSError):  # a file system without locks
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # the lock goes with it


GROUP_JOURNAL = "dip-export-group"  # what a group's journal is named as (`_tmp_prefix`'s host, pid and tag)
GROUP_MARK = "dip-export/output-group-journal"
MAX_GROUP_JOURNAL = 64 << 20  # a group of 10^5 PNGs lists ~25 MB of paths


def _group_journal_name(pid: int) -> str:
    host = socket.gethostname()
    return f".{GROUP_JOURNAL}.{host}-{pid}-{_tmp_tag(GROUP_JOURNAL, host, pid, create=True) or 'untagged'}.json"


def _write_group_journals(pending: list[tuple[Path, Path, str | None, list[Path]]]) -> list[Path]:
    """Before a group's renames: the list of them (each temporary and the file it becomes) in every folder the group
    writes to, so that a kill among the renames is finished by the next run that looks at any of those folders
    (`finish_groups`): the group lands whole, never half new and half old."""
    import json

    folders = sorted({os.path.abspath(target.parent) for _, target, _, _ in pending})
    entries = [{"tmp": os.path.abspath(tmp), "target": os.path.abspath(target), "kind": kind} for tmp, target, kind, _ in pending]
    text = json.dumps({MARK_KEY: GROUP_MARK, "folders": folders, "entries": entries})
    name, written = _group_journal_name(os.getpid()), []
    try:
        for folder in folders:
            fd, part = tempfile.mkstemp(prefix=_tmp_prefix(Path(folder) / name), suffix=".tmp", dir=folder)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(part, Path(folder) / name)
            written.append(Path(folder) / name)
    except OSError as err:
        for journal in written:
            journal.unlink(missing_ok=True)
        raise DipError(f"cannot write into {folder}: {err.strerror or err}") from None
    return written


def finish_groups(folder: Path) -> None:
    """Finish the renames of output groups that this user's runs, killed since, had begun in `folder`: every listed
    temporary still there becomes its file (where that file is still this tool's of its kind; a user's file put there
    since stays, and the temporary goes as a stale one). Only journals named with this user's tag for a process
    that no longer runs are read, and only temporaries named as that process's are renamed, within their folder."""
    from dip_export.untrusted import UntrustedFileError, parse_json

    host = socket.gethostname()
    named = re.compile(rf"\.{re.escape(GROUP_JOURNAL)}\.{re.escape(host)}-([0-9]{{1,10}})-([0-9a-f]{{16}})\.json")
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return
    for name in names:
        match = named.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        pid = int(match.group(1))
        if match.group(2) != _tmp_tag(GROUP_JOURNAL, host, pid, create=False):
            continue  # not a name this user's runs make: a user's file, kept
        journal = Path(folder) / name
        try:
            with journal.open("rb") as f:
                data = parse_json(f.read(MAX_GROUP_JOURNAL + 1), str(journal))
            _finish_group(data, pid)
        except (OSError, UntrustedFileError, TypeError, KeyError, AttributeError):
            continue  # not readable as a journal of this tool: kept, never acted on
        for other in data["folders"]:
            with contextlib.suppress(OSError, TypeError):
                (Path(other) / name).unlink(missing_ok=True)


def _finish_group(data: Any, pid: int) -> None:
    if data.get(MARK_KEY) != GROUP_MARK:
        raise KeyError(MARK_KEY)
    host = socket.gethostname()
    for entry in data["entries"]:
        tmp, target, kind = Path(entry["tmp"]), Path(entry["target"]), entry["kind"]
        tag = _tmp_tag(target.name, host, pid, create=False)
        own = temporary_names(re.escape(target.name), re.escape(host), str(pid), re.escape(str(tag)), role="")
        if tmp.parent != target.parent or not own.fullmatch(tmp.name) or tmp.is_symlink() or not tmp.is_file():
            continue  # renamed already, or not that run's own temporary: nothing to do
        try:
            if kind is not None:
                check_replaceable_output(target, kind)
            os.replace(tmp, target)
        except (DipError, OSError):  # what is at the target now stays; the temporary, that run's own, goes
            with contextlib.suppress(OSError):
                tmp.unlink()


HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the end of the block (a temporary made and named, a group of renames, a clean-up),
    then act as they would have. Where a signal is not Python's to handle here (off the main thread, ignored, set
    outside Python) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: object) -> None:
        got.append(signum)

    previous = {}
    for signum in HELD_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None and handler is not signal.SIG_IGN:
            previous[signum] = handler
            signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for held in dict.fromkeys(got):
            signal.raise_signal(held)


@contextlib.contextmanager
def atomic_dir(target: Path, *, problem_of: Callable[[Path], str | None]) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` only if the block succeeds.

    An existing `target` is replaced only if `problem_of` finds nothing against it (`check_replaceable_folder`).
    """
    target = Path(os.path.abspath(target))
    settle_swap(target, problem_of)
    check_replaceable_folder(target, problem_of)
    made = _folders_to_make(target.parent)
    tmp: Path | None = None
    done = False
    try:
        with uninterrupted():  # the temporary is made and named at once: a Ctrl-C cannot come between
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(target)
                tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
            except OSError as err:
                raise DipError(f"cannot write {target}: {err.strerror or err}") from None
        with _write_errors(target, tmp):
            yield tmp
        _normal_permissions(tmp)
        check_replaceable_folder(target, problem_of)  # still replaceable after the work
        with uninterrupted():  # the swap's renames run to their end
            _swap_in(tmp, target)
            done = True
    finally:
        with uninterrupted():  # a second Ctrl-C does not break into the clean-up
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if not done:
                _remove_made(made)


def _folders_to_make(folder: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` would make for `folder`, deepest first."""
    made = []
    while not os.path.lexists(folder) and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    return made


def _remove_made(made: list[Path]) -> None:
    """A failed output leaves no folder the run made for it (each only while empty: never anything else)."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            return


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind a failure: the error itself or one it was raised from (a library may wrap it)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None


def _inside(name: object, folder: Path) -> Path | None:
    """`name` (an OSError's filename) as a path inside `folder` (or `folder` itself), else None."""
    path = Path(os.path.abspath(os.fsdecode(name)))  # type: ignore[arg-type]
    base = Path(os.path.abspath(folder))
    return path.relative_to(base) if path == base or path.is_relative_to(base) else None


def write_failure(err: OSError, target: Path, tmp: Path) -> DipError:
    """One line for a write that failed: the output (the file inside it, by its name in the output) and why. A
    library that names no cause (numpy's `problem writing element ...`) on a full file system: no space left."""
    inside = _inside(err.filename, tmp) if err.filename else None
    name = target / inside if inside is not None else target
    if err.strerror:
        why = err.strerror[:1].lower() + err.strerror[1:]
    else:
        try:
            full = shutil.disk_usage(_existing_ancestor(tmp)).free < (1 << 20)
        except OSError:
            full = False
        why = "no space left on device" if full else f"{type(err).__name__}: {err}"
    return DipError(f"cannot write {name}: {why}; nothing was written")


@contextlib.contextmanager
def _write_errors(target: Path, tmp: Path) -> Iterator[None]:
    """An OSError while an output is written (ENOSPC and the like, from any library) is one line naming it."""
    try:
        yield
    except DipError:
        raise
    except Exception as err:
        found = _os_error_in(err)
        if found is None or (found.filename and _inside(found.filename, tmp) is None):
            raise  # not a write of this output (an input that vanished names itself)
        raise write_failure(found, target, tmp) from None


def check_space(needs: Iterable[tuple[Path, int]]) -> None:
    """Before any work: the file system of each output has room for what the run writes there (outputs on one
    file system added up; `ownership.check_free_space`, the one free-space check, with its margin)."""
    totals: dict[int, tuple[Path, int]] = {}
    for path, need in needs:
        anchor = _existing_ancestor(Path(os.path.abspath(path)).parent)
        try:
            device = os.stat(anchor).st_dev
        except OSError:
            continue
        first, total = totals.get(device, (Path(path), 0))
        totals[device] = (first, total + need)
    for path, need in totals.values():
        check_free_space(path, need)


def settle_swap(target: Path, problem_of: Callable[[Path], str | None]) -> None:
    """A swap of `target` a killed run left is finished or undone (`ownership.recover_swap`); a journal not
    provably this tool's is refused. Then the temporaries killed runs of this tool left beside it go
    (`remove_stale_temporaries`: the new export a swap was putting in place, a half-written one). Called before any
    work on a folder output, and by every reader of an export before it is read."""
    target = Path(os.path.abspath(target))
    recover_swap(target, _alive, problem_of)
    remove_stale_temporaries(target)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename `tmp` onto `target`; an old export goes to a uniquely named temporary first, then away."""
    try:
        if not target.exists():
            os.replace(tmp, target)
            return
        old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target) + "old.", suffix=".tmp", dir=target.parent))
    except OSError as err:
        raise DipError(f"cannot write {target}: {err.strerror or err}") from None
    swap_in(tmp, target, old, _tmp_prefix(target))  # under a journal naming `old`: a kill at any instant loses no export


def check_replaceable_folder(target: Path, problem_of: Callable[[Path], str | None]) -> None:
    """A folder output may be created, or replace a folder `problem_of` finds nothing against (for exports:
    `export.manifest.ownership_problem`, an earlier export of this tool file for file); nothing else is touched.
    Its name is one the file system takes (`check_output_name`), before anything is looked up."""
    check_output_name(target)
    target = Path(os.path.abspath(target))
    cwd, resolved = Path.cwd().resolve(), target.resolve()
    home = Path.home().resolve()
    if resolved in (cwd, home) or resolved in cwd.parents or resolved in home.parents:
        raise UsageError(f"{target}: refusing to replace the working folder, the home folder or one above them (name a new one)")
    if target.is_symlink():
        raise UsageError(f"{target} is a symlink; an output folder is never written through one (name another folder)")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target} exists and is not a folder; refusing to replace it (name a new folder)")
    check_output_place(target, "the output folder")
    if target.is_dir():
        remove_stale_in(target)
    problem = problem_of(target) if target.is_dir() and any(target.iterdir()) else None
    if problem:
        raise UsageError(
            f"{target} is not an export of this tool ({problem}); refusing to replace it (name a new or empty folder)"
        )
    check_output_name(target)
    check_writable_parent(target)


def enclosing_export(path: Path) -> Path | None:
    """The nearest folder above `path` that holds a manifest.json of this tool (its `format` names the tool),
    whoever wrote it; None if there is none. Looked up by name and after resolving symlinks."""
    from dip_export.untrusted import UntrustedFileError, read_json

    absolute = Path(os.path.abspath(path))
    seen: set[Path] = set()
    for parent in [*absolute.parents, *absolute.resolve().parents]:
        manifest = parent / MANIFEST_NAME
        if parent in seen or manifest.is_symlink() or not manifest.is_file():
            continue
        seen.add(parent)
        try:
            data = read_json(manifest, what="manifest")
        except (UntrustedFileError, DipError, OSError):
            continue  # not readable as one: not an export of this tool
        if isinstance(data, dict) and str(data.get("format", "")).startswith(EXPORT_FORMAT_PREFIX):
            return parent
    return None


SHARD_FOLDER_SUFFIX = ".npz.parts"  # OUT.npz.parts: the shard folder of a resumable or torchrun dip-sample
EXPORT_ROOT = Path("engines")  # where the tool makes its exports on the fly (relative to the working folder)
MANAGED_NAME = re.compile(r".+-[0-9]+x[0-9]+-[a-z0-9]+(?:-[a-z0-9]+)?")  # MODEL-HxW-KIND: a folder it exports into there
RESERVED = {  # under EXPORT_ROOT: the tool's own caches there (measure.autobackend.CACHE_FILE, yardstick.CACHE)
    "auto-backend.json": "the --backend auto cache",
    "yardstick": "the yardstick reference folder",
}
PACKAGE_FOLDER = Path(__file__).parent  # the installed package, its bundled demo model in it: never an output's place
ARTIFACT_FOLDER = "the folder of on-the-fly exports and caches"  # EXPORT_ROOT itself: no output takes its place


def artifact_around(path: Path) -> str | None:
    """The artifact of this tool `path` would lie inside or be, named (an export, a shard folder, an export folder
    the tool makes on the fly under engines/ with its calibration cache, the tool's own caches there: the --backend
    auto cache and the yardstick folder, which `path` may not be either, nor engines/ itself); None if none.
    Artifacts are replaced or read whole: nothing else goes inside one. Looked up by name and after resolving
    symlinks."""
    export = enclosing_export(path)
    if export is not None:
        return f"the export {export}"
    absolute = Path(os.path.abspath(path))
    package = PACKAGE_FOLDER.resolve()
    if package == absolute.resolve() or package in absolute.resolve().parents:
        return f"the installed package {PACKAGE_FOLDER} (its demo model among its files)"
    for parent in [*absolute.parents, *absolute.resolve().parents]:
        if parent.name.endswith(SHARD_FOLDER_SUFFIX):
            return f"the shard folder {parent}"
    root, resolved = (Path.cwd() / EXPORT_ROOT).resolve(), absolute.resolve()
    if resolved == root:
        return f"{ARTIFACT_FOLDER} {EXPORT_ROOT}"
    for name, what in RESERVED.items():
        if resolved == root / name or root / name in resolved.parents:
            return f"{what} {EXPORT_ROOT / name}"
    if root in resolved.parents:
        top = resolved.relative_to(root).parts
        if len(top) > 1 and MANAGED_NAME.fullmatch(top[0]):
            return f"the export folder {EXPORT_ROOT / top[0]} the tool makes on the fly"
    return None


def check_output_place(path: Path, what: str = "the output") -> None:
    """No output of any command lies inside an artifact of this tool, nor takes the place of one of its caches
    (`artifact_around`): it would be written once and block the artifact's next replacement or reading."""
    artifact = artifact_around(path)
    if artifact is not None and artifact.startswith((*RESERVED.values(), ARTIFACT_FOLDER)):
        raise UsageError(f"{what} {path} takes the place of {artifact}, which only the tool writes; name another place")
    if artifact is not None:
        raise UsageError(f"{what} {path} lies inside {artifact}, which holds only the tool's own files; name a place outside it")


def check_outputs(
    outputs: Iterable[tuple[str, Path | str | None]], *, make_key: bool = True, writes: Iterable[tuple[Path, int]] = ()
) -> None:
    """Every output of a run ((option or role, path) pairs; None: not written), before any work: none inside an
    artifact of this tool (`check_output_place`), each name one the file system takes
    (`ownership.check_output_name`), and all apart from each other and from the owner key
    (`ownership.check_outputs_apart`, which makes or reads the key unless `make_key` is False); room for what
    the run writes (`writes`: (output, estimated bytes) pairs, `check_space`)."""
    given = list(outputs)
    for what, path in given:  # names the file system takes, first: every later check looks paths up
        if path is not None:
            try:
                check_output_name(Path(path))
            except UsageError as err:
                raise UsageError(f"{what}: {err}") from None
    for what, path in given:
        if path is not None:
            check_output_place(Path(path), what)
    check_outputs_apart(given, make_key=make_key)
    check_space(writes)


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not os.path.exists(path) and path != path.parent:  # False, not an error, for a name too long
        path = path.parent
    return path


def check_writable_parent(path: Path, probe: bool = True) -> None:
    """The folder that will hold `path` exists or can be made there, and can be written (tried with a file
    of our own when `probe`)."""
    anchor = _existing_ancestor(Path(os.path.abspath(path)).parent)
    if not anchor.is_dir():
        raise UsageError(f"cannot write {path}: {anchor} is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: {anchor} is not writable")
    if probe:
        probe_write(anchor, path)


PROBE_NAME = "dip-export-probe"  # what a write probe's temporary is named beside (`_tmp_prefix`)


def probe_write(folder: Path, path: Path) -> None:
    """Make and remove an empty file of our own in `folder`: permissions alone miss read-only and virtual file systems.
    It is a tagged temporary (`_tmp_prefix`), made and removed with Ctrl-C and SIGTERM held: one a kill left is
    removed by the next probe there, or by any check of that folder as an output (`remove_stale_in`)."""
    probe = Path(folder) / PROBE_NAME
    with contextlib.suppress(OSError):
        remove_stale_temporaries(probe)
    with uninterrupted():
        try:
            fd, name = tempfile.mkstemp(prefix=_tmp_prefix(probe, create=False), suffix=".tmp", dir=folder)
        except OSError as err:
            why = err.strerror or type(err).__name__
            raise UsageError(f"cannot write {path}: {folder} does not take new files ({why})") from None
        os.close(fd)
        os.unlink(name)


def remove_stale_in(folder: Path) -> None:
    """The tool's own temporaries in `folder` that processes no longer running left (a kill): removed as
    `remove_stale_temporaries` removes them beside each name they were made for. A folder checked as an output
    is never refused for what the tool itself left there."""
    own = temporary_names(host=re.escape(socket.gethostname()), tag="[0-9a-f]{16}")
    finish_groups(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for target in sorted({m["target"] for name in names if (m := own.fullmatch(name))}):
        with contextlib.suppress(OSError):
            remove_stale_temporaries(Path(folder) / target)


def check_output_file(path: Path, probe: bool = True) -> None:
    """A file output may be created or replace a regular file; never a folder. Checked before any work (and for
    every file the tool writes, its own inside its artifacts too: where a command's outputs may go is
    `check_outputs`)."""
    check_file_text(path)
    path = Path(path)
    check_output_name(path)
    if path.is_symlink():
        raise UsageError(f"{path} is a symlink; an output is never written through one (name another output)")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; a file goes there (name a file)")
    if path.exists() and not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file")
    check_writable_parent(path, probe)


def check_output_folder(folder: Path, allowed: Callable[[str], bool], kind: str | None = None) -> None:
    """A folder output may be new, empty, or hold only files `allowed` names (this run replaces them), each of
    them a `kind` file this tool writes (ownership.check_replaceable_output) when a kind is given."""
    folder = Path(folder)
    check_output_place(folder, "the output folder")
    if folder.is_symlink():
        raise UsageError(f"{folder} is a symlink; an output folder is never written through one (name another folder)")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    if folder.is_dir():
        remove_stale_in(folder)
    if folder.is_dir() and kind is not None:
        for path in sorted(folder.iterdir()):
            if allowed(path.name):
                check_replaceable_output(path, kind)
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if not (allowed(p.name) and p.is_file()))
        if foreign:
            raise UsageError(
                f"{folder} holds files this run would not replace ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); use a new or empty folder"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into {folder}: not writable")
        return
    check_writable_parent(folder)  # it does not exist: its nearest existing ancestor is what must take it (named as given)


def _normal_permissions(folder: Path) -> None:
    """mkdtemp and some writers make 0700 / 0600; the result should read like anything else the user makes."""
    mask = _umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def check_pictures(images: object, what: str, ndim: int = 4) -> np.ndarray:
    """What every picture writer takes: a numpy array of uint8 RGB pixels, (N, H, W, 3) (`ndim` 4) or (H, W, 3)
    (`ndim` 3), no side empty; anything else (floats, objects, 4 channels, a list) is refused before a byte is written."""
    if type(images) is not np.ndarray:
        raise UsageError(f"{what} must be a numpy array of uint8 pixels, got {type(images).__name__}")
    shape = "(N, H, W, 3)" if ndim == 4 else "(H, W, 3)"
    if images.dtype != np.uint8 or images.ndim != ndim or images.shape[-1] != 3 or 0 in images.shape:
        shown = "x".join(str(n) for n in images.shape[:6]) or "a scalar"
        raise UsageError(f"{what} must be uint8 RGB pixels {shape}, got {images.dtype} {shown}")
    return images


def save_npz(path: Path, images: np.ndarray) -> None:
    """ADM layout: `arr_0` uint8 (N, H, W, 3); the zip comment marks it as this tool's samples."""
    import zipfile

    images = check_pictures(images, "samples for an .npz")

    with atomic_path(path, "npz", size=images.nbytes + (1 << 16)) as tmp:  # stored, not compressed: its bytes
        with tmp.open("wb") as f:
            np.savez(f, arr_0=images)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.comment = NPZ_COMMENT


def save_json(path: Path, data: dict[str, object], kind: str) -> None:
    """A JSON file of `kind` (ownership.JSON_KINDS), its first field marking it as this tool's of that kind: it
    replaces only a file carrying the same mark."""
    import json

    kind = output_kind(kind, JSON_KINDS, "JSON")
    if type(data) is not dict:
        raise UsageError(f"a JSON output holds a dict, got {type(data).__name__}")
    try:  # bounded before any text is made: a dict holding itself, or one shared 2^60 times over, is refused
        json_items(data, MAX_JSON_BYTES // 4)  # each value takes 4 bytes or more of the indented text
    except JsonShapeError as err:
        raise UsageError(f"cannot write {path}: its data are no JSON its reader takes ({err})") from None
    if unusable_text(data):  # a name decoded from bytes that are not UTF-8, say: the reader would refuse the file
        raise DipError(f"cannot write {path}: a text in it holds a NUL character or a lone surrogate")
    marked: dict[str, object] = {MARK_KEY: mark(kind)}  # the first field
    marked.update(data)
    marked[MARK_KEY] = mark(kind)
    try:  # before any file is made: what the reader takes (no NaN, no other type, bounded nesting)
        text = json.dumps(marked, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError, RecursionError) as err:
        raise UsageError(f"cannot write {path}: its data are not JSON values ({str(err).splitlines()[0][:100]})") from None
    _check_readable_json(path, text)
    with atomic_path(path, kind, size=len(text.encode("utf-8", "surrogatepass"))) as tmp:
        tmp.write_text(text)


def _check_readable_json(path: Path, text: str) -> None:
    """JSON text the tool's own reader takes (`untrusted.read_json`: its size, nesting, each key once), checked
    before any file is made: the tool never writes a file it would then refuse to read."""
    from dip_export.untrusted import MAX_JSON_BYTES, UntrustedFileError, parse_json

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_JSON_BYTES:
        raise UsageError(f"cannot write {path}: its JSON would take {size} bytes, more than its reader takes ({MAX_JSON_BYTES})")
    try:
        parse_json(text, "")
    except UntrustedFileError as err:
        raise UsageError(f"cannot write {path}: its reader would refuse it ({str(err).removeprefix(': ')})") from None


def output_kind(kind: Any, kinds: Collection[str], what: str) -> str:
    """One of `kinds`, as plain text: a caller's str subclass is read through str's own slot (none of its methods
    runs, its hash neither)."""
    kind = exact_str(kind)
    if type(kind) is not str or kind not in kinds:
        shown = plain_value(kind) if type(kind) is str else type(kind).__name__
        raise UsageError(f"no {what} output kind {shown}; one of {', '.join(kinds)}")
    return kind


def png_info(kind: str) -> dict[str, str]:
    """What a PNG writer (matplotlib's savefig metadata) records as this tool's mark for `kind` (PNG_KINDS)."""
    if kind not in PNG_KINDS:
        raise ValueError(f"no PNG output kind {kind!r}")
    return {PNG_KEY: mark(kind)}


def remove_output(path: Path, kind: str) -> None:
    """Delete an earlier output of `kind` (a grid that would not match new samples): only one this tool wrote."""
    check_replaceable_output(path, kind)
    Path(path).unlink(missing_ok=True)


def image_grid(images: np.ndarray, columns: int | None = None, min_cell: int = GRID_MIN_CELL) -> np.ndarray:
    """(N, H, W, 3) uint8 -> one (rows*H', cols*W', 3) picture with 2-pixel gutters.

    Ten images a row (fewer when there are fewer images); images smaller than `min_cell` pixels are
    enlarged by a whole factor with nearest-neighbour sampling, so pixels stay sharp squares.
    """
    from dip_export.settings import exact_int

    n, h, w, c = check_pictures(images, "images for a grid").shape
    columns = None if columns is None else exact_int(columns, "grid columns", 1, 1 << 20)
    min_cell = exact_int(min_cell, "grid cell size", 1, 4096)
    check_memory(grid_bytes(n, h, w, min_cell, columns or GRID_COLUMNS), f"a grid picture of {n} images of {h}x{w}")
    scale = max(1, -(-min_cell // max(h, w)))
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    cols = max(1, min(n, columns or GRID_COLUMNS))
    rows = -(-n // cols)
    pad = GRID_GUTTER
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = img
    return grid


def save_png(path: Path, image: np.ndarray, kind: str) -> None:
    """A minimal PNG writer (RGB, 8-bit), so pictures need no imaging library; a tEXt chunk marks it as this tool's
    of `kind` (ownership.PNG_KINDS: a samples grid, a sample image): it replaces only a PNG of the same kind."""
    import struct
    import zlib

    kind = output_kind(kind, PNG_KINDS, "PNG")
    h, w, _ = check_pictures(image, "a PNG's picture", ndim=3).shape
    if max(h, w) >= 1 << 31:
        raise UsageError(f"a PNG's sides are below 2^31 pixels, got {h}x{w}")
    check_memory(2 * image.nbytes, f"writing a PNG of {h}x{w}")  # its rows joined, then compressed
    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", png_text(kind))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))  # fmt: skip
    with atomic_path(path, kind, size=len(data)) as tmp:
        tmp.write_bytes(data)
