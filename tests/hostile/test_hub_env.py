"""The Hub entry's environment and cache: an HF_* setting huggingface_hub would misread or fail on is refused by
name (never its value) before it is imported; a cache problem met before any request is said as one, with the
cache's path, not as "the Hub's answer could not be read". A local recording endpoint stands in for the Hub."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import CheckpointError, UsageError
from dip_export.hub import FALSE_WORDS, HUB_SECONDS, HUB_SWITCHES, TRUE_WORDS, check_hub_environment
from tests.test_hostile import one_line, run

REPO = "someorg/somename"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ROOT = Path(__file__).resolve().parents[2]
VALUES = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["maybe", " 1", "1 ", "True", "tRuE", "oN", "2", "-1", "0", "00", "1_0", "+5", "\u0663", "abc", "",
                     "86400", "86401", "ｙｅｓ", "1e3", "10.0"]),
)  # fmt: skip


@settings(max_examples=400, deadline=None, derandomize=True)
@given(name=st.sampled_from(HUB_SWITCHES + HUB_SECONDS), value=VALUES)
def test_a_setting_is_accepted_only_where_huggingface_hub_reads_what_it_says(name: str, value: str) -> None:
    from huggingface_hub import constants

    assert set(TRUE_WORDS) == constants.ENV_VARS_TRUE_VALUES  # the true words are the library's own
    try:
        check_hub_environment({name: value})
    except UsageError as err:
        message = str(err)
        assert message.startswith(f"{name} must be ") and message.endswith("it holds another value"), message
        if name in HUB_SWITCHES:
            assert value.upper() not in (*TRUE_WORDS, *FALSE_WORDS)  # "maybe" is not taken as false
        else:
            assert not (value.isascii() and value.isdigit() and 1 <= int(value) <= 86_400)
        return
    if name in HUB_SWITCHES:  # accepted: a word the library reads as true, or one of the false words
        assert constants._is_true(value) == (value.upper() in TRUE_WORDS) and value.upper() in (*TRUE_WORDS, *FALSE_WORDS)
    else:  # accepted: the library's int() reads the same number, and not 0 (which it would replace by its default)
        assert value.isascii() and value.isdigit() and constants._as_int(value) == int(value) >= 1


@pytest.mark.parametrize(("name", "value"), [("HF_HUB_ETAG_TIMEOUT", "abc"), ("HF_HUB_DOWNLOAD_TIMEOUT", "abc"),
                                             ("HF_HUB_OFFLINE", "maybe"), ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "sure")])  # fmt: skip
def test_the_api_and_dip_sample_refuse_the_setting_by_name_and_send_nothing(
    fake_hub: list[tuple[str, str, str | None]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=f"^{name} must be "):
        DiPPipeline.load(REPO)
    code, err = run(cli.sample_main, REPO, "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, name)
    assert value not in err and fake_hub == []


def test_a_fresh_dip_sample_never_reaches_huggingface_hubs_own_parse(
    fake_hub: list[tuple[str, str, str | None]], tmp_path: Path
) -> None:
    """In a new process the library reads its settings when imported: refused first, in one line, nothing sent."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_ETAG_TIMEOUT": "abc", "HF_HUB_CACHE": str(tmp_path / "c")}
    proc = subprocess.run([shutil.which("dip-sample") or "dip-sample", REPO, "--classes", "1", "--seeds", "0", "--out",
                           str(tmp_path / "o.npz")], capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    one_line(proc.returncode, proc.stderr, 2, "HF_HUB_ETAG_TIMEOUT must be a whole number of seconds")
    assert fake_hub == []


def test_an_import_failure_of_the_library_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            raise ValueError("invalid literal for int() with base 10: 'secret-value'")

    monkeypatch.setitem(sys.modules, "huggingface_hub", Broken("huggingface_hub"))
    with pytest.raises(UsageError, match=r"^huggingface_hub cannot start with this environment \(ValueError\)") as err:
        DiPPipeline.load(REPO)
    assert "secret" not in str(err.value)


def _cache(root: Path) -> Path:
    repo = root / f"models--{REPO.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    return repo


def _cache_problem(kind: str, cache: Path) -> Path:
    """A cache with one problem; returns the path the message must name."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    if kind == "cache is a file":
        cache.write_text("notes")
        return cache
    if kind == "cache below a file":
        cache.parent.rmdir()
        cache.parent.write_text("notes")
        return cache.parent
    repo = cache / f"models--{REPO.replace('/', '--')}"
    if kind == "repo entry is a file":
        cache.mkdir()
        repo.write_text("x")
        return repo
    _cache(cache)
    ref = repo / "refs" / "main"
    if kind == "ref leaves the cache":
        ref.write_text("../../../../outsidesnap")
    elif kind == "ref is a link":
        (cache / "elsewhere").write_text(COMMIT)
        ref.symlink_to(cache / "elsewhere")
    else:
        ref.write_text("hf_SECRETTOKEN_not_a_commit")
    return ref


KINDS = ["cache is a file", "cache below a file", "repo entry is a file", "ref leaves the cache", "ref is a link",
         "ref holds a secret"]  # fmt: skip


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_a_cache_problem_is_named_with_its_path_and_no_request_is_made(
    fake_hub: list[tuple[str, str, str | None]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str, offline: bool
) -> None:
    from huggingface_hub import constants

    cache = tmp_path / "hub" / "cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")  # what a load reads now (hub_settings)
    named = _cache_problem(kind, cache)
    for name in (REPO, f"{REPO}/model.safetensors"):
        with pytest.raises(CheckpointError, match="Hugging Face cache") as err:
            DiPPipeline.load(name)
        assert str(named) in str(err.value) and "answer could not be read" not in str(err.value)
        assert "SECRET" not in str(err.value) and "outsidesnap" not in str(err.value)
        code, stderr = run(cli.sample_main, name, "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
        one_line(code, stderr, 1, "Hugging Face cache")
    assert fake_hub == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=60), st.just(COMMIT.encode()), st.just((COMMIT + "\n").encode())))
def test_a_ref_is_followed_only_when_it_is_a_commit_id(
    fake_hub: list[tuple[str, str, str | None]], monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
    content: bytes,
) -> None:  # fmt: skip
    from huggingface_hub import constants

    cache = tmp_path_factory.mktemp("hub")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what a load reads now (hub_settings)
    (_cache(cache) / "refs" / "main").write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        DiPPipeline.load(f"{REPO}/model.safetensors")
    if content == COMMIT.encode():  # followed: the snapshot lacks the file, so "not in the cache"
        assert "not in the Hugging Face cache" in str(err.value)
    else:
        assert "is not a commit id as huggingface_hub writes it" in str(err.value)
    assert fake_hub == []


@pytest.mark.parametrize("offline", [False, True])
def test_other_failures_before_any_request_are_the_caches(
    fake_hub: list[tuple[str, str, str | None]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, offline: bool
) -> None:
    """Offline nothing is sent, so whatever fails is the cache's; online, an OSError about a file inside the cache."""
    import huggingface_hub
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")  # what a load reads now (hub_settings)

    def fail(*args: object, **kwargs: object) -> None:
        if offline:
            raise ValueError("Invalid pointer path ... revision='hf_SECRET'")
        raise PermissionError(13, "Permission denied", str(cache / "models--x" / "blobs" / "y.incomplete"))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(CheckpointError, match=f"the Hugging Face cache {cache} .*could not be used") as err:
        DiPPipeline.load(f"{REPO}/model.safetensors")
    assert ("offline, no request was made" in str(err.value)) == offline and "SECRET" not in str(err.value)
