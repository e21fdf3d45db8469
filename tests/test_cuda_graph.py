"""Whole-step CUDA graphs: same images as plain sampling, on a CUDA device and on the fake capture layer."""

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from rich.console import Console

from dip_export.export.manifest import read_manifest
from dip_export.export.spec import io_specs
from dip_export.export.trt_build import BatchProfile, build_trt
from dip_export.runtime.cuda_graph import GraphedSampler
from dip_export.runtime.torch_engine import TorchEngine
from dip_export.runtime.trt_engine import TrtEngine, aligned_empty
from dip_export.sampling import SamplerSettings, initial_noise, sample
from tests.fakes import tensorrt as fake_tensorrt
from tests.fakes.cuda import FakeCuda

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture()
def engine(golden_model):
    import copy

    return TorchEngine(copy.deepcopy(golden_model), torch.device("cuda"))


@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.gpu
@needs_cuda
def test_graphed_steps_match_plain_sampling(engine, golden, cfg):
    noise = initial_noise(golden.meta["seeds"], 32, 64).cuda()
    y = torch.tensor(golden.meta["classes"], device="cuda")
    settings = SamplerSettings(steps=6, cfg=cfg)
    plain = sample(engine, noise, y, 5, settings)
    graphed = GraphedSampler(engine, torch.device("cuda"))
    out = graphed(noise, y, 5, settings)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
    assert set(graphed.graphs) == ({False} if cfg == 1.0 else {True, False})
    again = graphed(noise, y.flip(0), 5, settings)  # new labels reuse the graphs
    torch.testing.assert_close(again, sample(engine, noise, y.flip(0), 5, settings), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_shape_change_recaptures(engine, golden):
    graphed = GraphedSampler(engine, torch.device("cuda"))
    settings = SamplerSettings(steps=3, cfg=2.0)
    for n in (1, 3):
        noise = initial_noise(range(n), 32, 64).cuda()
        y = torch.arange(n, device="cuda") % 5
        torch.testing.assert_close(graphed(noise, y, 5, settings), sample(engine, noise, y, 5, settings), rtol=1e-4, atol=1e-4)
        assert graphed.shape == (n, 3, 32, 64)


@pytest.mark.gpu
@needs_cuda
def test_heun_falls_back_with_a_warning(engine, golden):
    noise = initial_noise([1], 32, 64).cuda()
    y = torch.tensor([0], device="cuda")
    with pytest.warns(UserWarning, match="without them"):
        GraphedSampler(engine, torch.device("cuda"))(noise, y, 5, SamplerSettings(steps=2, method="heun"))


# ---- on any machine: the fake CUDA-graph layer (tests/fakes/cuda.py) enforces capture's rules on CPU tensors

CPU = torch.device("cpu")
SIZE = (32, 64)


@pytest.fixture()
def fake_gpu(monkeypatch):
    return FakeCuda().install(monkeypatch)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory, golden):
    from dip_export.checkpoint import LoadedModel, build_model
    from dip_export.export.onnx_export import export_onnx

    loaded = LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")
    return export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path_factory.mktemp("graphs") / "fp32")


@pytest.fixture()
def trt_engine(fp32_export, tmp_path, fake_gpu, monkeypatch):
    """TensorRT engines (fake module: ONNX Runtime behind TensorRT's API and rules) on CPU buffers."""
    folder = Path(shutil.copytree(fp32_export, tmp_path / "export"))
    trt = fake_tensorrt.install(monkeypatch)
    entry = build_trt(precision="fp32", output_dir=folder, root=tmp_path, profile=BatchProfile(1, 2, 4), timing_cache=None,
                      opt_level=3, console=Console(quiet=True), device="cpu")  # fmt: skip
    engine = TrtEngine.from_entry(folder, entry, io_specs(read_manifest(folder).config, *SIZE), CPU)
    trt.enqueues = 0
    return engine, trt


def _inputs(golden):
    return initial_noise(golden.meta["seeds"], *SIZE), torch.tensor(golden.meta["classes"])


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_fake_graphs_replay_the_plain_sampler(golden_model, golden, fake_gpu, cfg):
    engine = TorchEngine(golden_model, CPU)
    noise, y = _inputs(golden)
    settings = SamplerSettings(steps=6, cfg=cfg)
    graphed = GraphedSampler(engine, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = graphed(noise, y, 5, settings)
        torch.testing.assert_close(out, sample(engine, noise, y, 5, settings), rtol=1e-5, atol=1e-5)
        again = graphed(noise, y.flip(0), 5, settings)  # new labels: same graphs
    torch.testing.assert_close(again, sample(engine, noise, y.flip(0), 5, settings), rtol=1e-5, atol=1e-5)
    assert fake_gpu.captures == graphed.captures == (1 if cfg == 1.0 else 2)
    assert fake_gpu.replays == 12 and graphed.fallback_reason is None


def test_both_graphs_share_one_memory_pool(golden_model, golden, fake_gpu):
    graphed = GraphedSampler(TorchEngine(golden_model, CPU), CPU)
    graphed(*_inputs(golden), 5, SamplerSettings(steps=6, cfg=2.5))
    assert len(fake_gpu.pools) == 2 and fake_gpu.pools[0] is not None and fake_gpu.pools[0] is fake_gpu.pools[1]


def test_trt_graphs_keep_a_context_per_row_count(trt_engine, golden):
    """Paired (2B rows) and conditional-only (B rows) graphs: capturing the second must not break the first."""
    engine, _ = trt_engine
    noise, y = _inputs(golden)
    settings = SamplerSettings(steps=6, cfg=2.5)
    graphed = GraphedSampler(engine, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = graphed(noise, y, 5, settings)
    assert graphed.captures == 2 and graphed.fallback_reason is None
    torch.testing.assert_close(out, sample(engine, noise, y, 5, settings), rtol=1e-5, atol=1e-5)
    assert {k for k in engine._plans["backbone"].contexts if k[1] is not None} == {(4, True), (2, False)}


def test_trt_never_enqueues_on_the_legacy_default_stream(trt_engine, golden):
    engine, trt = trt_engine
    noise, y = _inputs(golden)
    sample(engine, noise, y, 5, SamplerSettings(steps=2, cfg=2.0))
    GraphedSampler(engine, CPU)(noise, y, 5, SamplerSettings(steps=2, cfg=2.0))
    assert trt.streams and 0 not in trt.streams


def test_a_refused_trt_capture_falls_back_to_plain_sampling(trt_engine, golden):
    engine, trt = trt_engine
    trt.refuse_capture = True
    noise, y = _inputs(golden)
    settings = SamplerSettings(steps=4, cfg=2.0)
    graphed = GraphedSampler(engine, CPU)
    with pytest.warns(UserWarning, match="capture failed"):
        out = graphed(noise, y, 5, settings)
    assert graphed.fallback_reason is not None and "enqueue" in graphed.fallback_reason
    torch.testing.assert_close(out, sample(engine, noise, y, 5, settings), rtol=1e-5, atol=1e-5)


def test_fake_capture_refuses_synchronize_and_stale_contexts(trt_engine, fake_gpu):
    """The fake's own rules: no synchronize inside a capture; a TensorRT replay needs the captured shapes."""
    engine, _ = trt_engine
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturing"), torch.cuda.graph(graph):
        torch.cuda.synchronize()
    x, t, y = aligned_empty((2, 3, *SIZE), torch.float32, CPU).zero_(), torch.zeros(2), torch.zeros(2, dtype=torch.int64)
    engine.backbone(x, t, y)  # the normal enqueue before a capture
    with torch.cuda.graph(graph):
        engine.backbone(x, t, y)
    graph.replay()
    engine.backbone(aligned_empty(x.shape, x.dtype, CPU).copy_(x), t, y)  # the context is bound to another address now
    with pytest.raises(RuntimeError, match="changed"):
        graph.replay()


@pytest.mark.parametrize("method", ["ab2", "unipc"])
@pytest.mark.parametrize("forecast", [("off", 2), ("linear", 2), ("quadratic", 3)])
def test_fake_graphs_replay_solvers_and_token_forecast(golden_model, golden, fake_gpu, method, forecast):
    """Detailer-only step kinds and token histories under capture's rules: same images as the plain sampler."""
    engine = TorchEngine(golden_model, CPU)
    noise, y = _inputs(golden)
    settings = SamplerSettings(steps=9, cfg=2.5, method=method, token_forecast=forecast[0], cache_interval=forecast[1])
    graphed = GraphedSampler(engine, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = graphed(noise, y, 5, settings)
    torch.testing.assert_close(out, sample(engine, noise, y, 5, settings), rtol=1e-5, atol=1e-5)
    assert graphed.fallback_reason is None and fake_gpu.replays == 9 and graphed.captures >= 3


@pytest.mark.parametrize("method", ["ab2", "ab3", "dpmpp_2m", "unipc"])
@pytest.mark.parametrize("forecast", [("off", 1), ("off", 2), ("linear", 2)])
@pytest.mark.gpu
@needs_cuda
def test_graphed_solvers_and_token_forecast_match_plain_sampling(engine, golden, method, forecast):
    noise = initial_noise(golden.meta["seeds"], 32, 64).cuda()
    y = torch.tensor(golden.meta["classes"], device="cuda")
    settings = SamplerSettings(steps=7, cfg=2.5, method=method, token_forecast=forecast[0], cache_interval=forecast[1])
    plain = sample(engine, noise, y, 5, settings)
    out = GraphedSampler(engine, torch.device("cuda"))(noise, y, 5, settings)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
