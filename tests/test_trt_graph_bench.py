"""dip-bench's TensorRT rows with whole-step CUDA graphs and the token cache, under the fake CUDA and TensorRT."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from dip_export.checkpoint import LoadedModel
from dip_export.export.manifest import read_manifest
from dip_export.export.spec import io_specs
from dip_export.export.trt_build import BatchProfile, build_trt
from dip_export.measure import bench as bench_mod
from dip_export.runtime.backends import BackendSpec
from dip_export.runtime.trt_engine import TrtEngine
from dip_export.sampling import SamplerSettings
from tests.fakes import tensorrt as fake_tensorrt
from tests.fakes.cuda import FakeCuda

CPU = torch.device("cpu")
SIZE = (32, 64)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory, golden):
    from dip_export.checkpoint import build_model
    from dip_export.export.onnx_export import export_onnx

    loaded = LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")
    return export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path_factory.mktemp("tgb") / "fp32",
                       console=Console(quiet=True))  # fmt: skip


@pytest.mark.parametrize("forecast", ["off", "linear"])  # reuse, linear forecast
def test_trt_rows_with_graphs_and_cache_interval_2_are_graphed_and_sample_the_plain_images(
    fp32_export, tmp_path, golden, golden_model, monkeypatch, forecast
):
    gpu = FakeCuda().install(monkeypatch)
    fake_tensorrt.install(monkeypatch)
    folder = Path(shutil.copytree(fp32_export, tmp_path / "export"))
    entry = build_trt(precision="fp32", output_dir=folder, root=tmp_path, profile=BatchProfile(1, 2, 4), timing_cache=None,
                      opt_level=3, console=Console(quiet=True), device="cpu")  # fmt: skip
    net = TrtEngine.from_entry(folder, entry, io_specs(read_manifest(folder).config, *SIZE), CPU)
    loaded = LoadedModel(golden_model, golden.config, name="golden", source="test")
    sampler = SamplerSettings(steps=6, cfg=2.5, cache_interval=2, token_forecast=forecast)
    settings = bench_mod.BenchSettings(
        sampler=sampler, batch=2, height=SIZE[0], width=SIZE[1], warmup=1, repeats=2, cuda_graphs=True
    )
    spec = BackendSpec("trt", "fp32")
    plain = bench_mod.run_backend(spec, net, loaded, settings, sampler, CPU)
    assert not plain.cuda_graphs and gpu.captures == 0
    decide = bench_mod.graphs_unavailable
    monkeypatch.setattr(bench_mod, "graphs_unavailable", lambda s, b, d: decide(s, b, torch.device("cuda")))  # a CUDA device
    row = bench_mod.run_backend(spec, net, loaded, settings, sampler, CPU)
    assert row.cuda_graphs is True and row.cuda_graphs_note == ""  # graphed: no fallback in any timed run
    assert gpu.captures >= 3 and gpu.replays == 6 * (settings.warmup + 2)
    assert row.images is not None and plain.images is not None and row.images.shape == plain.images.shape
    diff = np.abs(row.images.astype(int) - plain.images.astype(int))
    assert diff.max() <= 1  # fp32 engines: the same images up to a last-level rounding
