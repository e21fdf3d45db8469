"""A torchrun rank joining its process group says so before it waits: one line naming the rank, the number of
processes, where they meet and for how long it waits; a failed join then ends in the one-line error.

The line is property-tested on `World.init` (PyTorch's join replaced by one that fails at once), and shown on a real
rendezvous that nobody else joins: dip-sample as torchrun starts rank 0, a free port and a short timeout.
"""

from __future__ import annotations

import io
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

import dip_export.distributed as distributed
from dip_export import cli
from dip_export.distributed import MAX_PORT, World
from dip_export.errors import DipError, UsageError
from dip_export.messages import plain_line
from tests.test_hostile import run, waited_then_one_line

NAMES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
ADDRESS = st.one_of(st.sampled_from(["127.0.0.1", "localhost", "node-7.cluster", "[red]x[/red]", "::1"]),
                    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(size=st.integers(2, 1 << 20), data=st.data(), address=ADDRESS, port=st.integers(1, MAX_PORT),
       seconds=st.sampled_from([1, 2.5, 60, 1800]))  # fmt: skip
def test_the_waiting_line_comes_before_the_join(size, data, address, port, seconds):
    rank = data.draw(st.integers(0, size - 1))
    env = {"WORLD_SIZE": str(size), "RANK": str(rank), "MASTER_ADDR": address, "MASTER_PORT": str(port)}
    world = World.from_env(env)
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    seen: list[str] = []

    def join(backend: str, timeout: timedelta) -> None:
        seen.append(out.getvalue())  # what was printed by the time the rank starts waiting
        assert (backend, timeout) == ("gloo", timedelta(seconds=seconds))
        raise RuntimeError("nobody came\nsecond line")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distributed, "join_timeout", lambda backend: timedelta(seconds=seconds))
        patch.setattr(torch.distributed, "init_process_group", join)
        patch.setattr(socket, "getaddrinfo", lambda *a, **k: [])  # every address resolves here (tested apart)
        with pytest.raises(DipError) as err:
            world.init(torch.device("cpu"), console)
    line = plain_line(f"rank {rank}: waiting for {size} processes at {address}:{port} (up to {seconds:g} s)")
    assert seen == [line + "\n"] and out.getvalue() == line + "\n"  # printed once, as text (no markup), not wrapped
    assert str(err.value) == (f"rank {rank} of {size} could not join the gloo process group at {address}:{port} "
                              "(RuntimeError: nobody came)")  # fmt: skip


@pytest.mark.parametrize("world", [World(), World(0, 1, 0, "127.0.0.1", 29500)])
def test_one_process_neither_waits_nor_says_so(monkeypatch, world):
    out = io.StringIO()
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: pytest.fail("joined a group of one"))
    world.init(torch.device("cpu"), Console(file=out))
    assert out.getvalue() == ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_dip_sample_says_it_waits_then_fails_in_one_line(tmp_path: Path, monkeypatch):
    """rank 0 of 2 as torchrun starts it, with nobody else coming: the waiting line, then the timeout in one line."""
    port = _free_port()
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for name in NAMES:
        monkeypatch.setenv(name, env[name])
    monkeypatch.setattr(distributed, "join_timeout", lambda backend: timedelta(seconds=2))
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "2", "--device", "cpu", "--out", "tr5.npz")
    waiting = f"rank 0: waiting for 2 processes at 127.0.0.1:{port} (up to 2 s)"
    waited_then_one_line(code, err, 1, waiting, f"rank 0 of 2 could not join the gloo process group at 127.0.0.1:{port}")
    assert not torch.distributed.is_initialized() and not (tmp_path / "tr5.npz").exists()


def test_the_timeout_named_is_pytorchs_default_for_the_backend():
    from torch.distributed import constants

    assert distributed.join_timeout("gloo") == timedelta(minutes=30)  # PyTorch's documented default
    nccl = getattr(constants, "default_pg_nccl_timeout", None)  # None where PyTorch has no NCCL
    assert distributed.join_timeout("nccl") == (nccl or timedelta(minutes=30))


@settings(max_examples=30, deadline=None)
@given(size=st.integers(2, 64), data=st.data(), address=ADDRESS, port=st.integers(1, MAX_PORT))
def test_an_address_that_does_not_resolve_is_refused_before_waiting(size, data, address, port):
    """No process group can meet at a MASTER_ADDR that does not resolve: refused at once, no waiting line, no join."""
    rank = data.draw(st.integers(0, size - 1))
    world = World.from_env({"WORLD_SIZE": str(size), "RANK": str(rank), "MASTER_ADDR": address, "MASTER_PORT": str(port)})
    out = io.StringIO()

    def unknown(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", unknown)
        patch.setattr(torch.distributed, "init_process_group", lambda **kw: pytest.fail("joined"))
        with pytest.raises(DipError) as err:
            world.init(torch.device("cpu"), Console(file=out))
    assert out.getvalue() == ""
    assert str(err.value) == (f"rank {rank} of {size}: MASTER_ADDR of {address}:{port} does not resolve "
                              "(Name or service not known); no process group can meet there")  # fmt: skip


def test_dip_sample_refuses_an_address_that_does_not_resolve(tmp_path: Path, monkeypatch):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "nonexistent.invalid", "MASTER_PORT": "29997"}
    for name in NAMES:
        monkeypatch.setenv(name, env[name])
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, "--device", "cpu", "--num-samples", "2", "--steps", "2", "--out", tmp_path / "t.npz")
    (line,) = err.strip().splitlines()  # the resolver's reason depends on the machine's DNS set-up
    assert code == 1 and line.startswith("error: rank 0 of 2: MASTER_ADDR of nonexistent.invalid:29997 does not resolve (")
    assert line.endswith("); no process group can meet there") and "waiting" not in err
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize(
    "env",
    [[("WORLD_SIZE", "2")], "WORLD_SIZE=2", {"WORLD_SIZE": 2}, {"RANK": b"0"}, {"WORLD_SIZE": "2", "MASTER_ADDR": 1},
     {"LOCAL_RANK": 0.0}, 5, None.__class__],
)  # fmt: skip
def test_an_environment_of_another_shape_is_one_line(env) -> None:
    with pytest.raises(UsageError) as err:
        World.from_env(env)
    assert "\n" not in str(err.value) and type(err.value) is UsageError
