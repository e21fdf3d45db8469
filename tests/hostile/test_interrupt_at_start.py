"""Ctrl-C while a command's libraries load ends in one line with exit 130, never a traceback: the installed commands
(`dip_export.entry`) load the CLI inside their own handling, and the package itself loads nothing heavy first.

A child process raises KeyboardInterrupt, as Ctrl-C would, at the import of each library in turn."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dip_export.entry import COMMANDS, INTERRUPTED, TERMINATED

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


PYTHON_MAIN_LOADER = (  # every frame Python's own import machinery: no line of the script has run
    r"python: failed to set __main__\.__loader__\nTraceback \(most recent call last\):\n"
    r"(?:  File \"<frozen [^>]+>\", line \d+, in \S+\n(?:    .*\n)*)*KeyboardInterrupt: ?\n"
)
PYTHON_STARTUP = (
    r"Failed checking if argv\[0\] is an import path entry\nTraceback \(most recent call last\):\n"
    r"(?:  .*\n)*KeyboardInterrupt\n"
)
PYTHON_SITE_PTH = (  # Python's site reports a Ctrl-C while it runs a .pth line, skips the rest of that file, goes on
    r"Error processing line \d+ of [^\n]+\.pth:\n\n  Traceback \(most recent call last\):\n"
    r"(?:    .*\n)*  KeyboardInterrupt\n\nRemainder of file ignored\n"
)
PYTHON_IMPORT_LOCK = (  # the import machinery's own report of a Ctrl-C in its lock callback, while site loads
    r"Exception ignored in: <function _get_module_lock\.<locals>\.cb at 0x[0-9a-f]+>\n"
    r"Traceback \(most recent call last\):\n(?:  File \"<frozen [^>]+>\", line \d+, in \S+\n)*KeyboardInterrupt: ?\n"
)
PYTHON_SITE_FATAL = (
    rf"(?:{PYTHON_IMPORT_LOCK})?(?:Error processing line \d+ of [^\n]+\.pth:\n\n)?Fatal Python error: init_import_site"
)
NO_PACKAGE = r"Traceback \(most recent call last\):\n(?:  .*\n)*ModuleNotFoundError: No module named 'dip_export'\n"


def _installed(name: str) -> Path:
    script = Path(sys.executable).parent / name
    assert script.is_file(), f"{script}: the README's install puts the commands beside the interpreter"
    return script


def _outcome(done: subprocess.CompletedProcess) -> str:
    """What a Ctrl-C at some instant of an installed command's life may end in; anything else is a failure."""
    err = done.stderr
    if done.returncode in (130, -signal.SIGINT) and err.splitlines() == [INTERRUPTED]:  # -2: a 2nd Ctrl-C at exit
        return "interrupted"
    if done.returncode == 0 and "Usage" in done.stdout and err == "":
        return "finished"
    if done.returncode == -signal.SIGINT and err == "":  # before Python's handler is in place, or after it is gone
        return "killed"
    if re.match(PYTHON_SITE_FATAL, err):  # Python's own start (site, or its report on a .pth line), before any of ours
        return "python"
    if re.fullmatch(PYTHON_MAIN_LOADER, err):  # Python's own start (the script's loader), before any of ours
        return "python"
    site = re.match(PYTHON_SITE_PTH, err)
    if site and re.fullmatch(NO_PACKAGE, err[site.end() :]):
        return "python"  # the skipped line was the one that makes the installed package importable
    startup = re.match(PYTHON_STARTUP, err) or site
    if startup:  # Python reports a Ctrl-C in sys.path[0] or a .pth and goes on; the rest obeys the same rules
        rest = err[startup.end() :]
        if not rest.strip():
            return "python"
        return _outcome(subprocess.CompletedProcess(done.args, done.returncode, done.stdout, rest))
    if _before_the_guard(err):
        return "python"
    raise AssertionError(f"exit {done.returncode}: {err[-3000:]!r}")


GUARD_CALLS = ("_as_command", "_guard_loading")  # what the module-level guard calls, in entry.py


def _before_the_guard(err: str) -> bool:
    """A KeyboardInterrupt raised before `dip_export.entry` installs its handler: every frame is the script's
    import line, the import machinery's, module-level code of the package or `entry` up to the guard's own call, or
    the two functions that guard calls (its condition, and the install itself before its `signal` call took)."""
    from dip_export import entry

    guard = next(n for n, line in enumerate(Path(entry.__file__).read_text().splitlines(), 1) if line == "if _as_command():")
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', err)
    if not err.startswith("Traceback") or err.strip().splitlines()[-1] != "KeyboardInterrupt" or not frames:
        return False
    in_entry = [(int(line), function) for file, line, function in frames if file.endswith("dip_export/entry.py")]
    at_module = [line for line, function in in_entry if function == "<module>"]
    for file, line, function in frames:
        if file.startswith("<frozen") or Path(file).name in COMMANDS or file.endswith("dip_export/__init__.py"):
            continue
        if file.endswith("dip_export/entry.py") and function == "<module>" and int(line) <= guard + 1:
            continue
        if file.endswith("dip_export/entry.py") and function in GUARD_CALLS and at_module and at_module[0] <= guard + 1:
            continue
        return False
    return True


@pytest.mark.parametrize("command", COMMANDS)
def test_a_real_ctrl_c_at_any_instant_of_a_command_is_one_line_or_none(command):
    script, seen = _installed(command), Counter()
    for step in range(24):  # across the libraries' loading (tens to hundreds of ms here), then the finished command
        delay, twice = 0.015 * step, step % 3 == 2  # every third: a second Ctrl-C right after the first
        child = subprocess.Popen([script, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"})  # fmt: skip
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        if twice:
            time.sleep(0.001)
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
        seen[_outcome(subprocess.CompletedProcess(child.args, child.returncode, out, err))] += 1
    assert seen["interrupted"] > 0, seen  # the window this guards was hit


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_two_signals_back_to_back_end_in_the_first_ones_line(tmp_path: Path, first: int) -> None:
    """SIGINT and SIGTERM sent together (either first) while dip-sample loads, samples or writes: one line, of the
    signal acted on first (Python runs pending handlers in signal-number order; a later one changes nothing), or a run
    that finished; never silence, a traceback or a temporary."""
    second = signal.SIGTERM if first == signal.SIGINT else signal.SIGINT
    lines = {signal.SIGINT: (INTERRUPTED, 130), signal.SIGTERM: (TERMINATED, 143)}
    seen = Counter()
    for step in range(12):
        child = subprocess.Popen([_installed("dip-sample"), "--steps", "2", "--num-samples", "3", "--out", tmp_path / "o.npz"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                 env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"})  # fmt: skip
        time.sleep(0.1 * step)
        child.send_signal(first)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(second)
        _, err = child.communicate(timeout=120)
        assert not list(tmp_path.glob(".*.tmp")), err
        if child.returncode == 0 and err.strip().splitlines()[-1].startswith("wrote"):
            seen["finished"] += 1
        elif child.returncode == -first and err == "":  # before Python's handler is in place
            seen["killed"] += 1
        elif err.startswith(("Fatal Python error: init_import_site", "Failed checking if argv[0]")) or _before_the_guard(err):
            seen["python"] += 1
        else:
            assert (err.strip(), child.returncode) in lines.values(), (step, child.returncode, err[-2000:])
            seen["one line"] += 1
    assert seen["one line"] > 0, seen
