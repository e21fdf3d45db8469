"""A re-export killed (SIGKILL) at any moment of its swap loses nothing and blocks nothing: the next run finds the
whole old export or the whole new one in place, no journal left, and the killed run's temporaries are removed.

The child process replaces an export through `io._swap_in` and kills itself just before its K-th file-system call
(creating, writing, syncing, linking, renaming, removing), for every K until one run completes; after each, a
reader settles the swap as every command does first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dip_export.export.manifest import ownership_problem, settle_export_swap
from dip_export.io import remove_stale_temporaries
from dip_export.ownership import journal_path
from tests.hostile.test_swap_journal import listing

CHILD = r"""
import builtins, json, os, shutil, signal, sys, tempfile
from pathlib import Path
from dip_export import io

k, target, source = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
tmp = Path(tempfile.mkdtemp(prefix=io._tmp_prefix(target), suffix=".tmp", dir=target.parent))
for item in source.iterdir():
    shutil.copy2(item, tmp / item.name)
calls = [0]

def killing(module, name):
    real = getattr(module, name)
    def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(module, name, call)

for module, name in [(os, "open"), (os, "fsync"), (os, "link"), (os, "replace"), (os, "rename"), (os, "unlink"),
                     (os, "rmdir"), (shutil, "rmtree"), (tempfile, "mkdtemp"), (tempfile, "mkstemp"), (json, "dumps")]:
    killing(module, name)
io._swap_in(tmp, target)
print("done", calls[0])
"""


def test_a_swap_killed_at_every_moment_is_settled_by_the_next_run(pristine: Path, tmp_path: Path) -> None:
    want = listing(pristine)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for k in range(1, 60):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        target = folder / "exp"
        os.system(f"cp -r '{pristine}' '{target}'")
        done = subprocess.run([sys.executable, "-c", CHILD, str(k), str(target), str(pristine)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        finished = done.returncode == 0
        assert finished or done.returncode == -9, done.stderr[-2000:]
        settle_export_swap(str(target))  # what every reader and writer of the folder does first
        assert not os.path.lexists(journal_path(target)), k
        assert listing(target) == want and ownership_problem(target) is None, k  # old or new: whole, and this tool's
        remove_stale_temporaries(target)  # what the next writer does: the killed run's leftovers go
        assert sorted(p.name for p in folder.iterdir()) == ["exp"], (k, sorted(p.name for p in folder.iterdir()))
        if finished:
            assert k > 3, done.stdout  # the kill did reach into the swap before it completed
            return
    raise AssertionError("the swap never completed")
