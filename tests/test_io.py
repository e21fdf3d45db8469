"""Atomic output: complete or absent; leftovers of killed runs are cleaned, live ones are not."""

import socket
import subprocess
import sys

import pytest

from dip_export.export.manifest import ownership_problem
from dip_export.io import _tmp_prefix, _tmp_tag, atomic_dir, atomic_path


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.npz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_process_are_removed_but_not_live_ones(tmp_path):
    target = tmp_path / "export"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    tag = _tmp_tag(target.name, host, dead_pid, create=True)
    stale = tmp_path / f".{target.name}.{host}-{dead_pid}-{tag}.abcd_123.tmp"  # a killed run's leftover
    stale.mkdir()
    forged = tmp_path / f".{target.name}.{host}-{dead_pid}-{'0' * 16}.abcd_124.tmp"  # looks like one, wrong tag
    forged.mkdir()
    (forged / "notes.txt").write_text("mine")
    live = tmp_path / f"{_tmp_prefix(target)}xyzw_123.tmp"
    live.mkdir()
    with atomic_dir(target, problem_of=ownership_problem) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert not stale.exists() and live.exists()
    assert (forged / "notes.txt").read_text() == "mine"
    assert (target / "manifest.json").is_file()
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)
