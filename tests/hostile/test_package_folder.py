"""The installed package (its bundled demo model among its files) is never an output's place, on any surface: an
output inside it, or the package folder itself, is refused before any work, and nothing is written there."""

from __future__ import annotations

from pathlib import Path

import pytest

import dip_export
from dip_export import cli
from dip_export.errors import UsageError
from dip_export.export.onnx_export import export_onnx
from dip_export.io import check_output_place
from tests.test_hostile import SIZE, one_line, run

PACKAGE = Path(dip_export.__file__).parent


def _listing() -> list[str]:
    return sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("rel", [".", "demo", "demo/sub", "demo/sub/deeper/x.npz", "export/x.onnx"])
def test_a_place_in_the_package_is_refused(rel: str) -> None:
    with pytest.raises(UsageError, match="the installed package"):
        check_output_place(PACKAGE / rel)


def test_api_export_into_the_demo_folder_is_refused_before_tracing(loaded, monkeypatch) -> None:
    before = _listing()
    monkeypatch.setattr("torch.onnx.export", lambda *a, **k: pytest.fail("traced"))
    with pytest.raises(UsageError, match="the installed package"):
        export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=PACKAGE / "demo" / "sub")
    assert _listing() == before


def test_cli_outputs_into_the_package_are_refused(tmp_path: Path, no_sampling) -> None:
    before = _listing()
    code, err = run(cli.sample_main, "--num-samples", "1", "--steps", "1", "--out", PACKAGE / "demo" / "o.npz")
    one_line(code, err, 2, "the installed package")
    code, err = run(cli.sample_main, "--num-samples", "1", "--out", tmp_path / "o.npz", "--png-dir", PACKAGE / "pics")
    one_line(code, err, 2, "the installed package")
    code, err = run(cli.export_main, "onnx", "--output-dir", PACKAGE / "demo" / "exp", "--image-size", "32")
    one_line(code, err, 2, "the installed package")
    assert _listing() == before and not (tmp_path / "o.npz").exists()
