"""What the tool may replace, proven rather than guessed; and the crash-safe swap of an export.

A folder is the tool's to replace only if it holds exactly the files its own manifest lists, with
their sizes and sha256, and nothing else (`owned_export`). A single file is the tool's to replace
only if it carries this tool's mark for its kind (`OUTPUT_KINDS`: a zip comment, a PNG text chunk,
a JSON field or safetensors metadata key naming the kind, `mark`), which every writer of that kind puts
there: a bench report never replaces the --backend auto cache, nor the cache a report; a bench plot never
replaces a samples grid or a sample image, nor they each other. Paths are
compared after resolving symlinks, an output that is a symlink is refused (never followed), and an
output may not be or contain an input. An old export is swapped for a new one under a journal
naming the backup: after a kill at any instant, the next run restores the old export or finishes
the new one, and never deletes the only copy. Output names (length, writability, free space) are
checked before any work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from dip_export.errors import DipError, KeptFilesWarning, UsageError
from dip_export.text import visible
from dip_export.untrusted import read_regular

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


def remove_listed(folder: Path) -> list[str]:
    """Delete an export of this tool that a swap has put aside, file by file: each file its manifest lists, while it
    is still as listed (a regular file of that size and sha256), then the manifest, then the folders left empty.
    What is left (a file someone put there, or changed, after the last check) is not the tool's to delete: its
    names are returned, sorted, and it stays. A manifest that cannot be read leaves everything in place."""
    from dip_export.untrusted import UntrustedFileError, read_json

    try:
        data = read_json(folder / MANIFEST_NAME, folder=folder, what="manifest")
        listed = data["contents"] if isinstance(data, dict) and isinstance(data.get("contents"), dict) else {}
    except (UntrustedFileError, DipError, OSError):
        listed = {}
    for rel, entry in listed.items():
        path = folder / rel
        same = isinstance(entry, dict) and not path.is_symlink() and path.is_file()
        if same and path.stat().st_size == entry.get("size") and file_sha256(path) == entry.get("sha256"):
            path.unlink()
    if listed:
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
    for root, dirs, _ in sorted(os.walk(folder, topdown=False), key=lambda walked: -len(walked[0])):
        for name in dirs:
            with contextlib.suppress(OSError):  # a folder still holding something stays
                os.rmdir(os.path.join(root, name))
    left = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")) if folder.is_dir() else []
    if not left and folder.is_dir():
        folder.rmdir()
    return left


def unlisted_entries(folder: Path, listed: Iterable[str]) -> list[str]:
    """Every entry below `folder` a manifest listing `listed` does not account for, sorted: a file, link or
    anything else not listed, and a folder (empty or not) that holds no listed file. The manifest itself is
    accounted for. Raises OSError when the folder cannot be listed."""
    names = set(listed) | {MANIFEST_NAME}
    holders = {parent.as_posix() for name in names for parent in Path(name).parents if parent != Path(".")}
    found: list[str] = []

    def fail(err: OSError) -> None:
        raise err

    for root, dirs, files in os.walk(folder, onerror=fail):  # never into a linked folder
        base = Path(root).relative_to(folder)
        for name in dirs:
            rel = (base / name).as_posix()
            linked = os.path.islink(os.path.join(root, name))
            if (linked and rel not in names) or (not linked and rel not in holders):
                found.append(rel)
        found += [(base / name).as_posix() for name in files if (base / name).as_posix() not in names]
    return sorted(found)


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


def check_outputs_apart(outputs: Iterable[tuple[str, Path | str | None]], *, make_key: bool = True) -> None:
    """The outputs of one run ((option or role, path) pairs; None: not written) are all different, and none is
    inside another (a PNG folder that is the shard folder, an npz inside the PNG folder or an export folder): such
    a run would pass once and be refused the next time, or write over its own work. The owner key is one of the
    paths kept apart (the run itself would make it, or write, where the other goes), and is obtained here, made or
    read with all its checks (`owner_key`), so that no problem of it surfaces after the work; `make_key` False: a
    check made before all the outputs are known, which reads a key that exists but makes none (the later, complete
    check makes it). Paths are compared after resolving symlinks; before any work."""
    given = [(what, Path(os.path.abspath(path))) for what, path in outputs if path is not None]
    for i, (what, path) in enumerate(given):
        for other, second in given[i + 1 :]:
            a, b = path.resolve(), second.resolve()
            if a == b:
                raise UsageError(f"{what} {path} and {other} {second} are the same; name two different outputs")
            inner = (what, path, other, second) if b in a.parents else (other, second, what, path) if a in b.parents else None
            if inner:
                raise UsageError(f"{inner[0]} {inner[1]} lies inside {inner[2]} {inner[3]}; name outputs apart from each other")
    check_key_apart(given)
    owner_key(create=make_key)


# ---------------------------------------------------------------- the owner key of export manifests

KEY_ENV = "DIP_EXPORT_KEY_FILE"  # overrides where the owner key lives


def owner_key_path() -> Path:
    """$DIP_EXPORT_KEY_FILE, else $XDG_CONFIG_HOME/dip-export/owner.key, else ~/.config/dip-export/owner.key."""
    given = os.environ.get(KEY_ENV)
    if given:
        return Path(given)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "dip-export" / "owner.key"


def _key_chooser() -> str:
    """What chose the owner key's path, for its refusals: naming a variable that is not set (or not the one that
    chose it) would send the user to the wrong place."""
    if os.environ.get(KEY_ENV):
        return KEY_ENV
    return "XDG_CONFIG_HOME" if os.environ.get("XDG_CONFIG_HOME") else "the home folder"


def _key_hint() -> str:
    """What chose the owner key's path and how to choose another."""
    chooser = _key_chooser()
    if chooser == KEY_ENV:
        return f"{KEY_ENV} names it; set it to another place"
    return f"placed by {chooser}; set {KEY_ENV} to choose another place"


def check_key_apart(outputs: Iterable[tuple[str, Path]]) -> None:
    """The owner key is not an output of the run, nor inside one, nor holds one: it is made (or kept) at its path
    while the run writes the others."""
    given = owner_key_path()
    key = Path(os.path.abspath(given)).resolve()
    chooser = _key_chooser()  # the lines are capped at 300 characters: the usual case (the variable set) adds nothing
    hint = "" if chooser == KEY_ENV else f" (set {KEY_ENV} to choose another place)"
    for what, path in outputs:
        out = Path(os.path.abspath(path)).resolve()
        if key == out or out in key.parents:
            raise UsageError(f"the owner key {given} ({chooser}) is or lies inside {what} {path}; keep the key elsewhere{hint}")
        if key in out.parents:
            raise UsageError(f"{what} {path} lies inside the owner key path {given} ({chooser}); keep the key elsewhere{hint}")


def owner_key(create: bool) -> bytes | None:
    """This user's secret for marking manifests (made on first use when `create`); None if there is none yet."""
    path = owner_key_path()
    if not os.path.lexists(path):
        if not create:
            return None
        _create_key(path)
    if path.is_symlink() or not path.is_file():
        raise DipError(f"{path}: the owner key is not a regular file; move it away ({_key_hint()})")
    info = path.stat()
    if info.st_mode & 0o077 or info.st_uid != os.getuid():
        raise DipError(f"{path}: the owner key is not yours alone (mode 600, your own); fix it or move it away")
    text = read_regular(path, None, 100, "owner key") if info.st_size <= 100 else b""  # a larger file is no key: unread
    if not re.fullmatch(rb"[0-9a-f]{64}\n?", text):
        raise DipError(f"{path}: not an owner key of this tool (64 hex digits); move it away to make a new one")
    return bytes.fromhex(text[:64].decode())


def _create_key(path: Path) -> None:
    """A new random key, mode 600, appearing whole: written beside it, then linked to its name (a race keeps one)."""
    import secrets
    import tempfile

    anchor = path.parent
    while not os.path.lexists(anchor) and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise DipError(f"cannot make the owner key {path}: {anchor} is not a folder ({_key_hint()})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".owner.key.", suffix=".tmp", dir=path.parent)  # mode 600
    except OSError as err:
        raise DipError(f"cannot make the owner key {path}: {err.strerror or err} ({_key_hint()})") from None
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
        os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        pass  # another run made it first: its key is the key
    except OSError as err:
        raise DipError(f"cannot make the owner key {path}: {err.strerror or err} ({_key_hint()})") from None
    finally:
        os.unlink(tmp)


def contents_mac(contents: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of a manifest's file list (names, sizes, sha256) under this user's key."""
    import hmac

    text = json.dumps(contents, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def mac_problem(contents: dict[str, Any], mac: str) -> str | None:
    """Why a manifest's mark does not prove this user's tool wrote its file list (None: it does)."""
    import hmac

    try:
        key = owner_key(create=False)
    except DipError as err:
        return str(err)
    given = mac.encode("utf-8", "surrogatepass")  # any text a manifest holds is compared as bytes
    if key is None or not hmac.compare_digest(contents_mac(contents, key).encode(), given):
        return "its manifest carries no valid mark of this user's tool (made by hand, by another user or an older version)"
    return None


# ---------------------------------------------------------------- the marks of single-file outputs

MARK = "dip-export"  # this tool's name in every mark, which names the kind too (`mark`)
NPZ_COMMENT = b"dip-export samples v1"  # the zip comment of a samples .npz
NPZ_MEMBERS = ("arr_0.npy",)  # and exactly these members (ADM layout)
PNG_KEY = "Software"  # the keyword of the PNG tEXt chunk holding `mark(kind)`
MARK_KEY = "written_by"  # top-level JSON field, safetensors metadata key: `mark(kind)`
MAX_HEADER_BYTES = 100 << 20  # a safetensors header larger than this is no file of ours

JSON_KINDS = {"bench-report": "bench JSON report", "auto-backend-cache": "--backend auto cache"}  # kind -> what it is
SAFETENSORS_KINDS = {"checkpoint": "safetensors checkpoint"}
PNG_KINDS = {"samples-grid": "samples grid", "sample-image": "sample image (--png-dir)", "bench-plot": "dip-bench plot"}


def mark(kind: str) -> str:
    """The value of MARK_KEY in a JSON or safetensors output of `kind`, or of the PNG_KEY text of a PNG: the tool
    and the kind, e.g. `dip-export/bench-report`, `dip-export/samples-grid`. A file carrying another kind's mark,
    or the bare `dip-export` of earlier versions, is not this kind's to replace."""
    if kind not in JSON_KINDS and kind not in SAFETENSORS_KINDS and kind not in PNG_KINDS:
        raise ValueError(f"no marked output kind {kind!r}")
    return f"{MARK}/{kind}"


def _npz_is_ours(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return archive.comment == NPZ_COMMENT and tuple(archive.namelist()) == NPZ_MEMBERS


def png_text(kind: str) -> bytes:
    """The data of the PNG tEXt chunk marking a PNG of `kind` (PNG_KINDS) as this tool's: `Software\\0dip-export/KIND`."""
    if kind not in PNG_KINDS:
        raise ValueError(f"no PNG output kind {kind!r}")
    return PNG_KEY.encode() + b"\x00" + mark(kind).encode()


def _png_is(kind: str) -> Callable[[Path], bool]:
    def is_ours(path: Path) -> bool:
        """A PNG whose chunks (walked by their lengths, never decoded) include the tEXt `png_text(kind)` before
        the image data."""
        text = png_text(kind)
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            size = os.fstat(f.fileno()).st_size
            while f.tell() + 12 <= size:
                length, tag = struct.unpack(">I4s", f.read(8))
                if tag == b"tEXt" and length == len(text):
                    if f.read(length) == text:
                        return True
                    f.seek(4, os.SEEK_CUR)
                    continue
                if tag in (b"IDAT", b"IEND"):  # the mark comes before the image data
                    return False
                f.seek(length + 4, os.SEEK_CUR)
        return False

    return is_ours


def _json_is(kind: str) -> Callable[[Path], bool]:
    def is_ours(path: Path) -> bool:
        from dip_export.untrusted import read_json

        data = read_json(path, what="earlier output")
        return isinstance(data, dict) and data.get(MARK_KEY) == mark(kind)

    return is_ours


def _safetensors_is(kind: str) -> Callable[[Path], bool]:
    def is_ours(path: Path) -> bool:
        from dip_export.untrusted import parse_json

        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return False
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, os.fstat(f.fileno()).st_size - 8):
                return False
            header = parse_json(f.read(length), str(path))
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        return isinstance(meta, dict) and meta.get(MARK_KEY) == mark(kind)

    return is_ours


OUTPUT_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {  # kind -> (what it is, whether a file carries its mark)
    "npz": ("samples .npz", _npz_is_ours),
    **{kind: (what, _png_is(kind)) for kind, what in PNG_KINDS.items()},
    **{kind: (what, _json_is(kind)) for kind, what in JSON_KINDS.items()},
    **{kind: (what, _safetensors_is(kind)) for kind, what in SAFETENSORS_KINDS.items()},
}


def is_ours(path: Path | str, kind: str) -> bool:
    """A regular file (not a symlink) carrying this tool's mark for `kind`; anything unreadable or malformed is not."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return OUTPUT_KINDS[kind][1](path)
    except (OSError, ValueError, EOFError, RecursionError, DipError, zipfile.BadZipFile, struct.error):
        return False  # unreadable or malformed: not provably ours


def check_replaceable_output(path: Path | str, kind: str) -> None:
    """A file the user names (or one derived from it) replaces an existing file only if that carries this tool's
    mark for `kind` (OUTPUT_KINDS: npz, a PNG, JSON or safetensors kind): proof that the tool wrote it, not a
    user's notes or pictures. A symlink is never followed nor replaced."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink():
        raise UsageError(f"{path} is a symlink; an output is never written through one (name another output)")
    if not path.is_file():
        raise UsageError(f"{path} exists and is not a regular file; refusing to replace it (name another output)")
    if not os.access(path, os.R_OK):
        raise UsageError(f"{path}: cannot read the existing file; name another output")
    if not is_ours(path, kind):
        what = OUTPUT_KINDS[kind][0]
        raise UsageError(f"{path} exists and is not a {what} this tool wrote; refusing to replace it (name another output)")


MAX_NEW_FOLDERS = 32  # folders an output path may create below the nearest existing one


def check_file_text(text: Path | str, what: str = "the output") -> None:
    """A file's name as typed: text ending in '/' (or '/.') names a folder, never a file (as the file system reads
    it); a Path has already dropped the slash, so this sees only text."""
    if isinstance(text, str) and (text.endswith("/") or text.endswith("/.") or text in (".", "..")):
        raise UsageError(f"{what} {text} names a folder (it ends with '/'); a file goes there (drop the '/')")
    if "\x00" in str(text):  # a Path holds one as given; no file system takes it
        raise UsageError(f"{what}'s path holds a NUL character; no file can be named so")


def check_output_name(path: Path) -> None:
    """The name fits the file system with the temporary's additions; the whole path too. Every component is
    measured before any is looked up (a lookup of a name too long fails with the OS's own error). A '..' after a
    folder's name (`o/sub/../x.npz`) is refused: read by name it drops `sub`, the file system goes through it (a
    folder to make, a link to follow); leading ones (`../x.npz`) are plain."""
    parts = Path(path).parts
    if any(part == ".." and before not in ("..", os.sep) for before, part in itertools.pairwise(parts)):
        raise UsageError(f"{visible(str(path), 200)}: the output path goes into a folder and back out ('..' after a "
                         "folder's name); name it without")  # fmt: skip
    path = Path(os.path.abspath(path))
    try:
        raw = os.fsencode(str(path))
    except UnicodeError:
        raise UsageError("the output path is not text the file system can encode") from None
    try:  # the tool writes its outputs' names into journals, tags and manifests as UTF-8 text
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{visible(str(path), 200)}: the output path holds bytes that are not UTF-8 text; "
                         "name it in UTF-8") from None  # fmt: skip
    for part in raw.split(b"/")[:-1]:
        if len(part) > 255:
            raise UsageError(f"{os.fsdecode(part)[:60]}...: a folder name in the output path is too long (at most 255 bytes)")
    anchor = path.parent
    while not os.path.exists(anchor) and anchor != anchor.parent:  # False, not an error, for a name too long
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
    to_make = path.parent.relative_to(anchor).parts if path.parent != anchor else ()
    if len(to_make) > MAX_NEW_FOLDERS:
        raise UsageError(f"the output path would need {len(to_make)} new nested folders (at most {MAX_NEW_FOLDERS})")
    for folder in to_make:
        if len(os.fsencode(folder)) > name_max:
            raise UsageError(f"{folder[:60]}...: a folder name in the output path is too long (at most {name_max} bytes here)")


def check_free_space(path: Path, need: int) -> None:
    """Enough free space where `path` goes for `need` bytes (plus a margin), before any work."""
    anchor = Path(os.path.abspath(path)).parent
    while not os.path.exists(anchor) and anchor != anchor.parent:  # False, not an error, for a name too long
        anchor = anchor.parent
    try:
        free = shutil.disk_usage(anchor).free
    except OSError:
        return
    if need + (16 << 20) > free:
        raise DipError(
            f"{anchor} has {_size(free)} free; this run writes about {_size(need)} there (and keeps "
            f"{_size(16 << 20)} spare): nothing was written"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 10 << 20 else f"{n / 2**10:.0f} KiB"


# ---------------------------------------------------------------- the swap


def journal_path(target: Path) -> Path:
    return target.parent / f".{target.name}.swap.json"


def _host() -> str:
    return socket.gethostname()[:32]


def swap_in(tmp: Path, target: Path, backup: Path, prefix: str | None = None) -> None:
    """Put the finished folder `tmp` at `target`; an old `target` goes to the empty folder `backup` under a journal."""
    journal = journal_path(target)
    try:
        fields = _journal_fields(target, backup.name, _host(), os.getpid(), folder_fingerprint(tmp))
        _write_journal(journal, fields, prefix)  # named as io's temporaries
    except OSError as err:
        backup.rmdir()
        raise DipError(f"cannot write {journal}: {err.strerror or err} (a file or link of that name is in the way)") from None
    try:
        os.replace(target, backup)
    except OSError as err:
        backup.rmdir()
        journal.unlink(missing_ok=True)
        raise DipError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        os.replace(tmp, target)
    except OSError as err:
        try:
            os.replace(backup, target)  # the earlier export goes back where it was
        except OSError:  # something was put at the export's name meanwhile: both exports kept, the journal too
            raise DipError(f"{target}: something was put at this name while the export was being replaced; the "
                           f"earlier export is kept in {backup.name}; move {target.name} away and run again (the next "
                           "run puts the earlier export back)") from None  # fmt: skip
        journal.unlink(missing_ok=True)
        raise DipError(f"cannot write {target}: {err.strerror or err}") from None
    spent = backup.with_name(".spent.".join(backup.name.rsplit(".old.", 1)))  # replaced: the tool's to remove
    try:
        os.replace(backup, spent)
    except OSError:
        spent = backup
    journal.unlink(missing_ok=True)  # after: a backup (`.old.`) without its journal is kept, it may be the only copy
    put_aside(spent, target)  # a kill in the middle: the next run that writes or reads the export finishes it


def put_aside(backup: Path, target: Path) -> None:
    """The old export a swap replaced goes, its own files only (`remove_listed`); anything put into it while it was
    being replaced stays, under a plain name beside the new export (`NAME.kept-PID`), and is said."""
    left = remove_listed(backup)
    if left:
        kept = target.with_name(f"{target.name}.kept-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.replace(backup, kept)
        warnings.warn(f"{kept}: {len(left)} file(s) put into {target.name} while it was replaced are kept here "
                      f"({', '.join(left[:3])})", KeptFilesWarning, stacklevel=2)  # fmt: skip


def _journal_fields(target: Path, backup: str, host: str, pid: int, new: str = "") -> dict[str, Any]:
    """What a journal holds: the backup's name, the run that made it, the fingerprint of the export it puts in place
    (`folder_fingerprint`), and a mark under this user's owner key (the one of export manifests) over those and the
    export's name, proof that this tool wrote it."""
    fields = {"backup": backup, "host": host, "pid": pid, "new": new}
    return {**fields, "mac": contents_mac({**fields, "target": target.name}, owner_key(create=True) or b"")}


def folder_fingerprint(folder: Path) -> str:
    """sha256 over a folder's file names and sizes and its manifest's bytes (which list every file's sha256): the
    export a swap puts in place is told from any other export put at its name after a kill."""
    import hashlib

    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            digest.update(f"{path.relative_to(folder).as_posix()}\0{path.lstat().st_size}\n".encode())
    manifest = folder / "manifest.json"
    if manifest.is_file() and not manifest.is_symlink():
        digest.update(manifest.read_bytes())
    return digest.hexdigest()


def _write_journal(journal: Path, data: dict[str, Any], prefix: str | None = None) -> None:
    """Written whole and synced to a temporary beside `target` (named as `io.atomic_path` names them: a killed run's
    is removed by the next), then linked to its name before the first rename: after a kill at any instant there is
    no journal or the whole one, never an empty one. Never through a symlink, never over a file put there."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=prefix or f"{journal.name}.", suffix=".tmp", dir=journal.parent)
    try:
        with open(fd, "w") as f:
            f.write(json.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, journal)  # never replaces a name in the way: EEXIST
        except OSError as err:  # a file system without hard links: renamed instead, where nothing is in the way
            if err.errno == errno.EEXIST or os.path.lexists(journal):
                raise
            os.replace(tmp, journal)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    _sync_folder(journal.parent)


def _sync_folder(folder: Path) -> None:
    """The folder's entries on disk (the journal's name before the renames it guards); where a folder cannot be
    opened for it, skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


ANY_HOST, ANY_PID, ANY_TAG = r"[^/\x00-\x1f]+", "[0-9]{1,10}", "[0-9a-f]{16}|untagged"


def temporary_names(target: str = ".+", host: str = ANY_HOST, pid: str = ANY_PID, tag: str = ANY_TAG,
                    role: str = "(?:old\\.|spent\\.)?") -> re.Pattern[str]:  # fmt: skip
    """The one scheme of the names the tool gives its temporaries, `.NAME.HOST-PID-TAG.[old.|spent.]XXXXXXXX.tmp`
    (`io._tmp_prefix`, then mkstemp's or mkdtemp's eight characters), each part a regex: the groups `target`,
    `host`, `pid`, `tag` and `role` (`old.` a swap's backup, `spent.` a replaced export, empty a new file or folder)."""
    return re.compile(rf"\.(?P<target>{target})\.(?P<host>{host})-(?P<pid>{pid})-(?P<tag>{tag})\.(?P<role>{role})"
                      r"[a-z0-9_]{8}\.tmp")  # fmt: skip


def _backup_pattern(target: Path) -> re.Pattern[str]:
    """Exactly the names `io._swap_in` gives a backup of `target`: `.NAME.HOST-PID-TAG.old.XXXXXXXX.tmp`."""
    return temporary_names(re.escape(target.name), role=r"old\.")


def _journal_problem(target: Path, journal: Path, problem_of: Callable[[Path], str | None]) -> tuple[str | None, dict[str, Any]]:
    """Why `journal` is not provably one this tool wrote for `target` (None: it is), and its fields."""
    from dip_export.untrusted import Field, Schema, UntrustedFileError, read_json

    if journal.is_symlink() or not journal.is_file():
        return "it is not a regular file", {}
    schema = Schema(
        {
            "backup": Field(str, max_len=255),
            "host": Field(str, max_len=32),
            "pid": Field(int, lo=1, hi=2**31),
            "new": Field(str, max_len=64),
            "mac": Field(str, max_len=64),
        }
    )
    try:
        data = read_json(journal, folder=target.parent, schema=schema, what="swap journal", max_bytes=4096)
    except UntrustedFileError:
        return "not a journal of the expected form", {}
    fields = {key: data[key] for key in ("backup", "host", "pid", "new")}
    if mac_problem({**fields, "target": target.name}, data["mac"]):
        return "it carries no valid mark of this user's tool", {}
    match = _backup_pattern(target).fullmatch(data["backup"])
    if match is None or match["host"][:32] != data["host"] or int(match["pid"]) != data["pid"]:
        return "it names a backup that is not this tool's", {}
    backup = target.parent / data["backup"]
    if os.path.lexists(backup):
        if backup.is_symlink() or not backup.is_dir():
            return "its backup is not a plain folder", {}
        if any(backup.iterdir()) and problem_of(backup):  # empty: the swap had not moved the old export yet
            return "its backup is not an export of this tool", {}
    return None, data


def _is_new(target: Path, fingerprint: str) -> bool:
    """`target` is the export the journal's swap put in place (its file names, sizes and manifest)."""
    return target.is_dir() and not target.is_symlink() and folder_fingerprint(target) == fingerprint


def recover_swap(target: Path, alive: Any, problem_of: Callable[[Path], str | None]) -> None:
    """Finish or undo a swap a killed run left: the new export stays if it is in place, else the old comes back.

    Only a journal proven this tool's is acted on (its owner mark, the exact backup name the tool gives, a backup
    that passes `problem_of` as an export being replaced must); any other is refused before any work, and nothing
    is deleted or renamed."""
    journal = journal_path(target)
    if not os.path.lexists(journal):
        return
    problem, data = _journal_problem(target, journal, problem_of)
    if problem:
        raise DipError(f"{journal} is not a swap journal this tool wrote ({problem}); move it away")
    if data["host"] == _host() and alive(data["pid"]):
        raise DipError(f"another run (pid {data['pid']}) is replacing {target}; wait for it")
    backup = target.parent / data["backup"]
    if os.path.lexists(target):
        # a backup holding the old export beside something that is not the new one (it came after the kill): the
        # backup is all there is (an empty backup: the swap had not moved the old export yet)
        if os.path.lexists(backup) and any(backup.iterdir()) and (problem_of(target) or not _is_new(target, data["new"])):
            raise DipError(f"{target} is not the export an unfinished replacement was putting in place: the earlier "
                           f"export is kept beside it in {backup.name}; move {target.name} away and run again")  # fmt: skip
        if os.path.lexists(backup):  # the new export was in place (or the old one not yet moved): the old one goes
            put_aside(backup, target)
    elif os.path.lexists(backup):
        os.replace(backup, target)  # killed between the renames: the old export comes back
    journal.unlink()
