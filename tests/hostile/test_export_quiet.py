"""An export prints no warning about modules in training mode: the wrappers it traces are in eval mode."""

from __future__ import annotations

import warnings
from pathlib import Path

from dip_export.export.onnx_export import export_onnx


def test_export_warns_nothing_about_training_mode(tmp_path: Path, loaded) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(loaded, precision="fp32", image_size=(32, 32), output_dir=tmp_path / "e")
    training = [str(w.message) for w in caught if "training" in str(w.message).lower()]
    assert training == []
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []  # no other warning either
