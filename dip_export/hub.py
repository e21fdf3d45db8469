"""Checkpoints by Hugging Face Hub name: `org/name` or `org/name/FILE`, resolved with huggingface_hub.

Its cache, environment (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`) and progress bars
apply as they do for every Hub user; a file already in the cache is never downloaded again. The
file found is loaded like any other checkpoint: weights-only, untrusted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dip_export.errors import CheckpointError, DipError, MissingDependencyError, UsageError
from dip_export.export.naming import is_export_folder_name

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")  # what a Hub repo's checkpoint file is named
TOOL_FOLDERS = ("engines",)  # the tool's own artifact folder: `engines/NAME` is an export, even run elsewhere
# a repo id is `org/name` (letters, digits, '-', '_', '.'); anything after the second '/' names a file in it
_REPO_PART = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"  # the Hub's rule: starts and ends with a letter or digit
_HUB_NAME = re.compile(rf"{_REPO_PART}/{_REPO_PART}(?:/[\w.-]+)*")
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


def resolve_hub_checkpoint(text: str, revision: str | None = None) -> Path:
    """The local path (in the Hub cache) of the checkpoint that `org/name[/FILE]` names."""
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise MissingDependencyError("huggingface_hub", "pip install huggingface_hub (to load checkpoints by Hub name)") from None
    repo_id, filename = split_hub_name(text)
    try:
        if filename is None:
            filename = _only_checkpoint(repo_id, _repo_files(repo_id, revision))
        found = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision)
        return checked_cache_entry(text, repo_id, Path(found), Path(constants.HF_HUB_CACHE))
    except DipError:
        raise
    except errors.GatedRepoError:
        raise CheckpointError(f"{repo_id}: a gated Hub repo; accept its terms on the Hub and log in (hf auth login)") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{text}: no such file, and no Hugging Face Hub repo {repo_id} (if it is private, log in with hf auth login)"
        ) from None
    except errors.RevisionNotFoundError:
        raise UsageError(f"{repo_id}: no revision {revision!r} on the Hub") from None
    except errors.LocalEntryNotFoundError as err:
        if (status := _http_status(err)) is not None:  # the Hub answered, with an error: not "offline"
            raise CheckpointError(_refusal(text, status)) from None
        raise CheckpointError(
            f"{text}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub cannot be "
            "reached (offline or HF_HUB_OFFLINE=1)"
        ) from None
    except errors.EntryNotFoundError:
        raise CheckpointError(f"{repo_id}: no file {filename!r} in this Hub repo") from None
    except errors.HfHubHTTPError as err:
        status = _http_status(err)
        detail = _refusal(text, status) if status is not None else f"{text}: Hugging Face Hub error ({_first_line(err)})"
        raise CheckpointError(detail) from None
    except OSError as err:
        raise CheckpointError(f"{text}: Hugging Face Hub error ({_first_line(err)})") from None
    except Exception as err:  # the HTTP client's own errors (connection refused, DNS) are not the Hub's
        if not _unreachable(err):
            raise CheckpointError(f"{text}: the Hugging Face Hub's answer could not be read ({type(err).__name__})") from None
        reason = f"{type(err).__name__}: {_first_line(err)}"
        raise CheckpointError(f"{text}: the Hugging Face Hub cannot be reached ({reason})") from None


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
        target = entry.resolve()
        if target.parent != (repo / "blobs").resolve() or not target.is_file():
            raise refused
    elif not entry.is_file():
        raise refused
    return entry


_NO_ANSWER = {"TransportError", "ConnectError", "ConnectionError", "ConnectTimeout", "TimeoutException", "NetworkError",
              "ProxyError", "ReadTimeout"}  # the HTTP clients' (httpx, httpx2, requests) names for "no answer came"


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


def _repo_files(repo_id: str, revision: str | None) -> list[str]:
    """The repo's files: from the cache where it holds this revision's checkpoints, else from the Hub."""
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        cached = _cached_files(repo_id, revision)
        if any(f.endswith(CHECKPOINT_SUFFIXES) for f in cached):
            return cached  # listing needs no network then; the download below still checks the file
    except errors.LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        raise errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
    try:
        return list(huggingface_hub.list_repo_files(repo_id, revision=revision))
    except errors.HfHubHTTPError:
        raise  # the Hub answered (404, 401, ...): reported with its status, not as "offline"
    except Exception as err:  # the HTTP client's connection errors share no base class with the Hub's or OSError
        if not _unreachable(err):  # an answer came, but not a listing: not "offline"
            raise CheckpointError(f"{repo_id}: the Hugging Face Hub's answer could not be read ({type(err).__name__})") from None
        raise errors.LocalEntryNotFoundError(f"{repo_id}: {_first_line(err)}") from None


def _cached_files(repo_id: str, revision: str | None) -> list[str]:
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        cache = huggingface_hub.scan_cache_dir(constants.HF_HUB_CACHE)
    except errors.CacheNotFound:
        cache = None
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
    return lines[0][:200] if lines else type(err).__name__
