"""A resumed or torchrun run checks its shard folder before any work: every entry is a regular file of a name the
tool writes, and the recorded settings are compared on everything known before the engine is made (sampler, plan,
size, model content, weights, and the backend unless --backend auto picks it later); only the backend picked by
auto is compared after the engine. Nothing in the folder is deleted."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dip_export.generate as gen
from dip_export.distributed import SETTINGS_FILE, World, check_parts_dir, check_settings, parts_dir, run_sharded
from dip_export.errors import UsageError
from dip_export.generate import SamplePlan
from dip_export.io import atomic_path
from dip_export.messages import plain_line, where
from dip_export.pipeline import DiPPipeline
from dip_export.runtime.backends import BackendSpec
from dip_export.text import visible
from tests.test_hostile import one_line, sample, waited_then_one_line

BASE = ["--batch-size", "2", "--shard-batches", "1", "--steps", "2", "--device", "cpu"]
ARGS = [*BASE, "--num-samples", "4", "--resume"]


def _temporary_of(target: Path) -> str:
    """The name atomic_path gives a temporary beside `target` (made and removed again)."""
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        name = tmp.name
        raise KeyError
    assert not tmp.exists() and not target.exists()
    return name


def _own_names() -> list[str]:
    with tempfile.TemporaryDirectory() as probe:
        mine = [_temporary_of(Path(probe) / n) for n in ("settings.json", "shard-000003.npz")]
    foreign = [".shard-000001.npz.node-7.cluster.example-4242-untagged.ab_cd12z.tmp",  # another host, no owner key
               ".settings.json.gpu01-17-0123456789abcdef.a1b2c3d4.tmp"]  # fmt: skip
    return [SETTINGS_FILE, "shard-000000.npz", "shard-000042.npz", "shard-1234567.npz", *mine, *foreign]


OWN = _own_names()
OTHER = ["notes.txt", ".DS_Store", "shard-1.npz", "shard-0000001.npz", "Shard-000000.npz", "shard-000000.npz.bak",
         "shard-000000.npy", "settings.json~", "settings.json.tmp", ".settings.json.swp", "shard-00000a.npz",
         ".shard-000001.npz.host-12-NOTAHEXTAG00000.abcdefgh.tmp", ".other.npz.host-1-untagged.abcdefgh.tmp",
         ".shard-000001.npz.host-1-untagged.abcdefgh.tmp.old", "shard-000001.npz\n", "settings.JSON"]  # fmt: skip
RANDOM = st.text(st.sampled_from("abcxyz019.-_ "), min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..") and not n.startswith(("shard-", ".shard-", "settings.json", ".settings.json"))
)
KINDS = ("file", "folder", "fifo", "socket", "symlink", "dangling symlink")
LAYOUT = st.dictionaries(st.sampled_from(OWN + OTHER) | RANDOM, st.sampled_from(KINDS), max_size=5)


def _make(path: Path, kind: str, elsewhere: Path) -> None:
    if kind == "file":
        path.write_bytes(b"x")
    elif kind == "folder":
        path.mkdir()
        (path / "inside").write_bytes(b"y")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o600)
    elif kind == "symlink":
        path.symlink_to(elsewhere)
    else:
        path.symlink_to(elsewhere.parent / "missing")


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Each entry's kind and, for a regular file, its bytes (never opening a FIFO)."""
    out = {}
    for name in os.listdir(folder):
        mode = os.lstat(folder / name).st_mode
        out[name] = (stat.S_IFMT(mode), (folder / name).read_bytes() if stat.S_ISREG(mode) else None)
    return out


# ---------------------------------------------------------------- the folder check, over layouts


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=LAYOUT)
def test_the_shard_folder_holds_only_the_tools_regular_files(tmp_path_factory: pytest.TempPathFactory, layout: dict) -> None:
    root = tmp_path_factory.mktemp("parts")
    folder, elsewhere = root / "o.npz.parts", root / "elsewhere.npz"
    folder.mkdir()
    elsewhere.write_bytes(b"z")
    for name, kind in layout.items():
        _make(folder / name, kind, elsewhere)
    bad = {name for name, kind in layout.items() if kind != "file" or name not in OWN}
    before = _snapshot(folder)
    try:
        check_parts_dir(folder)
    except UsageError as err:
        text = str(err)
        assert bad, f"a layout of the tool's own files was refused: {text}"
        assert len(plain_line(text).splitlines()) == 1 and str(folder) in text  # printed on one line
        assert any(visible(where(folder / name)) in text for name in bad), text  # names an offending entry, escaped
    else:
        assert not bad, f"accepted {bad}"
    assert _snapshot(folder) == before and elsewhere.read_bytes() == b"z"  # nothing deleted, opened or replaced


def test_the_folder_itself_must_be_a_folder_and_not_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "a.parts").symlink_to(tmp_path / "real")
    os.mkfifo(tmp_path / "b.parts")
    for name, word in (("a.parts", "symlink"), ("b.parts", "not a folder")):
        with pytest.raises(UsageError, match=word):
            check_parts_dir(tmp_path / name)
    check_parts_dir(tmp_path / "absent.parts")  # nothing there yet: nothing to check
    assert not (tmp_path / "absent.parts").exists()


# ---------------------------------------------------------------- the settings, in two stages


SAMPLER = st.fixed_dictionaries({"method": st.sampled_from(["unipc", "euler"]), "steps": st.sampled_from([2, 3])})
RUN = st.fixed_dictionaries({
    "sampler": SAMPLER, "size": st.sampled_from([[32, 32], [32, 64]]), "weights": st.sampled_from(["ema", "raw"]),
    "content": st.sampled_from(["sha256:aa", "sha256:bb"]), "backend": st.sampled_from(["torch:fp32", "onnx:fp32"]),
    "plan": st.sampled_from(["p1", "p2"]),
})  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=RUN, second=RUN, auto=st.booleans())
def test_other_settings_are_found_before_the_engine_and_the_backend_after(
    tmp_path_factory: pytest.TempPathFactory, first: dict, second: dict, auto: bool
) -> None:
    folder = tmp_path_factory.mktemp("run") / "o.npz.parts"
    check_settings(folder, first, World())  # the first run records its settings
    before = _snapshot(folder)
    known = {k: v for k, v in second.items() if not (auto and k == "backend")}
    early = sorted(k for k in known if first[k] != known[k])
    late = sorted(k for k in second if first[k] != second[k])
    pending = ("backend",) if auto else ()
    try:
        check_settings(folder, known, World(), pending=pending)  # the pre-flight
    except UsageError as err:
        assert early and f"other settings ({', '.join(early)})" in str(err) and len(str(err).splitlines()) == 1
    else:
        assert not early
        try:
            check_settings(folder, second, World())  # after the engine: everything
        except UsageError as err:
            assert late == ["backend"] and auto and "other settings (backend)" in str(err)
        else:
            assert not late
    assert _snapshot(folder) == before  # neither stage rewrites the record


@pytest.mark.parametrize("pending", [(), ("backend",)])
def test_the_preflight_writes_nothing(tmp_path: Path, pending: tuple[str, ...]) -> None:
    folder = tmp_path / "o.npz.parts"
    check_settings(folder, {"sampler": 1, "backend": "torch:fp32"}, World(), pending=pending)
    assert not folder.exists()  # recorded once the engine is made (and, under torchrun, the group joined), by rank 0
    folder.mkdir()
    check_settings(folder, {"sampler": 1, "backend": "torch:fp32"}, World(), pending=pending)
    assert os.listdir(folder) == []


# ---------------------------------------------------------------- the Python entry of sharded runs


@pytest.mark.parametrize("kind", ["folder", "fifo", "socket", "symlink"])
def test_run_sharded_refuses_a_bad_slot_before_any_shard_is_made(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "s.npz"
    folder = parts_dir(out)
    folder.mkdir()
    (tmp_path / "elsewhere").write_bytes(b"z")
    _make(folder / "shard-000001.npz", kind, tmp_path / "elsewhere")
    made: list[int] = []

    def make(part: SamplePlan) -> np.ndarray:
        made.append(len(part))
        return np.zeros((len(part), 4, 4, 3), np.uint8)

    plan = SamplePlan([0, 1, 2, 3], [0, 1, 2, 3])
    with pytest.raises(UsageError, match=r"shard-000001\.npz is a"):
        run_sharded(plan, out, world=World(), settings={"a": 1}, batch_size=2, shard_batches=1, make_images=make)
    assert made == [] and sorted(os.listdir(folder)) == ["shard-000001.npz"]  # not even settings.json


# ---------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shard folder of a finished `dip-sample --resume` run (copied by each test)."""
    root = tmp_path_factory.mktemp("finished")
    code, err = sample(*ARGS, "--out", root / "r.npz")
    assert code == 0, err
    return parts_dir(root / "r.npz")


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records (and forbids) every expensive step: measuring, engines, exports, sampling."""
    calls: list[str] = []

    def forbid(name: str):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} ran before the shard folder was checked")

        return call

    monkeypatch.setattr(DiPPipeline, "_choose_auto", forbid("measure"))
    monkeypatch.setattr(DiPPipeline, "engine", forbid("engine"))
    monkeypatch.setattr(gen, "sample", forbid("sample"))
    return calls


def _copy(finished: Path, out: Path) -> Path:
    shutil.copytree(finished, parts_dir(out))
    return parts_dir(out)


@pytest.mark.parametrize(
    ("change", "named"),
    [(["--steps", "3", "--backend", "onnx"], "backend, sampler"), (["--backend", "onnx"], "backend"),
     (["--steps", "3", "--backend", "auto"], "sampler"), (["--seed", "7"], "plan")],
)  # fmt: skip
def test_the_cli_refuses_other_settings_before_any_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finished: Path, no_work: list[str], change: list[str], named: str
) -> None:
    monkeypatch.chdir(tmp_path)  # where an on-the-fly export would go (engines/)
    out = tmp_path / "r.npz"
    folder = _copy(finished, out)
    before = _snapshot(folder)
    given = {change[i] for i in range(0, len(change), 2)}  # an option is given once: the change replaces its value
    args = [a for i in range(0, len(ARGS), 2) if ARGS[i] not in given for a in ARGS[i : i + 2]]
    code, err = sample(*args, *change, "--out", out)
    one_line(code, err, 2, str(folder), f"other settings ({named})")
    assert no_work == [] and not (tmp_path / "engines").exists() and not out.exists()
    assert _snapshot(folder) == before


def test_the_backend_auto_picks_is_compared_once_picked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finished: Path) -> None:
    out = tmp_path / "r.npz"
    folder = _copy(finished, out)
    before = _snapshot(folder)
    picked: list[str] = []

    def pick(self: DiPPipeline, size: tuple[int, int], batch: int) -> None:
        self._spec = BackendSpec.parse(picked[-1])

    monkeypatch.setattr(DiPPipeline, "_choose_auto", pick)
    monkeypatch.setattr(DiPPipeline, "engine", lambda self, *a, **k: None)
    monkeypatch.setattr(gen, "sample", lambda *a, **k: pytest.fail("sampled under another backend"))
    picked.append("compile:fp32")
    code, err = sample(*ARGS, "--backend", "auto", "--out", out)
    one_line(code, err, 2, str(folder), "other settings (backend)")
    assert _snapshot(folder) == before and not out.exists()
    picked.append("torch:fp32")  # the backend of the first run: every shard is there, nothing is sampled
    code, err = sample(*ARGS, "--backend", "auto", "--out", out)
    assert code == 0, err
    assert out.is_file() and _snapshot(folder) == before


@pytest.mark.parametrize(("kind", "name"), [("folder", "shard-000001.npz"), ("fifo", "shard-000001.npz"),
                                            ("socket", "shard-000003.npz"), ("file", "notes.txt"),
                                            ("fifo", SETTINGS_FILE)])  # fmt: skip
def test_the_cli_refuses_a_bad_entry_before_sampling(
    tmp_path: Path, finished: Path, no_work: list[str], kind: str, name: str
) -> None:
    out = tmp_path / "r.npz"
    folder = _copy(finished, out)
    (folder / name).unlink(missing_ok=True)
    _make(folder / name, kind, tmp_path / "elsewhere")
    before = _snapshot(folder)
    code, err = sample(*ARGS, "--out", out)
    one_line(code, err, 2, f"{folder}/{name}")
    assert no_work == [] and _snapshot(folder) == before and not out.exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_each_torchrun_rank_checks_the_folder_before_it_joins_or_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finished: Path, rank: int
) -> None:
    """A rank as torchrun starts it (its environment): both checks come before the process group is joined (the
    line saying the rank waits for the others is printed only where it joins)."""
    for name, value in {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    joined: list[int] = []

    def join(**kwargs: object) -> None:
        joined.append(World.from_env().rank)
        raise RuntimeError("stopped where the group is joined")

    monkeypatch.setattr(torch.distributed, "init_process_group", join)
    fresh = tmp_path / "fresh.npz"
    code, err = sample(*BASE, "--num-samples", "4", "--out", fresh)
    waiting = f"rank {rank}: waiting for 2 processes at 127.0.0.1:1 (up to 1800 s)"
    waited_then_one_line(code, err, 1, waiting, f"rank {rank} of 2 could not join", "stopped where the group is joined")
    assert joined == [rank] and not parts_dir(fresh).exists()  # the pre-flight writes nothing, on any rank
    monkeypatch.setattr(gen, "sample", lambda *a, **k: pytest.fail("sampled before joining"))
    monkeypatch.setattr(DiPPipeline, "engine", lambda self, *a, **k: None)
    out = tmp_path / "r.npz"
    folder = _copy(finished, out)
    (folder / "shard-000000.npz").unlink()
    (folder / "shard-000000.npz").mkdir()
    before = _snapshot(folder)
    code, err = sample(*BASE, "--num-samples", "4", "--out", out)
    one_line(code, err, 2, f"{folder}/shard-000000.npz is a folder")
    (folder / "shard-000000.npz").rmdir()
    code, err = sample(*BASE, "--num-samples", "4", "--cfg", "4", "--out", out)
    one_line(code, err, 2, str(folder), "other settings (sampler)")
    assert joined == [rank] and not out.exists() and set(_snapshot(folder)) == set(before) - {"shard-000000.npz"}


def test_a_clean_resume_still_runs(tmp_path: Path, finished: Path) -> None:
    """The control: the tool's own folder, with a shard missing and a stale temporary beside it, resumes."""
    out = tmp_path / "r.npz"
    folder = _copy(finished, out)
    (folder / "shard-000001.npz").unlink()
    (folder / ".shard-000001.npz.node-9-12-untagged.abcdefgh.tmp").write_bytes(b"partial")
    code, err = sample(*ARGS, "--out", out)
    assert code == 0, err
    assert np.load(out)["arr_0"].shape == (4, 32, 32, 3)
