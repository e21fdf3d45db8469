"""The snapshot entries of the cached revision are checked before the Hub is asked: a link that leads anywhere but
the same repo's `blobs/` is refused in one line with no request made, online too (the Hub's answer says nothing
such a link needs); a cache entry huggingface_hub makes still loads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import DEMO_CHECKPOINT
from dip_export.errors import CheckpointError
from dip_export.hub import check_hub_cache
from tests.hostile import test_hub_cache
from tests.hostile.test_hub_cache import BLOB, COMMIT, NAME, REPO, SNAPSHOT, _cache, _Hub
from tests.test_hostile import one_line, run

online = test_hub_cache.online  # the local endpoint standing in for the Hub, recording each request in _Hub.seen

REFUSED = "not a file of the repo's blobs"
SAMPLE = ("--classes", "1", "--seeds", "0", "--steps", "1")


def _link(cache: Path, target: str, name: str = NAME) -> Path:
    """The cache of `_cache` with the snapshot entry `name` made a link to `target` instead."""
    _cache(cache, "relative blob")
    entry = cache / SNAPSHOT / name
    if os.path.lexists(entry):
        entry.unlink()
    entry.symlink_to(target)
    return entry


@pytest.mark.parametrize("revision", [None, "main", COMMIT])
@pytest.mark.parametrize("named", [True, False])
def test_a_link_out_is_refused_before_any_request(online: Path, tmp_path: Path, revision: str | None, named: bool,
                                                  no_sampling) -> None:  # fmt: skip
    _link(online, str(DEMO_CHECKPOINT))
    name = f"{REPO}/{NAME}" if named else REPO
    with pytest.raises(CheckpointError, match=REFUSED) as err:
        DiPPipeline.load(name, revision=revision)
    assert len(str(err.value).splitlines()) == 1 and str(online) in str(err.value)
    out = tmp_path / "o.npz"
    extra = ("--revision", revision) if revision else ()
    code, stderr = run(cli.sample_main, name, *SAMPLE, *extra, "--out", out)
    one_line(code, stderr, 1, REFUSED, REPO)
    assert not out.exists()
    assert _Hub.seen == []  # online, and yet nothing was asked


def test_only_the_file_asked_for_is_checked_when_one_is_named(online: Path) -> None:
    """A bad link next to the checkpoint: refused when the repo's files are listed (no file named), not otherwise."""
    _link(online, str(DEMO_CHECKPOINT), "notes.txt")  # the checkpoint itself is a good blob link
    with pytest.raises(CheckpointError, match=REFUSED):
        DiPPipeline.load(REPO)
    assert _Hub.seen == []
    assert DiPPipeline.load(f"{REPO}/{NAME}", device="cpu").config.num_classes > 0


@pytest.mark.parametrize("named", [True, False])
def test_a_blob_link_still_loads_online(online: Path, named: bool) -> None:
    _cache(online, "relative blob")
    assert DiPPipeline.load(f"{REPO}/{NAME}" if named else REPO, device="cpu").config.num_classes > 0


_SEGMENTS = st.sampled_from(["..", "blobs", BLOB, "elsewhere", NAME, "models--other--repo", "snapshots", COMMIT, "."])


@st.composite
def _targets(draw: st.DrawFn) -> tuple[str, str]:
    """(kind, link target): outside the cache, another repo's blobs, relative ../ paths, absolute paths."""
    kind = draw(st.sampled_from(["outside", "other repo's blob", "relative", "absolute"]))
    if kind == "outside":
        return kind, str(DEMO_CHECKPOINT)
    if kind == "other repo's blob":
        other = f"models--other--repo/blobs/{BLOB}"
        return kind, draw(st.sampled_from([f"../../../../{other}", "{root}/" + other]))
    tail = "/".join(draw(st.lists(_SEGMENTS, min_size=1, max_size=6)))
    if kind == "relative":
        return kind, "../" * draw(st.integers(0, 6)) + tail
    return kind, "{root}/" + tail


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=_targets(), named=st.booleans())
def test_any_link_but_one_into_the_repos_blobs_is_refused_unasked(online: Path, target: tuple[str, str],
                                                                  named: bool) -> None:  # fmt: skip
    shutil.rmtree(online)
    online.mkdir()
    _Hub.seen.clear()
    (online / "elsewhere").mkdir()
    shutil.copy(DEMO_CHECKPOINT, online / "elsewhere" / NAME)
    (online / "models--other--repo" / "blobs").mkdir(parents=True)
    shutil.copy(DEMO_CHECKPOINT, online / "models--other--repo" / "blobs" / BLOB)
    entry = _link(online, target[1].replace("{root}", str(online)))
    blob = online / f"models--{REPO.replace('/', '--')}" / "blobs" / BLOB
    if os.path.realpath(entry) == os.path.realpath(blob):  # a link into the repo's blobs, however spelled
        check_hub_cache(REPO, online, REPO, None, NAME if named else None)
        return
    with pytest.raises(CheckpointError, match=REFUSED) as err:
        DiPPipeline.load(f"{REPO}/{NAME}" if named else REPO)
    assert len(str(err.value).splitlines()) == 1
    assert _Hub.seen == []
