"""torchrun's environment: every variable read as a whole number in its range, or one line naming it, before any work.

`World.from_env` is property-tested over environments; the surfaces are dip-sample (a subprocess given the
environment, and in-process), the request object behind it (`SampleRequest`), and joining the process group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dip_export.distributed import MAX_PORT, MAX_WORLD_SIZE, World
from dip_export.errors import DipError, UsageError
from tests.test_hostile import one_line, run, waited_then_one_line

NAMES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# what a variable may hold: numbers in and around every range, and text that is no number (or no ASCII one)
VALUE = st.one_of(
    st.integers(-3, 6).map(str),
    st.sampled_from(["abc", "2x", "1.0", "1e1", "1_0", " 1", "1 ", "", "+1", "-0", "0x1", "\u0663", "\uff11", "9" * 45,
                     str(MAX_WORLD_SIZE), str(MAX_WORLD_SIZE + 1), "65535", "65536", "localhost", "127.0.0.1", "a b"]),
    st.text(max_size=6),
)  # fmt: skip
ENV = st.dictionaries(st.sampled_from(NAMES), VALUE)


def _whole(text: str | None, default: int) -> int | None:
    """The oracle: ASCII digits with at most a leading sign, nothing else."""
    if text is None:
        return default
    digits = text[1:] if text[:1] in "+-" else text
    return int(text) if digits.isascii() and digits.isdigit() and len(digits) <= 40 else None


def _expected(env: dict[str, str]) -> tuple[int, int, int] | str:
    """(rank, size, local rank), or the variable the run must refuse first."""
    size = _whole(env.get("WORLD_SIZE"), 1)
    if size is None or not 1 <= size <= MAX_WORLD_SIZE:
        return "WORLD_SIZE"
    rank, local = _whole(env.get("RANK"), 0), _whole(env.get("LOCAL_RANK"), 0)
    for name, value in (("RANK", rank), ("LOCAL_RANK", local)):
        if value is None or not 0 <= value < size:
            return name
    if size > 1:
        address = env.get("MASTER_ADDR")
        if not address or not address.isprintable() or any(c.isspace() for c in address):
            return "MASTER_ADDR"
        port = _whole(env.get("MASTER_PORT"), 0)
        if "MASTER_PORT" not in env or port is None or not 1 <= port <= MAX_PORT:
            return "MASTER_PORT"
    assert rank is not None and local is not None
    return (rank, size, local)


@given(ENV)
def test_the_environment_is_read_exactly(env):
    expected = _expected(env)
    if isinstance(expected, tuple):
        world = World.from_env(env)
        assert (world.rank, world.size, world.local_rank) == expected
        assert all(type(v) is int for v in (world.rank, world.size, world.local_rank))
    else:
        with pytest.raises(UsageError) as err:
            World.from_env(env)
        message = str(err.value)
        assert message.startswith(f"{expected} must ") and "\n" not in message and len(message) < 200


@given(st.integers(1, 64).flatmap(lambda size: st.tuples(st.just(size), st.integers(-2, size + 2))))
def test_a_rank_outside_the_world_is_refused(size_rank):
    size, rank = size_rank
    env = {"WORLD_SIZE": str(size), "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    if 0 <= rank < size:
        assert World.from_env(env).rank == rank
    else:
        with pytest.raises(UsageError, match=rf"RANK must be a whole number 0..WORLD_SIZE-1 \(WORLD_SIZE is {size}\)"):
            World.from_env(env)


def test_no_environment_is_one_process_of_one():
    assert World.from_env({}) == World(0, 1, 0)


BAD = [
    ({"RANK": "abc"}, "RANK must be a whole number 0..WORLD_SIZE-1 (WORLD_SIZE is 1) (got 'abc')"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK must be a whole number"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK must be a whole number"),
    ({"WORLD_SIZE": "2x"}, "WORLD_SIZE must be a whole number"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be a whole number 1.."),
    ({"WORLD_SIZE": "-3"}, "WORLD_SIZE must be a whole number 1.."),
    ({"RANK": "5", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK must be"),
    ({"RANK": "1", "WORLD_SIZE": "2"}, "MASTER_ADDR must name the host"),
    ({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"}, "MASTER_PORT must be"),
]  # fmt: skip
SAMPLE = ["--classes", "1", "--seeds", "0", "--steps", "2", "--device", "cpu"]


def _env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NAMES}
    return {**env, **extra, "PYTHONPATH": str(Path(__file__).parents[2]), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("extra, words", [BAD[0], BAD[4], BAD[6]])
def test_dip_sample_started_with_a_bad_environment(tmp_path, extra, words):
    """A process as torchrun would start it: one line, exit 2, nothing written (an --out that cannot be written
    shows the environment is checked first)."""
    out = tmp_path / "nodir" / "a.txt"
    proc = subprocess.run(
        [sys.executable, "-c", "from dip_export.cli import sample_main; sample_main()", *SAMPLE, "--out", str(out)],
        capture_output=True, text=True, env=_env(tmp_path, extra), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and words in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, words", BAD)
def test_dip_sample_refuses_in_process(tmp_path, monkeypatch, extra, words):
    from dip_export import cli

    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, *SAMPLE, "--out", tmp_path / "a.npz")
    one_line(code, err, 2, words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, words", BAD)
def test_the_sample_request_refuses(monkeypatch, extra, words):
    from dip_export.app import ModelRequest, SampleRequest

    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UsageError, match=words.split(" (")[0]):
        SampleRequest(ModelRequest(), Path("o.npz"), classes="1", seeds="0")


def _busy_port() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener


def test_a_failed_rendezvous_is_one_line(monkeypatch):
    with _busy_port() as busy:
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(busy.getsockname()[1]), "WORLD_SIZE": "2", "RANK": "0"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(DipError, match="rank 0 of 2 could not join the gloo process group") as err:
            World.from_env().init(torch.device("cpu"))
    assert "\n" not in str(err.value) and not torch.distributed.is_initialized()


def test_dip_sample_with_a_failed_rendezvous(tmp_path):
    with _busy_port() as busy:
        extra = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(busy.getsockname()[1]), "WORLD_SIZE": "2", "RANK": "0"}
        proc = subprocess.run(
            [sys.executable, "-c", "from dip_export.cli import sample_main; sample_main()", *SAMPLE,
             "--out", str(tmp_path / "a.npz")],
            capture_output=True, text=True, env=_env(tmp_path, extra), cwd=tmp_path, timeout=120,
        )  # fmt: skip
    waiting = f"rank 0: waiting for 2 processes at 127.0.0.1:{extra['MASTER_PORT']} (up to 1800 s)"
    waited_then_one_line(proc.returncode, proc.stderr, 1, waiting, "rank 0 of 2 could not join the gloo process group")
    assert not (tmp_path / "a.npz").exists()


def test_a_local_rank_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UsageError, match="LOCAL_RANK is 2 but PyTorch sees 2 CUDA device"):
        World(2, 4, 2).device(torch.device("cuda"))
