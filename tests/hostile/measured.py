"""A load measured in its own process: how much its peak memory grew, and how it ended (for the tests that prove a
refusal allocates nothing of what a file declares)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_MEASURED = """
import resource, sys
import torch  # noqa: F401
from dip_export import DiPPipeline, cli
from dip_export.errors import DipError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "cli":
    sys.argv = ["dip-sample", *sys.argv[2:]]
    try:
        cli.sample_main()
    except SystemExit as stop:
        print("exit", stop.code)
else:
    try:
        DiPPipeline.load(sys.argv[2], device="cpu")
    except DipError as err:
        print("refused", type(err).__name__)
print("grew", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def measured_load(
    surface: str, args: list[str | Path], limit: str = "1G"
) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    """dip-sample ARGS (`surface` "cli") or `DiPPipeline.load(ARGS[0])` ("api") under DIP_MEMORY_LIMIT: its lines
    (`exit CODE` or `refused ERROR`, and `grew KiB`) and the finished process (what it printed)."""
    env = {**os.environ, "DIP_MEMORY_LIMIT": limit}
    done = subprocess.run([sys.executable, "-c", _MEASURED, surface, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    return dict(line.split(" ", 1) for line in done.stdout.splitlines()), done
