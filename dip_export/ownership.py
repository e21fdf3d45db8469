"""What the tool may replace, proven rather than guessed; and the crash-safe swap of an export.

A folder is the tool's to replace only if it holds exactly the files its own manifest lists, with
their sizes and sha256, and nothing else (`owned_export`). Paths are compared after resolving
symlinks, and an output may not be or contain an input. An old export is swapped for a new one
under a journal naming the backup: after a kill at any instant, the next run restores the old
export or finishes the new one, and never deletes the only copy. Output names (length,
writability, free space) are checked before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dip_export.errors import DipError, UsageError

MANIFEST_NAME = "manifest.json"
TEMP_OVERHEAD = 64  # `.NAME.HOST-PID.XXXXXXXX.tmp` around an output's name (host names are capped below)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_contents(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file below `folder` but its manifest: relative POSIX name -> size and sha256."""
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_NAME or (path.is_dir() and not path.is_symlink()):
            continue
        if path.is_symlink() or not path.is_file():
            raise DipError(f"{path}: not a regular file; an export holds only files")
        out[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def check_not_input(output: Path, inputs: Iterable[Path | str | None], what: str = "output") -> None:
    """An output is never an input, a folder holding one, or inside an input folder (an export): paths are
    compared after resolving symlinks."""
    out = Path(output).resolve()
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        source = Path(item).resolve()
        if source == out or out in source.parents:
            raise UsageError(f"the {what} {output} is or holds the input {item}; name another {what}")
        if source.is_dir() and source in out.parents:
            raise UsageError(f"the {what} {output} lies inside the input folder {item}; name another {what}")


def _is_npz(head: bytes, path: Path) -> bool:
    import zipfile

    if not head.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return all(name.endswith(".npy") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _is_json(head: bytes, path: Path) -> bool:
    from dip_export.untrusted import UntrustedFileError, read_json

    if head.lstrip()[:1] not in (b"{", b"["):
        return False
    try:
        read_json(path, what="earlier output")
    except UntrustedFileError:
        return False
    return True


_OUTPUT_KINDS = {
    "npz": _is_npz,  # np.savez: a zip of .npy arrays
    "png": lambda head, path: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "json": _is_json,
    "safetensors": lambda head, path: len(head) > 8 and head[8:9] == b"{",
}


def check_replaceable_output(path: Path | str, kind: str) -> None:
    """A file the user names (or one derived from it) replaces an existing file only if that holds what this tool
    writes there (`kind`: npz, png, json, safetensors): an earlier result, not a user's notes or pictures."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file; refusing to replace it (name another output)")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise UsageError(f"{path}: cannot read the existing file ({err.strerror or err}); name another output") from None
    if not _OUTPUT_KINDS[kind](head, path):
        raise UsageError(f"{path} exists and is not a {kind} file this tool writes; refusing to replace it (name another output)")


def check_output_name(path: Path) -> None:
    """The name fits the file system with the temporary's additions; the whole path too."""
    path = Path(os.path.abspath(path))
    anchor = path.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    if len(os.fsencode(path.name)) + TEMP_OVERHEAD > name_max:
        raise UsageError(f"{path.name[:60]}...: the output name is too long (at most {name_max - TEMP_OVERHEAD} bytes here)")
    if len(os.fsencode(str(path))) + TEMP_OVERHEAD > path_max:
        raise UsageError(f"the output path is too long (at most {path_max - TEMP_OVERHEAD} bytes here)")


def check_free_space(path: Path, need: int) -> None:
    """Enough free space where `path` goes for `need` bytes (plus a margin), before any work."""
    anchor = Path(os.path.abspath(path)).parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    try:
        free = shutil.disk_usage(anchor).free
    except OSError:
        return
    if need + (16 << 20) > free:
        raise DipError(f"{anchor} has {free / 2**20:.0f} MiB free; this run writes about {need / 2**20:.0f} MiB")


# ---------------------------------------------------------------- the swap


def journal_path(target: Path) -> Path:
    return target.parent / f".{target.name}.swap.json"


def _host() -> str:
    return socket.gethostname()[:32]


def swap_in(tmp: Path, target: Path, backup: Path) -> None:
    """Put the finished folder `tmp` at `target`; an old `target` goes to the empty folder `backup` under a journal."""
    journal = journal_path(target)
    _write_journal(journal, {"backup": backup.name, "host": _host(), "pid": os.getpid()})
    try:
        os.replace(target, backup)
    except OSError as err:
        backup.rmdir()
        journal.unlink(missing_ok=True)
        raise DipError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        os.replace(tmp, target)
    except OSError as err:
        os.replace(backup, target)  # the earlier export goes back where it was
        journal.unlink(missing_ok=True)
        raise DipError(f"cannot write {target}: {err.strerror or err}") from None
    shutil.rmtree(backup, ignore_errors=True)
    journal.unlink(missing_ok=True)


def _write_journal(journal: Path, data: dict[str, Any]) -> None:
    """Written and synced before the first rename: a journal cut short means the swap had not begun."""
    with open(journal, "w") as f:
        f.write(json.dumps(data))
        f.flush()
        os.fsync(f.fileno())


def recover_swap(target: Path, alive: Any) -> None:
    """Finish or undo a swap a killed run left: the new export stays if it is in place, else the old comes back."""
    from dip_export.untrusted import Field, Schema, UntrustedFileError, read_json

    journal = journal_path(target)
    if not journal.exists() and not journal.is_symlink():
        return
    schema = Schema({"backup": Field(str, max_len=255), "host": Field(str, max_len=64), "pid": Field(int, lo=0, hi=2**31)})
    try:
        data = read_json(journal, folder=target.parent, schema=schema, what="swap journal", max_bytes=4096)
    except UntrustedFileError as err:
        if os.path.lexists(target) and not journal.is_symlink():
            journal.unlink()  # cut short while being written: nothing had been moved yet
            return
        raise DipError(f"{err}; look at {target.parent} and delete {journal.name} when it is in order") from None
    if data["host"] == _host() and alive(data["pid"]):
        raise DipError(f"another run (pid {data['pid']}) is replacing {target}; wait for it")
    own = re.compile(rf"\.{re.escape(target.name)}\.[^/]+\.old\.[a-z0-9_]{{8}}\.tmp")
    backup = target.parent / data["backup"]
    if not own.fullmatch(data["backup"]):
        raise DipError(f"{journal}: names a backup that is not this tool's; delete {journal.name} when {target} is in order")
    if os.path.lexists(target):
        if backup.is_dir() and not backup.is_symlink():
            shutil.rmtree(backup)  # the new export was in place: the old one was on its way out
    elif backup.is_dir() and not backup.is_symlink():
        os.replace(backup, target)  # killed between the renames: the old export comes back
    journal.unlink()
