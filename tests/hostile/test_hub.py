"""Local versus Hub: a name that can only be a local path is never requested from the Hub."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import DipError, UsageError
from dip_export.hub import CHECKPOINT_SUFFIXES, is_local_name, looks_like_hub_name
from dip_export.pipeline import open_source
from tests.test_hostile import one_line, run


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def _answer(self) -> None:
        self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[tuple[str, str, str | None]]]:
    """A local HTTP endpoint standing in for the Hub; it records every request it gets."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.chdir(tmp_path)
    _Recorder.seen = []
    yield _Recorder.seen
    server.shutdown()
    server.server_close()


LOCAL_NAMES = ["models/missing.pt", "models/sub/missing", "./org/name", "~/x/y", "/abs/org/name", "ckpt/model.safetensors",
               "org/model.ckpt", "org/name.bin", "models/name"]  # fmt: skip


@pytest.mark.parametrize("name", LOCAL_NAMES)
def test_local_looking_names_make_no_request(fake_hub: list, tmp_path: Path, name: str) -> None:
    (tmp_path / "models").mkdir()
    with pytest.raises(DipError):
        open_source(name)
    assert fake_hub == []


def test_the_fake_hub_sees_hub_names(fake_hub: list) -> None:
    """The control: a real Hub name does reach the endpoint (so an empty record above means something)."""
    with pytest.raises(DipError):
        open_source("org/name/weights.pt")
    assert any(path.startswith("/org/name/") for _, path, _ in fake_hub)


def test_cli_local_missing_file_makes_no_request(fake_hub: list, tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    code, err = run(cli.sample_main, "runs/last", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "runs/last")
    code, err = run(cli.bench_main, "runs/model.pt", "--backends", "torch")
    one_line(code, err, 1, "runs/model.pt")
    assert fake_hub == []


def test_revision_with_a_local_source_is_refused(fake_hub: list, tmp_path: Path) -> None:
    (tmp_path / "m.pt").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(UsageError, match="--revision"):
        open_source("m.pt", revision="main")
    code, err = run(cli.sample_main, "m.pt", "--revision", "v1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "--revision")
    assert fake_hub == []


_part = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,8}", fullmatch=True)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_part, _part, st.sampled_from(CHECKPOINT_SUFFIXES), st.sampled_from(["", ".", "./", "~/", "/"]))
def test_two_part_checkpoint_names_and_path_prefixes_are_local(org: str, name: str, suffix: str, prefix: str) -> None:
    text = f"{prefix}{org}/{name}{suffix}"
    assert is_local_name(text) and not looks_like_hub_name(text)
    assert looks_like_hub_name(f"{org}/{name}/{name}{suffix}") or Path(org).is_dir()  # three parts: a Hub file
