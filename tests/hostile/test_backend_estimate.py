"""The memory estimate is the backend's own: ONNX Runtime (and TensorRT, which runs the same graph) holds the attention
scores per head in fp32 several times, arena-rounded activations and its own weights; an ONNX export traces, holds
the weights several times and verifies with an ONNX Runtime session.

`budget.run_bytes(config, shape, backend)` and `budget.export_bytes` are checked through `budget.check_run` /
`check_export` before any work by every surface: dip-sample, dip-bench, dip-export onnx, DiPPipeline.load and calls
(with the export a checkpoint on onnx makes first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.budget import EXPORT_BATCH, BudgetError, RunShape, export_bytes, run_bytes
from dip_export.config import DiPConfig
from dip_export.pipeline import DiPPipeline
from tests.test_hostile import one_line, run

DEMO = DiPConfig(hidden_size=128, num_heads=4, depth=4, patch_size=8, num_classes=10, in_channels=3, detailer_width=16,
                 image_size=32)  # fmt: skip
SIDE = 256


def _config(hidden: int, heads: int, depth: int, patch: int, width: int) -> SimpleNamespace:
    return SimpleNamespace(hidden_size=hidden * heads, num_heads=heads, depth=depth, patch_size=patch, num_classes=10,
                           in_channels=3, detailer_width=width)  # fmt: skip


configs = st.builds(_config, st.integers(1, 64), st.integers(1, 16), st.integers(1, 32), st.sampled_from([2, 4, 8, 16]),
                    st.integers(1, 64))  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True)
@given(configs, st.integers(1, 64), st.integers(1, 64), st.integers(1, 64), st.integers(1, 1000), st.booleans())
def test_onnx_trt_and_export_estimates_cover_torch_and_grow_with_every_factor(
    config: SimpleNamespace, batch: int, hp: int, wp: int, samples: int, guided: bool
) -> None:
    h, w = hp * config.patch_size, wp * config.patch_size
    shape = RunShape(batch, h, w, samples, guided)
    torch_need, ort, trt = (run_bytes(config, shape, b) for b in ("torch", "onnx", "trt"))
    assert ort >= torch_need and trt >= torch_need
    assert run_bytes(config, shape, "onnx:int8") == ort and run_bytes(config, shape, "compile") == torch_need
    assert run_bytes(config, shape, "auto") == ort  # auto may choose onnx: its costliest candidate
    traced = RunShape(EXPORT_BATCH, h, w, samples=0, guided=False)
    assert export_bytes(config, h, w) >= run_bytes(config, traced, "onnx") >= run_bytes(config, traced, "torch")
    for bigger in (
        RunShape(batch + 1, h, w, samples, guided),
        RunShape(batch, h + config.patch_size, w, samples, guided),
        RunShape(batch, h, w + config.patch_size, samples, guided),
        RunShape(batch, h, w, samples + 1, guided),
    ):
        assert run_bytes(config, bigger, "onnx") > ort
    assert run_bytes(config, RunShape(batch, h, w, samples, True), "onnx") > run_bytes(
        config, RunShape(batch, h, w, samples, False), "onnx"
    )
    assert export_bytes(config, h + config.patch_size, w) > export_bytes(config, h, w)
    assert export_bytes(config, h, w + config.patch_size) > export_bytes(config, h, w)
    for grown in (_grow(config, "num_heads"), _grow(config, "depth"), _grow(config, "detailer_width")):
        assert run_bytes(grown, shape, "onnx") > ort and export_bytes(grown, h, w) > export_bytes(config, h, w)


def _grow(config: SimpleNamespace, name: str) -> SimpleNamespace:
    grown = SimpleNamespace(**vars(config))
    setattr(grown, name, getattr(config, name) + 1)
    if name == "num_heads":
        grown.hidden_size = config.hidden_size // config.num_heads * grown.num_heads
    return grown


def test_an_unknown_backend_name_is_refused_in_one_line() -> None:
    with pytest.raises(Exception, match="unknown backend 'tensorflow'"):
        run_bytes(DEMO, RunShape(1, 32, 32), "tensorflow")


# ---------------------------------------------------------------- the estimate against a real run


def _peak_kib(code: str, cwd: Path) -> int:
    """Peak RSS (KiB) of a child running `code`, read by a parent that waits for it."""
    wrapper = ("import resource, subprocess, sys\n"
               f"p = subprocess.run([sys.executable, '-c', {code!r}], capture_output=True, text=True)\n"
               "assert p.returncode == 0, p.stderr\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("DIP_MEMORY_LIMIT", None)
    done = subprocess.run([sys.executable, "-c", wrapper], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_an_onnx_run_with_its_export_made_first_peaks_within_its_estimate(tmp_path: Path) -> None:
    side = 128
    idle = _peak_kib("import torch, onnxruntime, dip_export.pipeline", tmp_path)
    sample = ("import sys; from dip_export import cli; sys.argv = ['dip-sample', '--image-size', '128', '--steps', '1', "
              "'--num-samples', '2', '--batch-size', '2', '--backend', 'onnx', '--device', 'cpu', '--out', 'o.npz']\n"
              "try:\n    cli.sample_main()\nexcept SystemExit as stop:\n    assert not stop.code, stop.code\n")  # fmt: skip
    peak = _peak_kib(sample, tmp_path)
    assert (tmp_path / "o.npz").is_file()
    shape = RunShape.sampling(2, side, side, 2)
    need = max(run_bytes(DEMO, shape, "onnx"), export_bytes(DEMO, side, side))  # what check_run compares with the limit
    assert (peak - idle) * 1024 <= need, (peak - idle, need // 1024)


@pytest.mark.parametrize(("side", "batch"), [(32, 1), (96, 32)])  # the fixed cost; the detailer's maps at full size
def test_an_eager_torch_run_peaks_within_its_estimate(tmp_path: Path, side: int, batch: int) -> None:
    idle = _peak_kib("import torch, onnxruntime, dip_export.pipeline", tmp_path)
    sample = (f"import sys; from dip_export import cli; sys.argv = ['dip-sample', '--image-size', '{side}', '--steps', "
              f"'2', '--num-samples', '{batch}', '--batch-size', '{batch}', '--backend', 'torch', '--device', 'cpu', "
              "'--out', 'o.npz']\ntry:\n    cli.sample_main()\nexcept SystemExit as stop:\n    assert not stop.code, "
              "stop.code\n")  # fmt: skip
    peak = _peak_kib(sample, tmp_path)
    assert (tmp_path / "o.npz").is_file()
    need = run_bytes(DEMO, RunShape.sampling(batch, side, side, batch), "torch")
    assert (peak - idle) * 1024 <= need, (peak - idle, need // 1024)


# ---------------------------------------------------------------- refused before any export, on every surface


@pytest.fixture
def between(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> int:
    """A limit above the torch estimate of 2 images at SIDE, below ONNX Runtime's and the export's."""
    shape = RunShape.sampling(2, SIDE, SIDE, 2)
    low, high = run_bytes(DEMO, shape, "torch"), min(run_bytes(DEMO, shape, "onnx"), export_bytes(DEMO, SIDE, SIDE))
    assert low < high
    value = (low + high) // 2
    monkeypatch.setenv("DIP_MEMORY_LIMIT", str(value))
    monkeypatch.chdir(tmp_path)
    return value


def _nothing_made(folder: Path) -> None:
    assert not (folder / "engines").exists() and not list(folder.glob("*.npz"))


def test_dip_sample_on_onnx_is_refused_before_its_export(between: int, tmp_path: Path) -> None:
    args = ("--image-size", str(SIDE), "--steps", "1", "--num-samples", "2", "--batch-size", "2", "--device", "cpu",
            "--out", tmp_path / "o.npz")  # fmt: skip
    code, err = run(cli.sample_main, *args, "--backend", "onnx")
    one_line(code, err, 2, f"sampling batch 2 at {SIDE}x{SIDE}", "on ONNX Runtime", "needs about")
    _nothing_made(tmp_path)
    code, err = run(cli.sample_main, *args, "--backend", "auto")  # auto may measure onnx
    one_line(code, err, 2, "on ONNX Runtime", "needs about")
    _nothing_made(tmp_path)


def test_dip_export_onnx_is_refused_before_tracing(between: int, tmp_path: Path) -> None:
    code, err = run(cli.export_main, "onnx", "--image-size", str(SIDE), "--output-dir", tmp_path / "e")
    one_line(code, err, 2, "exporting a DiP of hidden 128, depth 4", f"at {SIDE}x{SIDE} needs about")
    assert not (tmp_path / "e").exists()
    _nothing_made(tmp_path)


def test_dip_bench_on_onnx_is_refused_before_any_run(between: int, tmp_path: Path) -> None:
    code, err = run(cli.bench_main, "--backends", "torch,onnx", "--image-size", str(SIDE), "--batch-size", "2",
                    "--steps", "1", "--repeats", "1", "--warmup", "0", "--device", "cpu")  # fmt: skip
    one_line(code, err, 2, "on ONNX Runtime", "needs about")
    _nothing_made(tmp_path)


def test_the_api_refuses_onnx_at_load_and_allows_torch(between: int, tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match=r"on ONNX Runtime \(its export made first\) needs about") as caught:
        DiPPipeline.load(backend="onnx", device="cpu", image_size=SIDE, batch_size=2, num_samples=2)
    assert "\n" not in str(caught.value)
    _nothing_made(tmp_path)
    pipe = DiPPipeline.load(backend="torch", device="cpu", image_size=SIDE, batch_size=2, num_samples=2)  # fits
    pipe.check_budget(2)
    with pytest.raises(BudgetError, match="on ONNX Runtime"):  # the same pipeline's estimate on another backend
        pipe.check_budget(2, backend="onnx")
    _nothing_made(tmp_path)
