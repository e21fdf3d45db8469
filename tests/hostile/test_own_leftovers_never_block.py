"""What the tool itself left in a folder when it was killed never blocks that folder.

A write probe is a tagged temporary made and removed with Ctrl-C and SIGTERM held; a folder checked as an output
(`--png-dir`, `--output-dir`) first removes the tagged temporaries of this user's processes that no longer run
(`io.remove_stale_in`). A live run's temporaries, a look-alike with another tag and a user's file stay, and
still make the folder refused."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli, io
from dip_export.errors import UsageError
from tests.hostile.test_swap_reader import dead_pid
from tests.test_hostile import run

FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DEAD = dead_pid()


def _temporary(folder: Path, target: str, pid: int, tag: str | None = None, tail: str = "abcdefgh") -> Path:
    host = socket.gethostname()
    tag = tag or io._tmp_tag(target, host, pid, create=True)
    path = folder / f".{target}.{host}-{pid}-{tag}.{tail}.tmp"
    path.write_bytes(b"half")
    return path


@FEW
@given(
    targets=st.lists(
        st.sampled_from(["000000.png", "000001.png", io.PROBE_NAME, "o.npz", "odd name.png"]), min_size=1, max_size=4
    ),
    whose=st.sampled_from(["dead", "alive", "other tag", "user"]),
)
def test_a_folder_loses_only_its_dead_runs_own_temporaries(tmp_path_factory, targets: list[str], whose: str) -> None:
    folder = tmp_path_factory.mktemp("png")
    made = []
    for target in targets:
        if whose == "user":
            path = folder / f".{target}.lookalike.tmp"
            path.write_text("mine")
        else:
            pid = DEAD if whose != "alive" else os.getpid()
            path = _temporary(folder, target, pid, tag="0" * 16 if whose == "other tag" else None)
        made.append(path)
    if whose == "dead":
        io.check_output_folder(folder, lambda name: name.endswith(".png"), "sample-image")
        assert os.listdir(folder) == []
    else:
        with pytest.raises(UsageError, match="holds files this run would not replace"):
            io.check_output_folder(folder, lambda name: name.endswith(".png"), "sample-image")
        assert all(p.exists() for p in made)


def test_dip_sample_takes_a_png_dir_its_killed_run_left(tmp_path: Path) -> None:
    png = tmp_path / "png"
    png.mkdir()
    _temporary(png, "000000.png", DEAD)
    _temporary(png, io.PROBE_NAME, DEAD)
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "2", "--out", tmp_path / "o.npz", "--png-dir", png)
    assert code == 0, err
    assert sorted(os.listdir(png)) == ["000000.png", "000001.png"]


def test_dip_export_takes_an_output_folder_its_killed_run_left(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    out.mkdir()
    _temporary(out, io.PROBE_NAME, DEAD)
    code, err = run(cli.export_main, "onnx", "--image-size", "32", "--output-dir", out)
    assert code == 0, err
    assert (out / "manifest.json").is_file() and not [n for n in os.listdir(out) if n.endswith(".tmp")]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_probe_interrupted_halfway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    """The signal comes between the probe's file made and removed: it acts once the file is gone."""
    real_close = os.close
    sent = []

    def close(fd: int) -> None:
        real_close(fd)
        if not sent:
            sent.append(signum)
            signal.raise_signal(signum)

    def stop(received: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        monkeypatch.setattr(os, "close", close)
        with pytest.raises(KeyboardInterrupt):
            io.probe_write(tmp_path, tmp_path / "x.npz")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent == [signum] and os.listdir(tmp_path) == []
