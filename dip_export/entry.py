"""The commands as installed (`dip-sample`, `dip-export`, `dip-bench`): Ctrl-C from the moment this module loads
(numpy, torch and typer take a second or more to load) ends as any interruption does, in one line with exit 130,
never a traceback; so does a second Ctrl-C, which changes nothing.

While the command loads, nothing has been written, so the process ends at once (`os._exit`): no library between
the signal and the interpreter can catch or swallow the exit. The CLI puts its own handler in place for the run of
a command (`cli.handle_errors`), and this one is back for the few statements after it; once the command is over
(its outputs in place, its line out), both are ignored until the process ends. SIGTERM is taken wherever the OS
default is in place, whatever SIGINT's (a job started with `&` in a script has SIGINT ignored). The guard's first
statements read no file (`_signal` is built in, `os` and `sys` are loaded at the interpreter's start); until the
handler is in place (the interpreter's own start, the command script's own imports, the guard's own condition and
call), a Ctrl-C is Python's own."""

from __future__ import annotations

import _signal  # built in: nothing is read from disk before the guard is in place (`signal` itself is a file)
import os  # os and sys: loaded by the interpreter's own start, a lookup here
import sys

# `signals.OUTCOME`, spelled out here: nothing is read from disk before the guard (the commands print the same)
INTERRUPTED = "interrupted: nothing partial was kept; what was finished before it stays"
TERMINATED = "terminated: nothing partial was kept; what was finished before it stays"
COMMANDS = ("dip-sample", "dip-export", "dip-bench")


def _dropped(signum: int, frame: object) -> None:
    """A second signal while the first one's line is written: nothing (`signals.dropped`, before it can load)."""


def _interrupted(signum: int, frame: object) -> None:
    """The line (written by the OS call, which a second signal cannot break into), what was printed before it
    flushed, then exit 130 (143 for SIGTERM) at once."""
    _signal.signal(_signal.SIGINT, _dropped)  # a second Ctrl-C is dropped
    _signal.signal(_signal.SIGTERM, _dropped)
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib is not loaded yet)
            stream.flush()
        except Exception:  # a write the signal broke into, a closed pipe: what is buffered is lost, nothing else
            pass
    line = TERMINATED if signum == _signal.SIGTERM else INTERRUPTED
    try:  # noqa: SIM105
        os.write(2, f"{line}\n".encode())
    except OSError:
        pass
    os._exit(128 + signum)


def _guard_loading() -> bool:
    """Install `_interrupted` for SIGINT where Python's own handler is in place and for SIGTERM where the OS default
    is, each on its own (a command started in the background of a script has SIGINT ignored, SIGTERM still to
    handle); nothing off the main thread, where signal.signal refuses. True when it is in place for either."""
    takes = {_signal.SIGINT: lambda handler: handler is _signal.default_int_handler,
             _signal.SIGTERM: lambda handler: handler == _signal.SIG_DFL}  # fmt: skip
    placed = False
    try:
        for signum, ours in takes.items():
            handler = _signal.getsignal(signum)
            if handler is _interrupted or ours(handler):
                _signal.signal(signum, _interrupted)
                placed = True
    except ValueError:  # not the main thread
        return False
    return placed


def _as_command() -> bool:
    """Loaded by an installed command's script (its name is the program's), not imported by other code."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name.removesuffix(".exe").removesuffix("-script.py") in COMMANDS


if _as_command():
    _guard_loading()  # before anything else loads

import signal  # noqa: E402 (after the guard: a file to read)

from dip_export.signals import dropped  # noqa: E402


def _run(name: str) -> None:
    guarded = _guard_loading()
    try:
        from dip_export import cli
    except KeyboardInterrupt:  # where the guard could not be put in place and Python's handler raised
        sys.stderr.write(INTERRUPTED + "\n")
        raise SystemExit(130) from None
    try:
        getattr(cli, name)()
    finally:
        if guarded:  # the command is over (its line, if any, is out): its exit is not interrupted
            _ignore_to_the_end()


def _ignore_to_the_end() -> None:
    """SIGINT and SIGTERM ignored by the OS until the process ends. Python's finalisation (a second or more with
    torch loaded) puts the OS default back for a signal that has a Python handler, but leaves an ignored one ignored.
    A signal that arrived just before is still pending; the interpreter reports one pending for an ignored signal
    as an unraisable 'Signal N ignored due to race condition': that report, and only that, is dropped."""
    previous = sys.unraisablehook

    def hook(unraisable: object) -> None:
        error = getattr(unraisable, "exc_value", None)
        if isinstance(error, OSError) and str(error).endswith("ignored due to race condition"):
            return
        previous(unraisable)  # type: ignore[arg-type]

    sys.unraisablehook = hook
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, dropped)  # a pending one runs (and does nothing) before the next line
        signal.signal(signum, signal.SIG_IGN)


def sample_main() -> None:
    _run("sample_main")


def export_main() -> None:
    _run("export_main")


def bench_main() -> None:
    _run("bench_main")
