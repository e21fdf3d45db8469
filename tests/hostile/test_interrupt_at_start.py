"""Ctrl-C while a command's libraries load ends in one line with exit 130, never a traceback: the installed commands
(`dip_export.entry`) load the CLI inside their own handling, and the package itself loads nothing heavy first.

A child process raises KeyboardInterrupt, as Ctrl-C would, at the import of each library in turn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dip_export.entry import INTERRUPTED

ROOT = Path(__file__).resolve().parents[2]
CHILD = r"""
import sys

LIBRARY = sys.argv[1]

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == LIBRARY:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
from dip_export import entry
sys.argv = ["dip-sample", "--help"]
entry.sample_main()
"""


@pytest.mark.parametrize("library", ["numpy", "typer", "rich", "dip_export.cli", "dip_export.settings"])
def test_ctrl_c_while_libraries_load_is_one_line(library):
    done = subprocess.run([sys.executable, "-c", CHILD, library], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [INTERRUPTED] and "Traceback" not in done.stderr


def test_the_package_loads_nothing_heavy():
    code = "import sys, dip_export.entry; print(sorted(m for m in ('numpy', 'torch', 'typer', 'rich') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
