"""A run killed among its output group's renames (SIGKILL: nothing of the run's own can act) leaves a journal of
them in every folder the group writes to; the next run that looks at any of those folders finishes the renames
first (`io.finish_groups`), so the npz, its grid and the --png-dir PNGs are the same run's. A user's file put at
one of the names since is kept, and a journal that is not this user's runs' own is never acted on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dip_export import cli, io
from tests.test_hostile import run

DRIVER = """
import os, signal, sys
from dip_export import cli, io
kill_at, count, real = int(sys.argv[1]), [0], io._rename_into_place
def rename(tmp, target):
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    count[0] += 1
    real(tmp, target)
io._rename_into_place = rename
sys.argv = ["dip-sample", *sys.argv[2:]]
cli.sample_main()
"""
ARGS = ("--steps", "2", "--num-samples", "3", "--batch-size", "3")


def _killed_run(tmp_path: Path, kill_at: int, seed: int) -> int:
    args = [*ARGS, "--seed", str(seed), "--out", str(tmp_path / "o.npz"), "--png-dir", str(tmp_path / "png")]
    done = subprocess.run([sys.executable, "-c", DRIVER, str(kill_at), *args], capture_output=True, cwd=tmp_path)
    return done.returncode


def _images(tmp_path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(tmp_path / "o.npz") as found:
        npz = found["arr_0"]
    pngs = [_read_png(tmp_path / "png" / f"{i:06d}.png") for i in range(3)]
    return npz, pngs


def _read_png(path: Path) -> np.ndarray:
    import struct
    import zlib

    data = path.read_bytes()
    pos, chunks, size = 8, [], (0, 0)
    while pos < len(data):
        (length,), tag = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    w, h = size
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), np.uint8).reshape(h, 1 + 3 * w)
    return raw[:, 1:].reshape(h, w, 3)


@pytest.mark.parametrize("kill_at", [1, 2, 4])
def test_the_next_run_finishes_a_group_killed_among_its_renames(tmp_path: Path, kill_at: int) -> None:
    code, err = run(cli.sample_main, *ARGS, "--seed", "100", "--out", tmp_path / "o.npz", "--png-dir", tmp_path / "png")
    assert code == 0, err
    old_npz, _ = _images(tmp_path)
    assert _killed_run(tmp_path, kill_at, seed=0) == -9
    journals = [p for p in tmp_path.rglob(".dip-export-group.*.json")]
    assert len(journals) == 2  # the npz's folder and the PNGs'
    io.finish_groups(tmp_path / "png")  # what any next run looking at the --png-dir does first
    assert not list(tmp_path.rglob(".dip-export-group.*.json")) and not list(tmp_path.rglob("*.tmp"))
    npz, pngs = _images(tmp_path)
    assert not np.array_equal(npz, old_npz)  # the killed run's images, all of them
    for image, png in zip(npz, pngs, strict=True):
        np.testing.assert_array_equal(image, png)


def test_a_dip_sample_after_the_kill_runs_and_keeps_a_users_file(tmp_path: Path) -> None:
    code, err = run(cli.sample_main, *ARGS, "--seed", "100", "--out", tmp_path / "o.npz", "--png-dir", tmp_path / "png")
    assert code == 0, err
    assert _killed_run(tmp_path, 1, seed=0) == -9
    (tmp_path / "o.png").unlink()
    (tmp_path / "o.png").write_text("a user's file put there since")
    code, err = run(cli.sample_main, *ARGS, "--seed", "5", "--out", tmp_path / "o2.npz", "--png-dir", tmp_path / "png")
    assert code == 0, err
    assert (tmp_path / "o.png").read_text() == "a user's file put there since"
    assert not list(tmp_path.rglob(".dip-export-group.*.json")) and not list(tmp_path.rglob("*.tmp"))


def test_a_journal_not_this_users_runs_is_never_acted_on(tmp_path: Path) -> None:
    journal = tmp_path / ".dip-export-group.host-1-0000000000000000.json"
    journal.write_text("{}")
    target, tmp = tmp_path / "o.npz", tmp_path / ".o.npz.x-1-0000000000000000.abcdefgh.tmp"
    tmp.write_text("x")
    io.finish_groups(tmp_path)
    assert journal.exists() and tmp.exists() and not target.exists()
