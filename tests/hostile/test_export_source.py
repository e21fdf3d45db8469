"""An export's way back to its model (`trt_build.loaded_from_source`): the recorded weights, the recorded content.

`dip-export trt --fp16/--int8/...` on an fp32 export makes the sub-export of that precision from the checkpoint
the export came from. The manifest's `source` is data: its path is read only when it is an absolute path to a
regular file (no symlink on the way) holding the recorded sha256, with the recorded weights (ema | raw), and the
model read must have the recorded identity; anything else is refused in one line before a sub-export is made.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from dip_export import untrusted
from dip_export.checkpoint import load_checkpoint
from dip_export.errors import ExportError
from dip_export.export import trt_build
from dip_export.export.manifest import read_manifest
from dip_export.export.onnx_export import source_info
from dip_export.export.trt_build import BatchProfile, build_trt, loaded_from_source
from dip_export.messages import plain_line
from tests.conftest import lightning_checkpoint
from tests.fakes import tensorrt as fake_tensorrt
from tests.fakes.cuda import FakeCuda

SIZE = (32, 64)
AGAIN = "export the matching ONNX again"
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PATH_KINDS = ["file", "symlink", "symlinked folder", "relative", "missing", "folder", "fifo", "newline name"]
CHANGES = ["none", "bytes", "other checkpoint", "other weights recorded"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, golden: Any) -> SimpleNamespace:
    """A training checkpoint whose raw weights differ from its EMA ones, and its raw-weights fp32 export."""
    from dip_export.export.onnx_export import export_onnx

    work = tmp_path_factory.mktemp("source")
    ckpt = lightning_checkpoint(work / "two.pt", golden.state, raw_offset=0.01)
    other = lightning_checkpoint(work / "other.pt", golden.state, raw_offset=0.02)
    loaded = {w: load_checkpoint(ckpt, weights=w) for w in ("ema", "raw")}
    export = export_onnx(loaded["raw"], precision="fp32", image_size=SIZE, output_dir=work / "exp-raw",
                         console=Console(quiet=True))  # fmt: skip
    return SimpleNamespace(work=work, ckpt=ckpt, other=other, loaded=loaded, export=export, state=golden.state,
                           manifest=read_manifest(export))  # fmt: skip


def _weight(loaded: Any) -> torch.Tensor:
    return loaded.model.state_dict()["s_embedder.proj.weight"]


def _expected_weight(made: SimpleNamespace, weights: str) -> torch.Tensor:
    return made.state["s_embedder.proj.weight"] + (0.01 if weights == "raw" else 0.0)


def _place(made: SimpleNamespace, root: Path, kind: str) -> str:
    """Put the checkpoint (a copy) where a manifest of this kind of path points; returns the recorded path."""
    real = root / "real"
    real.mkdir()
    shutil.copyfile(made.ckpt, real / "two.pt")
    if kind == "file":
        return str((real / "two.pt").resolve())
    if kind == "symlink":
        (root / "link.pt").symlink_to(real / "two.pt")
        return str(root.resolve() / "link.pt")
    if kind == "symlinked folder":
        (root / "via").symlink_to(real)
        return str(root.resolve() / "via" / "two.pt")
    if kind == "relative":
        return os.path.relpath(real / "two.pt")
    if kind == "missing":
        return str(root.resolve() / "gone.pt")
    if kind == "folder":
        return str(real.resolve())
    if kind == "fifo":
        os.mkfifo(root / "pipe.pt")
        return str(root.resolve() / "pipe.pt")
    assert kind == "newline name"
    return str(root.resolve() / "two.pt\n[red]x")


@FAST
@given(weights=st.sampled_from(["ema", "raw"]), change=st.sampled_from(CHANGES), kind=st.sampled_from(PATH_KINDS))
def test_the_source_is_reloaded_as_recorded_or_refused(made: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
                                                       weights: str, change: str, kind: str) -> None:  # fmt: skip
    reads: list[Path] = []
    real_load = load_checkpoint

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(Path(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr("dip_export.checkpoint.load_checkpoint", counting)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _place(made, root, kind)
        original = made.loaded[weights]
        recorded_weights = {"ema": "raw", "raw": "ema"}[weights] if change == "other weights recorded" else weights
        source = {"path": path, "sha256": untrusted.sha256_file(made.ckpt), "weights": recorded_weights,
                  "identity": original.identity}  # fmt: skip
        target = root / "real" / "two.pt"
        if change == "bytes":  # same size, one byte of a tensor flipped
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))
        elif change == "other checkpoint":
            shutil.copyfile(made.other, target)
        untrusted._sha256.cache_clear()  # as a new process: the file's content is hashed anew
        manifest = dataclasses.replace(made.manifest, source=source)
        if kind == "file" and change == "none":
            loaded = loaded_from_source(manifest, folder=made.export)
            assert loaded.weights == weights and loaded.identity == original.identity
            torch.testing.assert_close(_weight(loaded), _expected_weight(made, weights))
            assert reads == [Path(path)]
            return
        with pytest.raises(ExportError) as err:
            loaded_from_source(manifest, folder=made.export)
    message = str(err.value)
    assert AGAIN in message and str(made.export) in message
    assert len(plain_line(message).splitlines()) == 1  # printed on one line (the API text names the file as it is)
    if change == "other weights recorded" and kind == "file":
        assert reads == [Path(path)] and "identity differs" in message  # read with the weights recorded: another model
    else:
        assert reads == []  # a path that is not the recorded regular file, or other content: never parsed
    if kind == "file" and change in ("bytes", "other checkpoint"):
        assert "sha256 differs" in message
    if kind in ("symlink", "symlinked folder"):
        assert "symlink" in message and path in message


@pytest.mark.parametrize("drop", ["identity", "weights", "sha256"])
def test_a_manifest_without_the_models_record_is_refused(made: SimpleNamespace, drop: str) -> None:
    """An older or hand-made manifest: nothing to check the checkpoint against, so nothing is read."""
    source = {k: v for k, v in made.manifest.source.items() if k != drop}
    with pytest.raises(ExportError, match=AGAIN):
        loaded_from_source(dataclasses.replace(made.manifest, source=source), folder=made.export)


def test_a_preset_source_is_rebuilt_and_checked(made: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, golden: Any) -> None:
    from types import MappingProxyType

    from dip_export import config as config_module
    from dip_export.checkpoint import resolve_model
    from dip_export.config import PRESETS

    monkeypatch.setattr(config_module, "PRESETS", MappingProxyType({**PRESETS, "tiny": golden.config}))  # read-only
    tiny = resolve_model(None, "tiny")
    manifest = dataclasses.replace(made.manifest, config=tiny.config, source=source_info(tiny))
    again = loaded_from_source(manifest)
    assert again.identity == tiny.identity
    torch.testing.assert_close(_weight(again), _weight(tiny))
    wrong = dataclasses.replace(manifest, source={**manifest.source, "identity": "0" * 64})
    with pytest.raises(ExportError, match="identity differs"):
        loaded_from_source(wrong)


# ---- the surfaces: `dip-export trt EXPORT --fp16` and build_trt (what a pipeline on the trt backend calls)


@pytest.fixture()
def export_copy(made: SimpleNamespace, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made.export, tmp_path / "exp-raw"))


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> Any:
    FakeCuda().install(monkeypatch)
    return fake_tensorrt.install(monkeypatch)


def _stop_at_the_sub_export(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The sub-export is where the reloaded model goes: record it and stop there (the build itself is tested elsewhere)."""
    seen: list[Any] = []

    def export_onnx(loaded: Any, **kwargs: Any) -> Path:
        seen.append(loaded)
        raise ExportError("stopped before the sub-export")

    monkeypatch.setattr("dip_export.export.onnx_export.export_onnx", export_onnx)
    return seen


def test_cli_trt_builds_a_raw_export_from_its_raw_weights(made, export_copy, fakes, monkeypatch) -> None:
    from dip_export.cli import export_app

    seen = _stop_at_the_sub_export(monkeypatch)
    monkeypatch.chdir(made.work)
    result = CliRunner().invoke(export_app, ["trt", str(export_copy), "--fp16"])
    assert result.exit_code != 0 and "stopped before the sub-export" in result.output, result.output
    assert [loaded.weights for loaded in seen] == ["raw"]
    torch.testing.assert_close(_weight(seen[0]), _expected_weight(made, "raw"))
    assert str(made.ckpt.resolve()) in " ".join(result.output.split())  # the file read is named


def test_cli_trt_refuses_a_changed_checkpoint(made, export_copy, fakes, monkeypatch, tmp_path) -> None:
    from dip_export.cli import export_app

    seen = _stop_at_the_sub_export(monkeypatch)
    ckpt = tmp_path / "moved.pt"
    shutil.copyfile(made.ckpt, ckpt)
    manifest = read_manifest(export_copy)
    source = source_info(load_checkpoint(ckpt, weights="raw"))
    trt_build.write_manifest(export_copy, dataclasses.replace(manifest, source=source))
    ckpt.write_bytes(made.other.read_bytes())  # replaced since the export
    untrusted._sha256.cache_clear()
    before = sorted(p.name for p in export_copy.iterdir())
    monkeypatch.chdir(made.work)
    result = CliRunner().invoke(export_app, ["trt", str(export_copy), "--fp16"])
    out = result.output.strip()
    assert result.exit_code != 0 and seen == []
    assert len(out.splitlines()) == 1 and "Traceback" not in out
    assert "sha256 differs" in out and AGAIN in out and str(ckpt.resolve()) in out
    assert sorted(p.name for p in export_copy.iterdir()) == before  # no sub-export made


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_trt_refuses_a_manifest_naming_a_symlink(made, export_copy, fakes, monkeypatch, tmp_path, precision) -> None:
    seen = _stop_at_the_sub_export(monkeypatch)
    monkeypatch.setattr("dip_export.export.quantize.export_int8", lambda loaded, **k: seen.append(loaded))
    link = tmp_path / "link.pt"
    link.symlink_to(made.ckpt)
    manifest = read_manifest(export_copy)
    trt_build.write_manifest(export_copy, dataclasses.replace(manifest, source={**manifest.source, "path": str(link)}))
    before = sorted(p.name for p in export_copy.iterdir())
    with pytest.raises(ExportError, match="symlink") as err:
        build_trt(precision=precision, output_dir=export_copy, root=export_copy.parent, profile=BatchProfile(),
                  timing_cache=None, opt_level=3, console=Console(quiet=True), device="cpu")  # fmt: skip
    assert str(link) in str(err.value) and seen == []
    assert sorted(p.name for p in export_copy.iterdir()) == before
