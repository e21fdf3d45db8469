"""SIGTERM is handled whatever SIGINT's disposition (a job started with `&` in a script has SIGINT ignored), and once
a command is over (its outputs in place, its last line out) a signal changes nothing: the process ends with the
command's own exit code, during Python's finalisation too (`entry._guard_loading`, `entry._ignore_to_the_end`).
Run as installed commands with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dip_export.entry import TERMINATED


def _start(tmp_path: Path, *args: str, sigint_ignored: bool = False) -> subprocess.Popen:
    script = Path(sys.executable).parent / "dip-sample"
    assert script.is_file(), "the README's install puts the commands beside the interpreter"

    def disposition() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL)

    return subprocess.Popen([script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100", "HOME": str(tmp_path / "home")},
                            preexec_fn=disposition)  # fmt: skip


def test_sigterm_is_handled_while_sigint_is_ignored(tmp_path):
    child = _start(tmp_path, "--steps", "50", "--num-samples", "64", "--batch-size", "4", "--out", "o.npz",
                   sigint_ignored=True)  # fmt: skip
    assert child.stderr is not None
    first = child.stderr.readline()  # the sampler line: the command runs
    time.sleep(1.0)
    child.send_signal(signal.SIGTERM)
    _, rest = child.communicate(timeout=120)
    err = first + rest
    assert child.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == TERMINATED and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == []  # nothing partial, no temporary


@pytest.mark.parametrize(("signum", "delay"), [(signal.SIGINT, 0.05), (signal.SIGTERM, 0.05), (signal.SIGINT, 0.3),
                                               (signal.SIGTERM, 0.3)])  # fmt: skip
def test_a_signal_after_the_last_line_changes_nothing(tmp_path, signum, delay):
    child = _start(tmp_path, "--steps", "2", "--classes", "1", "--seeds", "0", "--out", "o.npz")
    assert child.stderr is not None
    lines = []
    for line in child.stderr:
        lines.append(line)
        if line.startswith("wrote"):
            break
    time.sleep(delay)  # the interpreter is finalising (torch's teardown takes most of a second)
    if child.poll() is None:
        child.send_signal(signum)
    _, rest = child.communicate(timeout=120)
    assert child.returncode == 0, "".join(lines) + rest
    assert rest == "" and lines[-1].startswith("wrote o.npz")
    assert np.load(tmp_path / "o.npz")["arr_0"].shape == (1, 32, 32, 3)
