"""A Ctrl-C during an export ends it as an interrupt, whatever the exporter makes of it: torch.export catches a
KeyboardInterrupt that lands in an import mid-trace and raises its own many-line error. The API caller gets
KeyboardInterrupt, the command its one line and exit 130, and no folder is left behind."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from dip_export.export.onnx_export import export_onnx
from tests.test_hostile import SIZE


class TorchExportError(RuntimeError):
    """Stands in for torch.onnx's own error: many lines, colour codes, the interrupt as its cause."""


def _swallowing_export(*args, **kwargs) -> None:
    """What the exporter does with a Ctrl-C that lands mid-trace: catches it and raises its own error."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt as err:
        raise TorchExportError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m\n...") from err


def test_a_swallowed_interrupt_ends_the_export_as_an_interrupt(tmp_path: Path, monkeypatch, loaded) -> None:
    monkeypatch.setattr(torch.onnx, "export", _swallowing_export)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before this test
    try:
        with pytest.raises(KeyboardInterrupt):
            export_onnx(loaded, image_size=SIZE, output_dir=tmp_path / "exp")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_exporter_error_without_an_interrupt_is_its_own(tmp_path: Path, monkeypatch, loaded) -> None:
    def failing(*args, **kwargs) -> None:
        raise TorchExportError("a real failure")

    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(TorchExportError):
        export_onnx(loaded, image_size=SIZE, output_dir=tmp_path / "exp")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
