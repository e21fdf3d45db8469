"""A Hub-cache snapshot entry is read only when it is what huggingface_hub makes: a link into the same repo's
`blobs/` (or a plain file there); a link anywhere else is refused in one line, offline and online."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import DEMO_CHECKPOINT
from dip_export.errors import CheckpointError
from dip_export.hub import checked_cache_entry
from tests.test_hostile import one_line, run

REPO = "evilorg/evilname"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
NAME = "model.safetensors"
SNAPSHOT = f"models--{REPO.replace('/', '--')}/snapshots/{COMMIT}"
BLOB = hashlib.sha256(DEMO_CHECKPOINT.read_bytes()).hexdigest()
ACCEPTED = ("relative blob", "absolute blob", "plain file")
REFUSED = ("outside file", "other repo's blob", "other snapshot file", "nested blob", "linked blobs folder",
           "linked snapshot subfolder", "linked snapshot")  # fmt: skip


def _cache(root: Path, kind: str) -> tuple[Path, Path]:
    """A cache whose repo holds the demo checkpoint as a blob and a snapshot entry of `kind`: (cache, entry)."""
    repo = root / f"models--{REPO.replace('/', '--')}"
    blobs, snap = repo / "blobs", repo / "snapshots" / COMMIT
    for folder in (repo / "refs", blobs, snap, root / "elsewhere" / "blobs", root / "models--other--repo" / "blobs"):
        folder.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copy(DEMO_CHECKPOINT, blobs / BLOB)
    entry = snap / NAME
    if kind == "linked snapshot subfolder":
        shutil.copy(DEMO_CHECKPOINT, root / "elsewhere" / NAME)
        (snap / "sub").symlink_to(root / "elsewhere", target_is_directory=True)
        return root, snap / "sub" / NAME
    if kind == "linked snapshot":
        shutil.copy(DEMO_CHECKPOINT, root / "elsewhere" / NAME)
        shutil.rmtree(snap)
        snap.symlink_to(root / "elsewhere", target_is_directory=True)
        return root, entry
    if kind == "linked blobs folder":
        shutil.copy(DEMO_CHECKPOINT, root / "elsewhere" / "blobs" / BLOB)
        shutil.rmtree(blobs)
        blobs.symlink_to(root / "elsewhere" / "blobs", target_is_directory=True)
        entry.symlink_to(f"../../blobs/{BLOB}")
        return root, entry
    if kind == "plain file":
        shutil.copy(DEMO_CHECKPOINT, entry)
        return root, entry
    (blobs / "nested").mkdir()
    shutil.copy(DEMO_CHECKPOINT, blobs / "nested" / BLOB)
    shutil.copy(DEMO_CHECKPOINT, root / "models--other--repo" / "blobs" / BLOB)
    if kind == "other snapshot file":
        shutil.copy(DEMO_CHECKPOINT, snap / "other.txt")
    target = {
        "relative blob": f"../../blobs/{BLOB}", "absolute blob": str(blobs / BLOB), "outside file": str(DEMO_CHECKPOINT),
        "other repo's blob": str(root / "models--other--repo" / "blobs" / BLOB), "other snapshot file": "other.txt",
        "nested blob": f"../../blobs/nested/{BLOB}",
    }[kind]  # fmt: skip
    entry.symlink_to(target)
    return root, entry


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(ACCEPTED + REFUSED))
def test_only_links_into_the_repos_blobs_are_read(tmp_path_factory: pytest.TempPathFactory, kind: str) -> None:
    cache, entry = _cache(tmp_path_factory.mktemp("hub"), kind)
    if kind in ACCEPTED:
        assert checked_cache_entry(REPO, REPO, entry, cache) == entry
        return
    with pytest.raises(CheckpointError, match="not a file of the repo's blobs") as err:
        checked_cache_entry(REPO, REPO, entry, cache)
    assert len(str(err.value).splitlines()) == 1 and str(err.value).startswith(REPO)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


@pytest.mark.parametrize("kind", ["outside file", "linked snapshot subfolder"])
def test_offline_the_api_and_the_cli_refuse_a_link_out(offline: Path, tmp_path: Path, kind: str, no_sampling) -> None:
    _, entry = _cache(offline, kind)
    name = f"{REPO}/{entry.relative_to(offline / SNAPSHOT).as_posix()}"
    with pytest.raises(CheckpointError, match="not a file of the repo's blobs"):
        DiPPipeline.load(name)
    out = tmp_path / "o.npz"
    code, err = run(cli.sample_main, name, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", out)
    one_line(code, err, 1, "not a file of the repo's blobs", REPO)
    assert not out.exists()


def test_offline_a_blob_link_still_loads(offline: Path) -> None:
    _cache(offline, "relative blob")
    assert DiPPipeline.load(REPO, device="cpu").config.num_classes > 0


class _Hub(http.server.BaseHTTPRequestHandler):
    """The Hub's answer to the HEAD of a file: its commit and etag (the blob's name), as huggingface_hub reads them."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def do_HEAD(self) -> None:
        self.seen.append((self.command, self.path))
        self.send_response(200)
        size = str(DEMO_CHECKPOINT.stat().st_size)
        for key, value in {"X-Repo-Commit": COMMIT, "ETag": f'"{BLOB}"', "Content-Length": size}.items():
            self.send_header(key, value)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local endpoint standing in for the Hub (through HF_ENDPOINT); nothing leaves this machine."""
    from huggingface_hub import constants, hf_api

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.chdir(tmp_path)
    _Hub.seen = []
    yield cache
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("kind", ["outside file", "relative blob"])
def test_online_the_link_is_checked_before_the_hub_is_asked(online: Path, tmp_path: Path, kind: str) -> None:
    _cache(online, kind)
    if kind == "relative blob":
        assert DiPPipeline.load(f"{REPO}/{NAME}", device="cpu").config.num_classes > 0
    else:
        with pytest.raises(CheckpointError, match="not a file of the repo's blobs"):
            DiPPipeline.load(f"{REPO}/{NAME}")
        code, err = run(cli.sample_main, f"{REPO}/{NAME}", "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
        one_line(code, err, 1, "not a file of the repo's blobs")
    if kind == "relative blob":  # online: the Hub was asked for the revision a good entry belongs to
        assert _Hub.seen and all(path.startswith(f"/{REPO}/") for _, path in _Hub.seen)
    else:  # a link out is the cache's problem: refused before any request
        assert _Hub.seen == []
