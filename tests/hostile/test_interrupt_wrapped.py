"""Ctrl-C during an export ends as interrupted, whatever the exporter turns the KeyboardInterrupt into.

torch's exporter can catch the KeyboardInterrupt mid-trace, log it as a TypeError (with a traceback) and raise a
TypeError or its ConversionError instead. The CLI's SIGINT handler records that the signal came; any exception that
then reaches the CLI is the one `interrupted` line and exit 130. torch's loggers print nothing while the exporter runs.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dip_export import cli
from dip_export.entry import INTERRUPTED
from tests.test_hostile import run

TRACER_LOG = "torch._subclasses.fake_tensor"  # where torch logs the error it made of the KeyboardInterrupt
LEVELLED_LOG = "torch.fx.experimental.symbolic_shapes"  # a child of torch given a level of its own


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def wrapping_exporter(*args: object, **kwargs: object) -> None:
    """torch.onnx.export as torch behaves when Ctrl-C lands in its fake-tensor dispatch."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**7):  # the handler runs between bytecodes
            pass
    except KeyboardInterrupt:
        logging.getLogger(TRACER_LOG).exception("fake tensor raised TypeError")
        logging.getLogger(LEVELLED_LOG).error("failed while tracing")
        raise TypeError("empty_strided(): argument 'size' failed ... \"KeyboardInterrupt: <EMPTY MESSAGE>\"") from None
    raise AssertionError("SIGINT did not arrive")


def plain_type_error(*args: object, **kwargs: object) -> None:
    raise TypeError("an exporter bug")


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[logging.LogRecord]]:
    """A handler on torch's logger and on the two the fake exporter logs to: the tracer's as torch configures it
    (a handler of its own, not propagating), and a child given a level of its own."""
    recorder = Recorder()
    logs = [logging.getLogger(name) for name in ("torch", TRACER_LOG, LEVELLED_LOG)]
    for log in logs:
        log.addHandler(recorder)
    monkeypatch.setattr(logs[2], "level", logging.DEBUG)
    logging.Logger.manager._clear_cache()  # type: ignore[attr-defined]
    yield recorder.records
    for log in logs:
        log.removeHandler(recorder)


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """SIGINT handled by Python's default handler, as in a command-line process (whatever the test run has set)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_wrapped_by_the_exporter_is_one_interrupted_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt: Path, recorded: list[logging.LogRecord], python_sigint: None
) -> None:
    monkeypatch.setattr(torch.onnx, "export", wrapping_exporter)
    levels = {name: logging.getLogger(name).level for name in ("torch", TRACER_LOG, LEVELLED_LOG)}
    out = tmp_path / "e"
    code, err = run(cli.export_main, "onnx", ckpt, "--image-size", "32x64", "--output-dir", out)
    assert code == 130, err
    assert err.strip().splitlines() == [INTERRUPTED]
    assert recorded == []  # torch's log of the wrapped interrupt reached no handler
    assert {name: logging.getLogger(name).level for name in levels} == levels  # levels are back after the export
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the CLI's handler is gone after the command
    assert not out.exists()

    # the next command, with no Ctrl-C: an exporter's TypeError is not taken for an interruption
    monkeypatch.setattr(torch.onnx, "export", plain_type_error)
    with pytest.raises(TypeError, match="an exporter bug"):
        run(cli.export_main, "onnx", ckpt, "--image-size", "32x64", "--output-dir", out)


class _SignalsWhileFinalised:
    """Ctrl-C landing in a finaliser, where an exception is printed as 'Exception ignored' and dropped."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs between these bytecodes, inside the finaliser
            pass


class _SignalsWhileMade:
    """Ctrl-C landing in the constructor of an object with a finaliser (np.savez's ZipFile): raised there, the
    half-made object's finaliser would fail ('Exception ignored ... AttributeError')."""

    def __init__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        self.made = True

    def __del__(self) -> None:
        assert self.made  # AttributeError on a half-made object


def _swallowing_run(kind: str) -> str:
    if kind == "finaliser":
        finalised = _SignalsWhileFinalised()
        del finalised
    elif kind == "constructor":
        made = _SignalsWhileMade()
        del made
    else:  # a library that catches the KeyboardInterrupt and goes on
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**7):
                pass
        except KeyboardInterrupt:
            pass
    for _ in range(10**6):  # the deferred interrupt lands here, out of the finaliser
        pass
    return "finished"


@pytest.mark.parametrize("kind", ["finaliser", "constructor", "caught"])
def test_ctrl_c_that_would_be_dropped_still_ends_the_command(kind: str, python_sigint: None, capsys) -> None:
    import sys

    import typer

    unraisable: list[object] = []
    previous, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with pytest.raises(typer.Exit) as ended:
            cli.handle_errors(_swallowing_run)(kind)
        code = ended.value.exit_code
        del ended  # its traceback holds the frames, and a half-made object in them: finalised now, under the hook
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert code == 130
    assert unraisable == []  # nothing was printed as ignored
    assert capsys.readouterr().err.strip().splitlines() == [INTERRUPTED]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
