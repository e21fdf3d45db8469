"""An export replaced while its runtime opens its graphs is refused, never run as a mix of two exports.

ONNX Runtime opens the backbone's and the detailer's graphs by their paths, one after the other, after the
manifest and every file were checked. An export replaced between the two (another `dip-export onnx` into the
same folder) would pair one export's backbone with the other's detailer: pictures of neither. Every file the
manifest lists keeps its stamp (device, inode, size, times) while the engine is made, or the engine is refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnxruntime
import pytest

from dip_export import DiPPipeline, cli, engines
from dip_export.checkpoint import LoadedModel, build_model, resolve_model
from dip_export.errors import ExportError
from dip_export.export.onnx_export import export_onnx
from tests.test_hostile import one_line, run

REAL = onnxruntime.InferenceSession


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two")
    demo = resolve_model(None)
    other = LoadedModel(build_model(demo.config, seed=7), demo.config, name=demo.name, source="preset:other")
    return (export_onnx(demo, image_size=(32, 32), output_dir=root / "a"),
            export_onnx(other, image_size=(32, 32), output_dir=root / "b"))  # fmt: skip


def _replacing_after(opened: int, folder: Path, replacement: Path, how: str):
    """An InferenceSession that, once `opened` graphs are open, puts `replacement` where `folder` is."""
    count = [0]

    def session(path: str, *args, **kwargs):
        made = REAL(path, *args, **kwargs)
        count[0] += 1
        if count[0] == opened:
            if how == "swap":
                aside = folder.with_name(folder.name + ".old")
                os.rename(folder, aside)
                shutil.copytree(replacement, folder)
            else:  # the same bytes written again: new files, the same content
                for name in os.listdir(folder):
                    data = (folder / name).read_bytes()
                    (folder / name).unlink()
                    (folder / name).write_bytes(data)
        return made

    return session


@pytest.mark.parametrize("how", ["swap", "rewritten"])
@pytest.mark.parametrize("opened", [1, 2])
def test_open_export_refuses_an_export_replaced_while_opened(
    tmp_path: Path, two_exports: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, how: str, opened: int
) -> None:
    a, b = two_exports
    folder = Path(shutil.copytree(a, tmp_path / "exp"))
    monkeypatch.setattr(onnxruntime, "InferenceSession", _replacing_after(opened, folder, b, how))
    with pytest.raises(ExportError, match="changed while its graphs were being opened; load it again") as err:
        engines.open_export("onnx", folder, "cpu")
    assert "\n" not in str(err.value)


def test_open_export_of_an_unchanged_export_runs(tmp_path: Path, two_exports: tuple[Path, Path]) -> None:
    a, _ = two_exports
    folder = Path(shutil.copytree(a, tmp_path / "exp"))
    assert engines.open_export("onnx", folder, "cpu") is not None


def test_every_surface_refuses_it(tmp_path: Path, two_exports: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = two_exports
    folder = Path(shutil.copytree(a, tmp_path / "exp"))
    pipe = DiPPipeline.load(folder, device="cpu")
    monkeypatch.setattr(onnxruntime, "InferenceSession", _replacing_after(1, folder, b, "swap"))
    with pytest.raises(ExportError, match="changed while"):
        pipe(classes=[1], seeds=[0], steps=2)
    shutil.rmtree(folder)
    shutil.rmtree(folder.with_name(folder.name + ".old"))
    shutil.copytree(a, folder)
    monkeypatch.setattr(onnxruntime, "InferenceSession", _replacing_after(1, folder, b, "swap"))
    out = tmp_path / "o.npz"
    code, err = run(cli.sample_main, folder, "--steps", "2", "--num-samples", "1", "--out", out)
    one_line(code, err, 1, str(folder), "changed while")
    assert not out.exists()
