"""Local versus Hub: a name that can only be a local path is never requested from the Hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import DipError, UsageError
from dip_export.hub import CHECKPOINT_SUFFIXES, is_local_name, looks_like_hub_name
from dip_export.pipeline import open_source
from tests.hostile.conftest import HubRecorder
from tests.test_hostile import one_line, run

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


@pytest.mark.parametrize(("status", "words"), [(404, ["HTTP 404", "no such repo"]), (401, ["HTTP 401", "log in"]),
                                               (403, ["HTTP 403", "log in"]), (400, ["HTTP 400"])])  # fmt: skip
@pytest.mark.parametrize("name", ["org/name", "org/name/weights.pt"])
def test_an_answer_from_the_hub_is_reported_with_its_status_not_as_offline(fake_hub, name, status, words) -> None:
    HubRecorder.status = status
    with pytest.raises(DipError) as err:
        open_source(name)
    assert fake_hub, "the request reached the endpoint"
    assert all(w in str(err.value) for w in words) and "offline" not in str(err.value), err.value
    code, stderr = run(cli.sample_main, name, "--out", "o.npz")
    one_line(code, stderr, 1, f"HTTP {status}")


def test_an_endpoint_that_does_not_answer_is_reported_as_unreachable(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants, hf_api

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(hf_api.api, "endpoint", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)  # its retries' back-off
    with pytest.raises(DipError, match="cannot be reached"):
        open_source("org/name/weights.pt")


NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True).filter(lambda s: ".." not in s)


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(["folder", "file", "dangling link", "link to a file"]), first=NAME,
       rest=st.lists(NAME, min_size=1, max_size=3))  # fmt: skip
def test_a_name_whose_first_part_exists_here_in_any_form_is_local(tmp_path_factory, kind, first, rest) -> None:
    import os

    where = tmp_path_factory.mktemp("cwd")
    path = where / first
    if kind == "folder":
        path.mkdir()
    elif kind == "file":
        path.write_text("notes")
    else:
        target = where / "elsewhere"
        if kind == "link to a file":
            target.write_text("x")
        path.symlink_to(target if path != target else where / "other")
    old = os.getcwd()
    os.chdir(where)
    try:
        assert is_local_name("/".join([first, *rest])) and not looks_like_hub_name("/".join([first, *rest]))
    finally:
        os.chdir(old)


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_existing_first_parts_send_no_request_from_the_api_or_the_cli(fake_hub, tmp_path, kind) -> None:
    first = tmp_path / "lnk"
    first.symlink_to(tmp_path / "unmounted-drive") if kind == "dangling link" else first.write_text("notes")
    with pytest.raises(DipError):
        open_source("lnk/model")
    code, stderr = run(cli.sample_main, "lnk/model", "--out", tmp_path / "o.npz")
    assert code != 0 and "Traceback" not in stderr
    assert fake_hub == []


@pytest.mark.parametrize(
    ("body", "words"),
    [(b'{"id": "org/name", "siblings": []}', "could not be read"), (b"\x1b]0;x\x07[red]" * 20, "could not be read"),
     (b'[{"type": "file", "path": "../../outside.pt", "size": 1, "oid": "a"}]', "leaves the repo")],
)  # fmt: skip
def test_an_unreadable_or_unsafe_listing_is_said_so_not_offline(fake_hub, body, words) -> None:
    HubRecorder.status, HubRecorder.body = 200, body
    with pytest.raises(DipError, match=words) as err:
        open_source("org/name")
    assert "offline" not in str(err.value) and "\x1b" not in str(err.value)
    assert not any(p.endswith("outside.pt") for _, p, _ in fake_hub)
