"""An export checks the free space of where it goes before any tracing, from the config alone (weights x the
precision's bytes, plus the graphs, with a margin); a write that fails midway (no space left, or another OS
error, from any library) is one line naming the output and why, and leaves nothing behind."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.budget import parameter_count
from dip_export.checkpoint import DEMO_CHECKPOINT, LoadedModel, load_checkpoint
from dip_export.errors import DipError
from dip_export.export.onnx_export import export_file_bytes, export_onnx
from dip_export.io import check_space
from tests.test_hostile import one_line, run

MARGIN = 16 << 20  # ownership.check_free_space keeps this much spare
Usage = namedtuple("Usage", "total used free")


class Traced(Exception):
    """The exporter was reached: the space check let the export through."""


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return load_checkpoint(DEMO_CHECKPOINT)


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1 << 40, (1 << 40) - free, free))


def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def traced(*args: object, **kwargs: object) -> None:
        calls.append(str(args[2]))
        raise Traced

    monkeypatch.setattr(torch.onnx, "export", traced)
    return calls


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(precision=st.sampled_from(["fp32", "fp16", "bf16"]), offset=st.integers(-(8 << 20), 8 << 20))
def test_an_export_is_refused_before_tracing_exactly_when_it_does_not_fit(
    demo: LoadedModel, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, precision: str,
    offset: int,
) -> None:  # fmt: skip
    need = export_file_bytes(demo.config, precision)
    assert need > {"fp32": 4, "fp16": 2, "bf16": 2}[precision] * parameter_count(demo.config)  # the weights and more
    free = need + MARGIN + offset
    out = tmp_path_factory.mktemp("space") / "exp"
    with monkeypatch.context() as patch:
        _free(patch, free)
        calls = _no_tracing(patch)
        if offset < 0:
            with pytest.raises(DipError, match=r" free; this run writes about ") as caught:
                export_onnx(demo, precision=precision, image_size=(32, 32), output_dir=out)
            assert calls == [] and str(out.parent) in str(caught.value)
        else:
            with pytest.raises(Traced):
                export_onnx(demo, precision=precision, image_size=(32, 32), output_dir=out)
            assert len(calls) == 1
    assert list(out.parent.iterdir()) == []  # nothing left either way


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 1 << 30), min_size=1, max_size=4), st.integers(0, 1 << 32))
def test_outputs_on_one_file_system_are_added_up(sizes: list[int], free: int) -> None:
    real = shutil.disk_usage
    try:
        shutil.disk_usage = lambda path: Usage(1 << 40, 0, free)  # type: ignore[assignment]
        paths = [Path(f"/tmp/f5-space-probe/o{i}") for i in range(len(sizes))]
        if sum(sizes) + MARGIN > free:
            with pytest.raises(DipError, match="free"):
                check_space(zip(paths, sizes, strict=True))
        else:
            check_space(zip(paths, sizes, strict=True))
    finally:
        shutil.disk_usage = real  # type: ignore[assignment]


def test_a_bigger_precision_needs_more(demo: LoadedModel) -> None:
    sizes = {p: export_file_bytes(demo.config, p) for p in ("fp16", "bf16", "fp32", "int8", "fp8")}
    assert sizes["fp16"] == sizes["bf16"] < sizes["fp32"] < sizes["int8"] == sizes["fp8"]


@pytest.mark.parametrize("args", [["--precision", "fp32"], ["--precision", "fp16"], ["--precision", "int8"], []])
def test_cli_refuses_at_once_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the default folder is engines/ here
    _free(monkeypatch, 600 << 10)
    calls = _no_tracing(monkeypatch)
    out = [] if not args else ["--output-dir", str(tmp_path / "tiny" / "exp")]
    code, err = run(cli.export_main, "onnx", *args, *out)
    one_line(code, err, 1, "600 KiB free", "this run writes about")
    assert calls == [] and not (tmp_path / "tiny").exists() and list((tmp_path / "engines").glob("*")) == []


def test_api_on_the_fly_export_refuses_before_tracing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pipe = DiPPipeline.load(backend="onnx", device="cpu")
    _free(monkeypatch, 1 << 20)
    calls = _no_tracing(monkeypatch)
    with pytest.raises(DipError, match=r"has 1024 KiB free; this run writes about"):
        pipe([1], steps=2)
    assert calls == [] and list((tmp_path / "engines").glob("*")) == []


# ---------------------------------------------------------------- a write that fails midway


def _failing_exporter(monkeypatch: pytest.MonkeyPatch, error: BaseException, full: bool) -> None:
    def export(module: object, args: object, path: str, **kwargs: object) -> None:
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)  # half a graph, then the disk is full
        if full:
            _free(monkeypatch, 0)
        raise error

    monkeypatch.setattr(torch.onnx, "export", export)


def _wrapped() -> BaseException:
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as inner:
        try:
            raise RuntimeError("exporter failed") from inner
        except RuntimeError as outer:
            return outer


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "numpy", "wrapped"], ids=["enospc", "numpy", "wrapped"]
)
def test_cli_write_failure_names_the_folder_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: object
) -> None:  # fmt: skip
    full = error == "numpy"
    if full:  # numpy's tofile: an OSError with no errno and no file, on a full file system
        error = OSError("problem writing element 73728 to file")
    elif error == "wrapped":
        error = _wrapped()
    _failing_exporter(monkeypatch, error, full)  # type: ignore[arg-type]
    out = tmp_path / "new" / "exp"
    code, err = run(cli.export_main, "onnx", "--output-dir", out)
    one_line(code, err, 1, f"cannot write {out}", "no space left on device", "nothing was written")
    assert os.listdir(tmp_path) == []  # no temporary folder, no partial graph, not the folder made for it


def test_api_write_failure_names_the_file_inside_the_export(demo: LoadedModel, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    def export(module: object, args: object, path: str, **kwargs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    monkeypatch.setattr(torch.onnx, "export", export)
    out = tmp_path / "exp"
    with pytest.raises(DipError) as caught:
        export_onnx(demo, precision="fp32", image_size=(32, 32), output_dir=out)
    assert str(caught.value) == f"cannot write {out / 'backbone.onnx'}: input/output error; nothing was written"
    assert os.listdir(tmp_path) == []


def test_an_error_naming_a_file_elsewhere_is_not_taken_for_a_write_of_the_export(
    demo: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    elsewhere = tmp_path / "input.bin"

    def export(module: object, args: object, path: str, **kwargs: object) -> None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(elsewhere))

    monkeypatch.setattr(torch.onnx, "export", export)
    with pytest.raises(FileNotFoundError) as caught:
        export_onnx(demo, precision="fp32", image_size=(32, 32), output_dir=tmp_path / "exp")
    assert caught.value.filename == str(elsewhere) and os.listdir(tmp_path) == []


def test_a_file_output_that_fills_the_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    from dip_export.io import save_npz

    def savez(f: object, **arrays: object) -> None:
        f.write(b"PK" * 100)  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", savez)
    out = tmp_path / "new" / "deeper" / "o.npz"
    with pytest.raises(DipError) as caught:
        save_npz(out, np.zeros((1, 4, 4, 3), np.uint8))
    assert str(caught.value) == f"cannot write {out}: no space left on device; nothing was written"
    assert os.listdir(tmp_path) == []
