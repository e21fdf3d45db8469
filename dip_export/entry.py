"""The commands as installed (`dip-sample`, `dip-export`, `dip-bench`): Ctrl-C while the libraries load (numpy, torch,
typer: a second or more) ends as any interruption does, in one line with exit 130, not a traceback."""

from __future__ import annotations

import sys

INTERRUPTED = "interrupted: nothing partial was kept"


def _run(name: str) -> None:
    try:
        from dip_export import cli
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED + "\n")
        raise SystemExit(130) from None
    getattr(cli, name)()


def sample_main() -> None:
    _run("sample_main")


def export_main() -> None:
    _run("export_main")


def bench_main() -> None:
    _run("bench_main")
