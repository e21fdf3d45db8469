"""Checkpoints by Hugging Face Hub name: `org/name` or `org/name/FILE`, resolved with huggingface_hub.

Its cache, environment (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`) and progress bars
apply as they do for every Hub user; a file already in the cache is never downloaded again. The
cache folder and offline mode are read from the environment as it is at each load (`hub_settings`)
and passed to huggingface_hub on every call, which otherwise keeps what it read at its import. The
file found is loaded like any other checkpoint: weights-only, untrusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dip_export.errors import CheckpointError, DipError, MissingDependencyError, UsageError
from dip_export.export.naming import is_export_folder_name
from dip_export.messages import shortened
from dip_export.settings import plain_value

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")  # what a Hub repo's checkpoint file is named
TOOL_FOLDERS = ("engines",)  # the tool's own artifact folder: `engines/NAME` is an export, even run elsewhere
# a repo id is `org/name` (letters, digits, '-', '_', '.'); anything after the second '/' names a file in it
_REPO_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"  # the Hub's rule: starts and ends with a letter or digit
_HUB_NAME = re.compile(rf"{_REPO_PART}/{_REPO_PART}(?:/[\w.-]+)*", re.ASCII)  # the Hub holds ASCII names only
# a file name's suffix: a dot and a letter (`.safetensors`, `.gguf`, `.pb`, `.safetensors-00001-of-00002`, `.ckpt_old`);
# a dot and a digit is a version in a repo name (`Mistral-7B-v0.2`, `Qwen2.5-0.5B`)
_FILE_SUFFIX = re.compile(r"\.[A-Za-z]")


def is_local_name(text: str) -> bool:
    """A name that can only mean a path on this machine, so it is never sent to the Hub.

    It exists; or its first component exists here (a folder, a file, or a symlink even when dangling,
    e.g. a link to an unmounted drive) or is the tool's folder (`engines/`); or it starts with `.`, `~`
    or `/`; or its last component is named as the tool names its exports (`NAME-HxW-PRECISION`); or
    it has two parts and the second has a file suffix (`dir/model.ckpt`, `dir/x.gguf`). A repo id's
    name has none, so a file in a repo is named with three parts: `org/name/FILE` stays a Hub name.
    """
    parts = text.split("/")
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or os.path.lexists(text)
        or (len(parts) > 1 and (os.path.lexists(parts[0]) or parts[0] in TOOL_FOLDERS))
        or is_export_folder_name(parts[-1])
        or (len(parts) == 2 and _FILE_SUFFIX.search(parts[1]) is not None)
    )


def looks_like_hub_name(text: str) -> bool:
    """`org/name[/FILE]` that is not a local name (`is_local_name`)."""
    if is_local_name(text) or not _HUB_NAME.fullmatch(text):
        return False
    repo_id, filename = split_hub_name(text)
    file_parts = filename.split("/") if filename else []
    return "--" not in repo_id and ".." not in repo_id and not repo_id.endswith(".git") and not {".", ".."} & set(file_parts)


def split_hub_name(text: str) -> tuple[str, str | None]:
    """'org/name/sub/file.pt' -> ('org/name', 'sub/file.pt'); 'org/name' -> ('org/name', None)."""
    parts = text.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


# What huggingface_hub reads from the environment when it is imported, and how: switches are true where
# `value.upper()` is one of its true words (anything else is false, so `HF_HUB_OFFLINE=maybe` would be online),
# seconds go through int() (a traceback at import for `abc`; 0 means its default). Checked here first, strictly.
HUB_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_HUB_DISABLE_TELEMETRY",
                "HF_HUB_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_SYMLINKS", "HF_HUB_DISABLE_XET", "HF_HUB_ENABLE_HF_TRANSFER",
                "HF_DEBUG")  # fmt: skip
HUB_SECONDS = ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")
TRUE_WORDS = ("1", "ON", "YES", "TRUE")  # huggingface_hub's own (constants.ENV_VARS_TRUE_VALUES)
FALSE_WORDS = ("0", "OFF", "NO", "FALSE", "")
MAX_HUB_SECONDS = 86_400
HUB_TEXTS = (  # sent in each request's URL or header: a control character or space there fails inside the library
    ("HF_ENDPOINT", re.compile(r"https?://[\x21-\x7e]{1,2048}"), "an http(s):// URL of printable ASCII"),
    ("HF_TOKEN", re.compile(r"[\x21-\x7e]{1,4096}"), "a token of printable ASCII"),
    ("HF_HUB_USER_AGENT_ORIGIN", re.compile(r"[\x20-\x7e]{1,256}"), "printable ASCII (it goes into a request header)"),
)
LEGACY_TOKEN = "HUGGING_FACE_HUB_TOKEN"  # the library's older name, read where HF_TOKEN is unset or empty
HUB_VERBOSITIES = ("debug", "info", "warning", "error", "critical")  # HF_HUB_VERBOSITY, as the library matches it
COMMIT_ID = re.compile(r"[0-9a-f]{40}")  # what huggingface_hub writes into a cache ref, and takes as a revision's commit


def check_hub_environment(environ: Mapping[str, str] | None = None) -> None:
    """Refuse, naming the variable (never its value), an HF_* setting huggingface_hub would misread or fail on.

    A switch must be one of 1/0, true/false, yes/no, on/off (any case) or empty; a timeout a whole number of
    seconds in 1..86400. What is accepted means to huggingface_hub what it means here."""
    env = os.environ if environ is None else environ
    for name in HUB_SWITCHES:
        value = env.get(name)
        if value is not None and value.upper() not in (*TRUE_WORDS, *FALSE_WORDS):
            raise UsageError(f"{name} must be 1 or 0 (also true/false, yes/no, on/off) or empty; it holds another value")
    for name in HUB_SECONDS:
        value = env.get(name)
        if value is not None and not (re.fullmatch(r"[0-9]{1,6}", value) and 1 <= int(value) <= MAX_HUB_SECONDS):
            raise UsageError(f"{name} must be a whole number of seconds in 1..{MAX_HUB_SECONDS}; it holds another value")
    verbosity = env.get("HF_HUB_VERBOSITY")
    if verbosity and verbosity not in HUB_VERBOSITIES:  # the library would print the value back, then go on
        raise UsageError(f"HF_HUB_VERBOSITY must be one of {', '.join(HUB_VERBOSITIES)} or empty; it holds another value")
    for name, form, said in HUB_TEXTS:
        value = env.get(name)
        if value and not form.fullmatch(value):  # empty: unset, as huggingface_hub takes it
            raise UsageError(f"{name} must be {said}; it holds another value")
    if not env.get("HF_TOKEN"):  # then the library sends the older variable's token, else the token file's
        legacy = env.get(LEGACY_TOKEN)
        if legacy and not HUB_TEXTS[1][1].fullmatch(legacy):
            raise UsageError(f"{LEGACY_TOKEN} must be a token of printable ASCII; it holds another value")
        if not legacy:
            _check_token_file(env)


def token_file(env: Mapping[str, str]) -> Path:
    """The file huggingface_hub takes its token from when HF_TOKEN is unset or empty (its constants, worked out from
    this environment): HF_TOKEN_PATH, else HF_HOME/token, else XDG_CACHE_HOME (~/.cache)/huggingface/token."""

    def expanded(text: str) -> str:
        return os.path.expandvars(os.path.expanduser(text))

    home = expanded(env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))
    return Path(expanded(env.get("HF_TOKEN_PATH") or os.path.join(home, "token")))


def _check_token_file(env: Mapping[str, str]) -> None:
    """The token huggingface_hub would read from its file (and send in every request) is one: a regular file of at most
    4 KiB whose text, without line ends and outer spaces (as the library cleans it), is printable ASCII."""
    from dip_export.untrusted import UntrustedFileError, read_regular

    path = token_file(env)
    if not os.path.lexists(path):
        return
    said = f"the Hub token file {path} (HF_TOKEN_PATH, or HF_HOME/token) must hold one token of printable ASCII"
    try:
        text = read_regular(path, None, 4096, "Hub token file").decode("utf-8")
    except (UntrustedFileError, UnicodeDecodeError):
        raise UsageError(f"{said}; it is not such a file (move it away or set HF_TOKEN)") from None
    token = text.replace("\r", "").replace("\n", "").strip()
    if token and not re.fullmatch(r"[\x21-\x7e]{1,4096}", token):
        raise UsageError(f"{said}; it holds another value")


@dataclass(frozen=True)
class HubSettings:
    """What a load takes from the environment as it is now, passed to huggingface_hub on each call."""

    offline: bool  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE): no request at all, the cache only
    cache: Path  # HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub


def hub_settings(environ: Mapping[str, str] | None = None) -> HubSettings:
    """The offline switch and cache folder of the environment (checked by `check_hub_environment`), worked out as
    huggingface_hub works out its constants at import. It reads them only then, so a load that changed them
    since would otherwise go by the old values: these are passed on every call (`local_files_only`, `cache_dir`).
    The library's own offline switch, once set at its import, cannot be unset by the environment: it still holds."""
    from huggingface_hub import constants

    env = os.environ if environ is None else environ
    switch = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")
    offline = (switch is not None and switch.upper() in TRUE_WORDS) or bool(constants.HF_HUB_OFFLINE)

    def path(text: str) -> str:
        return os.path.expandvars(os.path.expanduser(text))

    home = path(env.get("HF_HOME", os.path.join(env.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
                                                "huggingface")))  # fmt: skip
    cache = path(env.get("HF_HUB_CACHE", env.get("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))))
    return HubSettings(offline, Path(cache))


class _LibraryLines(logging.Handler):
    """huggingface_hub's log records (at the level its environment asks: HF_HUB_VERBOSITY, HF_DEBUG) as the tool's
    own lines: the message's first line, escaped and capped (`messages.say`), never the traceback a record carries."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a message whose arguments do not fit its format
            text = str(record.msg)
        _say_library(text)


def _say_library(text: str) -> None:
    from rich.console import Console

    from dip_export.messages import say

    lines = text.strip().splitlines()
    say(Console(stderr=True), lines[0] if lines else "", prefix="huggingface_hub: ")


@contextlib.contextmanager
def _library_warnings() -> Iterator[None]:
    """What huggingface_hub warns while it runs (its import included) reaches the terminal as one line each through
    the tool's printer: the warning's first sentence, without the source file and line Python adds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            said = set()
            for note in caught:
                first = re.split(r"(?<=[.!?])\s", str(note.message).strip(), maxsplit=1)[0]
                if first not in said:
                    said.add(first)
                    _say_library(first)


@contextlib.contextmanager
def _library_log() -> Iterator[None]:
    """While huggingface_hub runs (imported: its import puts its own handler in place), what it logs goes through
    `_LibraryLines` alone; its handlers, and whether its records also reach the root logger, are back afterwards."""
    root = logging.getLogger("huggingface_hub")
    handlers, propagate = root.handlers[:], root.propagate
    root.handlers, root.propagate = [_LibraryLines()], False
    try:
        yield
    finally:
        root.handlers, root.propagate = handlers, propagate


def _import_hub() -> Any:
    """huggingface_hub, imported after its environment is checked; what its import still raises, in one line."""
    check_hub_environment()
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors  # noqa: F401  (its settings are read from the environment here)
        from huggingface_hub.utils import logging as _  # noqa: F401  (its handler is put in place at this import)
    except ImportError:
        raise MissingDependencyError("huggingface_hub", "pip install huggingface_hub (to load checkpoints by Hub name)") from None
    except Exception as err:  # a setting of its environment it cannot parse (those above are checked already)
        raise UsageError(f"huggingface_hub cannot start with this environment ({type(err).__name__}); check its HF_* "
                         "variables") from None  # fmt: skip
    return huggingface_hub


def _cache_origin() -> str:
    """Which variable names the Hub cache folder (for messages)."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        if os.environ.get(name):
            return f"from {name}"
    return "the default"


def check_hub_cache(text: str, cache: Path, repo_id: str, revision: str | None, filename: str | None = None) -> None:
    """What huggingface_hub reads from its cache before (or instead of) asking the Hub, refused here as a cache
    problem naming the path: a cache (or the nearest existing folder above it) that is not a folder, a repo
    entry that is not a folder, a ref of this revision that is not a commit id as huggingface_hub writes it, an
    entry of the cached revision's snapshot (`filename`, or every one when no file is named) that is not what
    `checked_cache_entry` accepts."""
    where = _cache_origin()
    existing = Path(os.path.abspath(cache))
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is not a folder" if existing == Path(os.path.abspath(cache)) else f"cannot be made: {existing} is not a folder"
        raise CheckpointError(f"{text}: the Hugging Face cache {cache} ({where}) {what}; no request was made")
    repo = Path(os.path.abspath(cache)) / f"models--{repo_id.replace('/', '--')}"
    if os.path.lexists(repo) and (repo.is_symlink() or not repo.is_dir()):
        raise CheckpointError(f"{text}: the Hugging Face cache entry {repo} is not a folder; no request was made")
    wanted = revision or "main"
    commit = wanted if COMMIT_ID.fullmatch(wanted) else _cached_commit(text, repo, wanted)
    if commit is None:
        return
    snapshot = repo / "snapshots" / commit
    if filename is not None:
        entries = [Path(os.path.normpath(snapshot / filename))]
    else:
        entries = [Path(top) / name for top, folders, files in os.walk(snapshot) for name in folders + files]
    for entry in entries:
        if entry.is_relative_to(snapshot) and os.path.lexists(entry) and not (entry.is_dir() and not entry.is_symlink()):
            checked_cache_entry(text, repo_id, entry, cache)


def _cached_commit(text: str, repo: Path, wanted: str) -> str | None:
    """The commit id the cache's ref `wanted` holds (None where the cache has no such ref); a ref that is not a
    commit id as huggingface_hub writes it is refused."""
    ref = Path(os.path.normpath(repo / "refs" / wanted))
    if not ref.is_relative_to(repo / "refs") or not os.path.lexists(ref):
        return None
    bad = CheckpointError(f"{text}: the Hugging Face cache ref {ref} is not a commit id as huggingface_hub writes it "
                          "(a hand-made or damaged cache); refusing to follow it")  # fmt: skip
    if ref.is_symlink() or not ref.is_file():
        raise bad
    try:
        with open(ref, "rb") as f:
            content = f.read(64)
    except OSError as err:
        raise CheckpointError(f"{text}: the Hugging Face cache ref {ref} cannot be read ({err.strerror or err})") from None
    commit = content.decode("ascii", "replace")
    if not COMMIT_ID.fullmatch(commit):
        raise bad
    return commit


def resolve_hub_checkpoint(text: str, revision: str | None = None) -> Path:
    """The local path (in the Hub cache) of the checkpoint that `org/name[/FILE]` names.

    The environment is checked before huggingface_hub is imported; the cache before any request; in offline mode
    (no request at all) whatever fails is the cache's problem, said with its path."""
    with _library_warnings():
        huggingface_hub = _import_hub()
        with _library_log():
            return _resolve(huggingface_hub, text, revision)


def _resolve(huggingface_hub: Any, text: str, revision: str | None) -> Path:
    hub = hub_settings()  # the environment just checked, as it is now
    repo_id, filename = split_hub_name(text)
    cache = hub.cache
    try:
        check_hub_cache(text, cache, repo_id, revision, filename)
        if filename is None:
            filename = _only_checkpoint(repo_id, _repo_files(repo_id, revision, hub))
        found = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                                local_files_only=hub.offline)  # fmt: skip
        return checked_cache_entry(text, repo_id, Path(found), cache)
    except DipError:
        raise
    except Exception as err:
        raise _hub_failure(err, text, repo_id, filename, revision, hub) from None


def _hub_failure(err: Exception, text: str, repo_id: str, filename: str | None, revision: str | None,
                 hub: HubSettings) -> DipError:  # fmt: skip
    """The one-line reason for what huggingface_hub raised (the most specific of its errors first)."""
    from huggingface_hub import errors

    cache = hub.cache

    if isinstance(err, errors.GatedRepoError):
        return CheckpointError(f"{repo_id}: a gated Hub repo; accept its terms on the Hub and log in (hf auth login)")
    if isinstance(err, errors.RepositoryNotFoundError):
        return CheckpointError(
            f"{text}: no such file, and no Hugging Face Hub repo {repo_id} (if it is private, log in with hf auth login)"
        )
    if isinstance(err, errors.RevisionNotFoundError):
        return UsageError(f"{repo_id}: no revision {plain_value(revision)} on the Hub")
    if isinstance(err, errors.LocalEntryNotFoundError):
        if (status := _http_status(err)) is not None:  # the Hub answered, with an error: not "offline"
            return CheckpointError(_refusal(text, status))
        return CheckpointError(
            f"{text}: not in the Hugging Face cache ({cache}) and the Hub cannot be reached (offline or HF_HUB_OFFLINE=1)"
        )
    if isinstance(err, errors.EntryNotFoundError):
        return CheckpointError(f"{repo_id}: no file {plain_value(filename)} in this Hub repo")
    if isinstance(err, errors.HfHubHTTPError):
        status = _http_status(err)
        detail = _refusal(text, status) if status is not None else f"{text}: Hugging Face Hub error ({_first_line(err)})"
        return CheckpointError(detail)
    if hub.offline or _in_cache(err, cache):  # no request was made, or the cache failed to hold it
        detail = err.strerror if isinstance(err, OSError) and err.strerror else type(err).__name__
        offline = "; offline, no request was made" if hub.offline else ""
        return CheckpointError(f"{text}: the Hugging Face cache {cache} ({_cache_origin()}) could not be used "
                               f"({detail}){offline}")  # fmt: skip
    if isinstance(err, OSError):  # the HTTP client's own errors (connection refused, DNS) are not the Hub's
        return CheckpointError(f"{text}: Hugging Face Hub error ({_first_line(err)})")
    if not _unreachable(err):
        return CheckpointError(f"{text}: the Hugging Face Hub's answer could not be read ({type(err).__name__})")
    return CheckpointError(f"{text}: the Hugging Face Hub cannot be reached ({type(err).__name__}: {_first_line(err)})")


def _in_cache(err: BaseException, cache: Path) -> bool:
    """An OSError about a file inside the cache (a folder it cannot write, a file in a folder's place)."""
    names = [getattr(err, "filename", None), getattr(err, "filename2", None)]
    root = Path(os.path.abspath(cache))
    return isinstance(err, OSError) and any(
        isinstance(n, str | os.PathLike) and Path(os.path.abspath(n)).is_relative_to(root) for n in names
    )


def checked_cache_entry(text: str, repo_id: str, entry: Path, cache: Path) -> Path:
    """`entry` when it is what huggingface_hub makes: a file under the repo's `snapshots/COMMIT/` (no symlinked
    folder on the way) that is a regular file there or a symlink to a regular file directly in the same repo's
    `blobs/`. Anything else (a link to any other file on the machine, say) is refused, offline and online alike."""
    repo = Path(os.path.abspath(cache)) / f"models--{repo_id.replace('/', '--')}"
    entry = Path(os.path.abspath(entry))
    refused = CheckpointError(f"{text}: the Hugging Face cache entry {entry} is not a file of the repo's blobs "
                              "(a link huggingface_hub does not make); refusing to read it")  # fmt: skip
    try:
        parts = entry.relative_to(repo / "snapshots").parts
    except ValueError:
        raise refused from None
    step = repo
    for part in ("snapshots", *parts[:-1]):
        step = step / part
        if step.is_symlink():
            raise refused
    if len(parts) < 2 or (repo / "blobs").is_symlink():
        raise refused
    if entry.is_symlink():
        try:
            target = entry.resolve()
        except (OSError, RuntimeError):  # a link loop
            raise refused from None
        if target.parent != (repo / "blobs").resolve() or not target.is_file():
            raise refused
    elif not entry.is_file():
        raise refused
    return entry


_NO_ANSWER = {
    "TransportError",
    "ConnectError",
    "ConnectionError",
    "ConnectTimeout",
    "TimeoutException",
    "NetworkError",
    "ProxyError",
    "ReadTimeout",
}  # the HTTP clients' (httpx, httpx2, requests) names for "no answer came"


def _unreachable(err: BaseException) -> bool:
    """True when no answer came at all (connection refused, DNS, timeout), as opposed to an unreadable one."""
    return isinstance(err, OSError | TimeoutError) or any(k.__name__ in _NO_ANSWER for k in type(err).__mro__)


def _http_status(err: BaseException) -> int | None:
    """The HTTP status of the Hub's answer behind `err` (following its causes), None if the Hub never answered."""
    seen: BaseException | None = err
    for _ in range(8):
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        if seen is None:
            break
        seen = seen.__cause__ or seen.__context__
    return None


def _refusal(text: str, status: int) -> str:
    if status in (401, 403):
        return f"{text}: the Hugging Face Hub refused access (HTTP {status}); if it is private or gated, log in (hf auth login)"
    if status == 404:
        return f"{text}: no such file, and the Hugging Face Hub has no such repo or file (HTTP 404; private: hf auth login)"
    return f"{text}: the Hugging Face Hub answered HTTP {status}; try again later"


def _repo_files(repo_id: str, revision: str | None, hub: HubSettings) -> list[str]:
    """The repo's files: from the cache where it holds this revision's checkpoints, else from the Hub (never
    asked offline)."""
    import huggingface_hub
    from huggingface_hub import errors

    try:
        cached = _cached_files(repo_id, revision, hub.cache)
        if any(f.endswith(CHECKPOINT_SUFFIXES) for f in cached):
            return cached  # listing needs no network then; the download below still checks the file
    except errors.LocalEntryNotFoundError:
        pass
    if hub.offline:
        raise errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
    try:
        return list(huggingface_hub.list_repo_files(repo_id, revision=revision))
    except errors.HfHubHTTPError:
        raise  # the Hub answered (404, 401, ...): reported with its status, not as "offline"
    except Exception as err:  # the HTTP client's connection errors share no base class with the Hub's or OSError
        if not _unreachable(err):  # an answer came, but not a listing: not "offline"
            raise CheckpointError(f"{repo_id}: the Hugging Face Hub's answer could not be read ({type(err).__name__})") from None
        raise errors.LocalEntryNotFoundError(f"{repo_id}: {_first_line(err)}") from None


def _cached_files(repo_id: str, revision: str | None, folder: Path) -> list[str]:
    import huggingface_hub
    from huggingface_hub import errors

    try:
        cache = huggingface_hub.scan_cache_dir(folder)
    except errors.CacheNotFound:
        cache = None
    except (ValueError, OSError) as err:  # read before any request: the cache's problem, not the Hub's answer
        raise CheckpointError(f"{repo_id}: the Hugging Face cache {folder} ({_cache_origin()}) cannot "
                              f"be read ({type(err).__name__}); no request was made") from None  # fmt: skip
    wanted = revision or "main"
    for repo in cache.repos if cache is not None else ():
        if repo.repo_id != repo_id or repo.repo_type != "model":
            continue
        for rev in repo.revisions:
            if wanted in rev.refs or rev.commit_hash == wanted:
                return sorted(str(f.file_path.relative_to(rev.snapshot_path)) for f in rev.files)
    raise errors.LocalEntryNotFoundError(f"{repo_id}@{wanted} is not in the cache")


def _only_checkpoint(repo_id: str, files: list[str]) -> str:
    found = [f for f in files if isinstance(f, str) and f.endswith(CHECKPOINT_SUFFIXES)]
    if any(f.startswith("/") or "\\" in f or ".." in f.split("/") for f in found):
        raise CheckpointError(f"{repo_id}: the Hub repo lists a checkpoint name that leaves the repo; not downloaded")
    if not found:
        raise CheckpointError(f"{repo_id}: no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)}) in this Hub repo")
    if len(found) > 1:
        raise UsageError(f"{repo_id} holds several checkpoints; name one as {repo_id}/FILE: {', '.join(found)}")
    return found[0]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return shortened(lines[0]) if lines else type(err).__name__
