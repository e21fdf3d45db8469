"""Sampling across processes and machines (torchrun): shards written atomically, resumable,
merged by rank 0 into one ADM .npz that does not depend on how many workers made it.

Sample i always has seed S+i and class i % classes (or line i of a class file). Indices are cut
into shards of whole batches, so every batch holds the same samples whatever the world size; a
shard file appears complete or not at all, and a rerun skips the shards already there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip_export.errors import DipError, UsageError
from dip_export.generate import SamplePlan
from dip_export.io import atomic_path, save_npz, temporary_pattern
from dip_export.messages import say, shortened, where
from dip_export.settings import exact_str, plain_value, type_name, whole_text
from dip_export.untrusted import ArraySchema, ArraySpec, UntrustedFileError, read_npz

SETTINGS_FILE = "settings.json"
# Recorded in settings.json for people, never compared: the same checkpoint content (the `content` setting) under
# another path or file name (relative or absolute, a copy, another machine's mount) is the same run.
INFORMATIONAL = frozenset({"source", "model"})
SHARD_MARK = "dip-export shard v1"  # with the run's settings digest, the `run` array of every shard this tool writes
HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_CLASS_FILE_BYTES = 256 << 20


MAX_WORLD_SIZE = 1 << 20  # processes in one run (torchrun's WORLD_SIZE)
MAX_PORT = 65535


@dataclass(frozen=True)
class World:
    """Which process of a torchrun run this is (one process of one: not started by torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    master_addr: str = ""  # where the process group meets (MASTER_ADDR:MASTER_PORT), with more than one process
    master_port: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def meeting(self) -> str:
        """Where the process group meets, as torchrun named it: `MASTER_ADDR:MASTER_PORT`."""
        return f"{self.master_addr}:{self.master_port}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """The world torchrun describes in the environment, every variable checked before any work: WORLD_SIZE
        1..MAX_WORLD_SIZE, RANK and LOCAL_RANK 0..WORLD_SIZE-1 (whole numbers as `settings.whole_text` reads them);
        with more than one process also MASTER_ADDR and MASTER_PORT, where the process group meets. Else one
        UsageError naming the variable."""
        env = _world_env(os.environ if env is None else env)
        size = _env_number(env, "WORLD_SIZE", 1, 1, MAX_WORLD_SIZE, f"1..{MAX_WORLD_SIZE}")
        within = f"0..WORLD_SIZE-1 (WORLD_SIZE is {size})"
        rank = _env_number(env, "RANK", 0, 0, size - 1, within)
        local_rank = _env_number(env, "LOCAL_RANK", 0, 0, size - 1, within)
        if size > 1:
            address = env.get("MASTER_ADDR")
            if not address or len(address) > 255 or not address.isprintable() or any(c.isspace() for c in address):
                shown = "not set" if address is None else f"got {plain_value(address)}"
                raise UsageError(f"MASTER_ADDR must name the host of rank 0 when WORLD_SIZE is {size} "
                                 f"(torchrun sets it), {shown}")  # fmt: skip
            if "MASTER_PORT" not in env:
                raise UsageError(f"MASTER_PORT must be set when WORLD_SIZE is {size} (torchrun sets it)")
            port = _env_number(env, "MASTER_PORT", 0, 1, MAX_PORT, f"1..{MAX_PORT}")
            return cls(rank, size, local_rank, address, port)
        return cls(rank, size, local_rank)

    def init(self, device: torch.device, console: Any = None) -> None:
        """Join the process group (gloo on CPU, NCCL on GPU) when started by torchrun; its failure in one line.
        Joining waits for every other process (up to the group's timeout), so one line on `console` says so first."""
        if self.size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            timeout = join_timeout(backend)
            self._check_meeting_resolves()
            say(console, f"rank {self.rank}: waiting for {self.size} processes at {self.meeting} "
                         f"(up to {timeout.total_seconds():g} s)")  # fmt: skip
            try:
                torch.distributed.init_process_group(backend=backend, timeout=timeout)
            except (ValueError, RuntimeError, OSError) as err:  # torch's rendezvous errors (DistError is a RuntimeError)
                first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
                raise DipError(f"rank {self.rank} of {self.size} could not join the {backend} process group at "
                               f"{self.meeting} ({type(err).__name__}: {shortened(first)})") from None  # fmt: skip

    def _check_meeting_resolves(self) -> None:
        """MASTER_ADDR names a host this machine can find: one that does not resolve can never be joined, so it is
        refused at once instead of waiting the group's whole timeout."""
        import socket

        try:
            socket.getaddrinfo(self.master_addr, self.master_port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
            raise DipError(f"rank {self.rank} of {self.size}: MASTER_ADDR of {self.meeting} does not resolve "
                           f"({reason}); no process group can meet there") from None  # fmt: skip

    def barrier(self) -> None:
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def device(self, requested: torch.device) -> torch.device:
        """Each rank takes its own GPU (LOCAL_RANK) or the CPU."""
        if requested.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise UsageError(f"LOCAL_RANK is {self.local_rank} but PyTorch sees {torch.cuda.device_count()} CUDA "
                                 "device(s); use as many processes per node as GPUs, or --device cpu")  # fmt: skip
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return requested

    def close(self) -> None:
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def join_timeout(backend: str) -> timedelta:
    """How long joining the process group (and each collective after it) may wait: PyTorch's default for `backend`,
    passed to it explicitly so that the waiting line names the time the run really waits."""
    from torch.distributed import constants

    nccl = getattr(constants, "default_pg_nccl_timeout", None) if backend == "nccl" else None
    return nccl or constants.default_pg_timeout


WORLD_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _world_env(env: Any) -> dict[str, str]:
    """The variables a world reads from a mapping of names to text (the environment's, or a caller's), read once as
    plain text; anything else is one UsageError."""
    if not isinstance(env, Mapping):
        raise UsageError(f"the environment must be a mapping of names to text, got {type_name(env)}")
    found = {}
    for name in WORLD_VARIABLES:
        try:
            value = env.get(name)
        except Exception:  # a caller's mapping whose own get fails
            raise UsageError(f"the environment's {name} cannot be read from this {type_name(env)}") from None
        if value is not None:
            text = exact_str(value)
            if type(text) is not str:
                raise UsageError(f"{name} must be text, got {type_name(value)}")
            found[name] = text
    return found


def _env_number(env: Mapping[str, str], name: str, default: int, lo: int, hi: int, within: str) -> int:
    """The whole number in environment variable `name` (`default` when unset), in lo..hi; else one UsageError."""
    text = env.get(name)
    if text is None:
        value = default
    else:
        try:
            value = whole_text(text, name)
        except UsageError:
            value = None
    if value is None or not lo <= value <= hi:
        raise UsageError(f"{name} must be a whole number {within} (got {plain_value(text)})")
    return value


def parts_dir(out: Path) -> Path:
    """The shard folder beside `out` (OUT.parts), checked: see `check_parts_dir`."""
    folder = out.with_name(out.name + ".parts")
    check_parts_dir(folder)
    return folder


SHARD_NAME = r"shard-(?:[0-9]{6}|[1-9][0-9]{6,})\.npz"  # shard k is f"shard-{k:06d}.npz"
_OWN_NAME = re.compile(rf"{re.escape(SETTINGS_FILE)}|{SHARD_NAME}")
_OWN_TEMPORARY = re.compile(temporary_pattern(_OWN_NAME.pattern))
_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"),
          (stat.S_ISBLK, "device"))  # fmt: skip


def check_parts_dir(folder: Path) -> None:
    """The shard folder and the files in it are written and read, never followed; checked before any work.

    It holds only what this tool writes there: `settings.json`, `shard-NNNNNN.npz` and their temporaries (of any
    rank), each a regular file. Anything else (a symlink, folder, FIFO, socket or device, or another name) is
    refused in one UsageError naming it, and left where it is.
    """
    if folder.is_symlink():
        raise UsageError(f"{where(folder)} is a symlink; the shard folder is never written through one (move it away)")
    if os.path.lexists(folder) and not folder.is_dir():
        raise UsageError(f"{where(folder)} exists and is not a folder; the shards go there (move it away)")
    if not folder.is_dir():
        return
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise UsageError(f"cannot list the shard folder {where(folder)}: {err.strerror or err}") from None
    for name in names:
        path = folder / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue  # a temporary another rank has just renamed or removed
        except OSError as err:
            raise UsageError(f"cannot read {where(path)}: {err.strerror or err}") from None
        if stat.S_ISLNK(mode):
            raise UsageError(f"{where(path)} is a symlink; files in the shard folder are never followed (move it away)")
        if not stat.S_ISREG(mode):
            kind = next((kind for test, kind in _KINDS if test(mode)), "special file")
            raise UsageError(f"{where(path)} is a {kind}, not a file; the shard folder holds only the files this tool "
                             "writes (move it away, or use another --out)")  # fmt: skip
        if not (_OWN_NAME.fullmatch(name) or _OWN_TEMPORARY.fullmatch(name)):
            raise UsageError(f"{where(path)} is not a file this tool writes; the shard folder holds only "
                             f"{SETTINGS_FILE} and shard-NNNNNN.npz (move it away, or use another --out)")  # fmt: skip


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def plan_digest(plan: SamplePlan) -> str:
    return hashlib.sha256(json.dumps([plan.seeds, plan.classes]).encode()).hexdigest()


def run_settings(settings: dict[str, Any], plan: SamplePlan, batch_size: int, shard_batches: int) -> dict[str, Any]:
    """What `settings.json` records: the caller's settings, the plan and the shard layout."""
    return {**settings, "plan": plan_digest(plan), "shard_size": batch_size * shard_batches, "batch_size": batch_size}


def settings_digest(settings: dict[str, Any]) -> str:
    """sha256 of a run's recorded settings (as `settings.json` holds them): what each of its shards carries."""
    text = json.dumps(json.loads(json.dumps(settings)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def shard_label(digest: str) -> str:
    """The `run` array of a shard made under settings of this digest."""
    return f"{SHARD_MARK} {digest}"


def _array_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _marked_contents(digest: str, images: np.ndarray, indices: np.ndarray) -> dict[str, Any]:
    """What a shard's mark covers (ownership.contents_mac under the owner key, as export manifests and the
    yardstick cache): the kind, the run's settings digest and the bytes of its images and indices."""
    return {"written_by": SHARD_MARK, "settings": digest, "images": _array_digest(images), "indices": _array_digest(indices)}


def write_shard(path: Path, images: np.ndarray, start: int, stop: int, digest: str) -> None:
    """Shard `path` of samples start..stop-1 made under settings of `digest`, appearing whole, with its mark."""
    from dip_export.ownership import contents_mac, owner_key

    indices = np.arange(start, stop, dtype=np.int64)
    mac = contents_mac(_marked_contents(digest, images, indices), owner_key(create=True) or b"")
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, arr_0=images, indices=indices, run=np.array(shard_label(digest)), mac=np.array(mac, "<U64"))


def check_settings(folder: Path, settings: dict[str, Any], world: World, *, pending: Collection[str] | None = None) -> None:
    """Rank 0 records the settings of the run; every rank refuses a folder made with other ones, and shards
    whose settings are no longer recorded (they are never deleted nor taken for this run's).

    A sharded run calls this twice. First, the pre-flight (`pending` given: the names of the settings not known
    yet, e.g. the backend's identity under backend auto, before it is measured), before any export, engine build
    or sampling and before the process group is joined: the folder is compared on every other setting, and nothing
    is written or waited for. Then (`pending` None) with every setting, once the engine is made: recorded if new.
    """
    settings = json.loads(json.dumps(settings))  # tuples become lists, as they read back
    check_parts_dir(folder)
    path = folder / SETTINGS_FILE
    if not os.path.lexists(path) and folder.is_dir() and any(folder.glob("shard-*.npz")):
        raise UsageError(f"{folder} holds shards but no {SETTINGS_FILE}: their settings are unknown; "
                         "use another --out or delete that folder to start over")  # fmt: skip
    if pending is not None:
        if os.path.lexists(path):
            _compare_settings(folder, _read_settings(path), settings, set(pending))
        return
    if world.is_main and not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    world.barrier()
    _compare_settings(folder, _read_settings(path), settings, set())


def _compare_settings(folder: Path, stored: dict[str, Any], settings: dict[str, Any], pending: set[str]) -> None:
    """The one comparison of a shard folder's recorded settings with this run's, `pending` and `INFORMATIONAL` names
    left out (a folder recorded under another spelling of the model's path resumes: its content is compared)."""
    known = {k: v for k, v in stored.items() if k not in pending | INFORMATIONAL}
    mine = {k: v for k, v in settings.items() if k not in pending | INFORMATIONAL}
    if known == mine:
        return
    diff = sorted(k for k in mine if known.get(k) != mine[k])  # this run's names: no file content echoed
    foreign = len(set(known) - set(mine))
    named = ", ".join(diff) + (f"{', ' if diff else ''}{foreign} unknown key(s)" if foreign else "")
    raise UsageError(f"{folder} holds shards made with other settings ({named}); "
                     "use another --out or delete that folder to start over")  # fmt: skip


def _read_settings(path: Path) -> dict[str, Any]:
    from dip_export.untrusted import UntrustedFileError, read_json

    try:
        stored = read_json(path, folder=path.parent, what="shard settings")
    except UntrustedFileError as err:
        raise DipError(f"{err}; delete {path.parent} to start over") from None
    if not isinstance(stored, dict):
        raise DipError(f"{path}: not a settings object; delete {path.parent} to start over")
    return stored


def _shard_schema(start: int, stop: int, image_shape: tuple[int, ...] | None) -> ArraySchema:
    images = (stop - start, *image_shape) if image_shape is not None else (stop - start, None, None, 3)
    return ArraySchema({"indices": ArraySpec("int64", (stop - start,)), "arr_0": ArraySpec("uint8", images),
                        "run": ArraySpec("U", ()), "mac": ArraySpec("<U64", ())})  # fmt: skip


def _read_shard_arrays(
    path: Path, start: int, stop: int, shape: tuple[int, ...] | None, digest: str | None
) -> dict[str, np.ndarray]:
    """A finished shard's arrays, read strictly (`read_npz`); its mark a valid one under the owner key
    over this run's settings (`digest`) and the bytes of its images and indices; its indices those of this run.
    Anything else is refused in one line naming the file, and left as it is."""
    from dip_export.ownership import mac_problem

    try:
        data = read_npz(path, folder=path.parent, what="shard", check=_shard_schema(start, stop, shape))
    except UntrustedFileError as err:
        raise DipError(f"{err}; delete it and rerun to remake it") from None
    if digest is None or str(data["run"]) != shard_label(digest):
        raise DipError(f"{path}: not a shard of this run (made with other settings, or not by this tool); "
                       f"delete {path.parent} to start over")  # fmt: skip
    mac = str(data["mac"])
    if not HEX64.fullmatch(mac) or mac_problem(_marked_contents(digest, data["arr_0"], data["indices"]), mac) is not None:
        raise DipError(f"{path}: not a shard this tool wrote for this run (no valid mark under your owner key: made by "
                       "hand, by another user or an older version, or changed since); "
                       f"delete {path.parent} to start over")  # fmt: skip
    if not np.array_equal(data["indices"], np.arange(start, stop)):
        raise DipError(f"{path} holds other indices; delete {path.parent} and rerun")
    return data


def _read_shard(path: Path, start: int, stop: int, shape: tuple[int, ...] | None, digest: str) -> np.ndarray:
    """One finished shard: its mark, indices, count, dtype and image shape as this run expects, or one error."""
    return _read_shard_arrays(path, start, stop, shape, digest)["arr_0"]


def check_finished_shards(out: Path, n: int, shard_size: int, image_shape: tuple[int, ...]) -> None:
    """Before a resumed run starts (after `check_settings`): every shard already there is this run's (its mark),
    with its indices and image shape; one shard in memory at a time."""
    folder = parts_dir(out)
    settings = folder / SETTINGS_FILE
    digest = settings_digest(_read_settings(settings)) if os.path.lexists(settings) else None  # None: no shard is this run's
    for k, (start, stop) in enumerate(shard_ranges(n, shard_size)):
        path = folder / f"shard-{k:06d}.npz"
        if path.is_file():
            _read_shard_arrays(path, start, stop, image_shape, digest)


def read_class_file(path: Path, num_classes: int, n: int) -> list[int]:
    """Line i is the class of sample i: a blank line among the first n is refused (skipping it would give every
    later sample the class of the next line)."""
    from dip_export.untrusted import UntrustedFileError, read_lines

    try:
        lines = read_lines(path, what="class file", max_bytes=MAX_CLASS_FILE_BYTES, max_lines=n)
    except UntrustedFileError as err:
        raise UsageError(f"--class-file {err}") from None
    classes = []
    for expected, (number, text) in enumerate(lines, 1):
        if number != expected:  # read_lines skips blank lines but keeps the numbering: line `expected` was blank
            raise UsageError(f"--class-file {where(path, expected)} is blank; line i is the class of sample i")
        if not re.fullmatch(r"[0-9]{1,9}", text):
            raise UsageError(f"--class-file {where(path, number)}: one non-negative integer class per line expected")
        if int(text) >= num_classes:
            raise UsageError(f"--class-file {where(path, number)}: class out of range (classes are 0..{num_classes - 1})")
        classes.append(int(text))
    if len(classes) < n:
        raise UsageError(f"--class-file {path} has {len(classes)} classes for {n} samples")
    return classes[:n]


def run_sharded(
    plan: SamplePlan,
    out: Path,
    *,
    world: World,
    settings: dict[str, Any],
    batch_size: int,
    shard_batches: int,
    make_images: Callable[[SamplePlan], np.ndarray],
    on_images: Callable[[int], None] | None = None,
    finish: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray | None:
    """Generate this rank's missing shards, then (rank 0) merge all of them and write them (`finish`, else the npz
    `out` alone); returns the merged images on rank 0."""
    folder = parts_dir(out)
    shard_size = batch_size * shard_batches
    recorded = run_settings(settings, plan, batch_size, shard_batches)
    check_settings(folder, recorded, world)
    digest = settings_digest(_read_settings(folder / SETTINGS_FILE))  # the recorded settings: its path may be spelled otherwise
    shards = shard_ranges(len(plan), shard_size)
    done = sum(b - a for k, (a, b) in enumerate(shards) if (folder / f"shard-{k:06d}.npz").is_file())
    if on_images is not None and done:
        on_images(done)
    for k, (start, stop) in enumerate(shards):
        path = folder / f"shard-{k:06d}.npz"
        if k % world.size != world.rank or path.is_file():
            continue
        images = make_images(SamplePlan(plan.seeds[start:stop], plan.classes[start:stop]))
        write_shard(path, images, start, stop, digest)
    world.barrier()
    if not world.is_main:
        return None
    parts: list[np.ndarray] = []
    for k, (start, stop) in enumerate(shards):
        parts.append(_read_shard(folder / f"shard-{k:06d}.npz", start, stop, parts[0].shape[1:] if parts else None, digest))
    images = np.concatenate(parts)
    if finish is not None:
        finish(images)
    else:
        save_npz(out, images)
    return images
