"""The GPU path under the fakes' stricter rules: each rule fails a wrong program, each fix holds under them."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from dip_export.errors import ExportError
from dip_export.export.manifest import read_manifest
from dip_export.export.spec import io_specs
from dip_export.export.trt_build import BatchProfile, build_engine, build_trt
from dip_export.runtime.cuda_graph import GraphedSampler
from dip_export.runtime.trt_engine import TrtEngine, aligned_empty
from dip_export.sampling import SamplerSettings, initial_noise, sample
from tests.fakes import tensorrt as fake_tensorrt
from tests.fakes.cuda import FakeCuda

CPU = torch.device("cpu")
SIZE = (32, 64)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory, golden):
    from dip_export.checkpoint import LoadedModel, build_model
    from dip_export.export.onnx_export import export_onnx

    loaded = LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")
    return export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path_factory.mktemp("rules") / "fp32")


@pytest.fixture()
def gpu(monkeypatch):
    return FakeCuda(names=("NVIDIA Fake GPU", "NVIDIA Fake GPU")).install(monkeypatch)


@pytest.fixture()
def built(fp32_export, tmp_path, gpu, monkeypatch):
    folder = Path(shutil.copytree(fp32_export, tmp_path / "export"))
    trt = fake_tensorrt.install(monkeypatch)
    entry = build_trt(precision="fp32", output_dir=folder, root=tmp_path, profile=BatchProfile(1, 2, 4), timing_cache=None,
                      opt_level=3, console=Console(quiet=True), device="cpu")  # fmt: skip
    return folder, entry, trt


def _engine(folder, entry, device=CPU):
    return TrtEngine.from_entry(folder, entry, io_specs(read_manifest(folder).config, *SIZE), device)


def _inputs(golden):
    return initial_noise(golden.meta["seeds"], *SIZE), torch.tensor(golden.meta["classes"])


# ---- the fixes


@pytest.mark.parametrize("forecast", [("off", 2), ("linear", 2), ("quadratic", 3)])
def test_trt_graphs_with_token_cache_sample_the_plain_images(built, golden, forecast):
    """Graph kinds that bind different token buffers get contexts of their own: no stale-context replay."""
    folder, entry, _ = built
    engine = _engine(folder, entry)
    noise, y = _inputs(golden)
    settings = SamplerSettings(steps=8, cfg=2.5, token_forecast=forecast[0], cache_interval=forecast[1])
    graphed = GraphedSampler(engine, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = graphed(noise, y, 5, settings)
        again = graphed(noise, y.flip(0), 5, settings)
    assert graphed.fallback_reason is None and graphed.captures >= 3
    torch.testing.assert_close(out, sample(engine, noise, y, 5, settings), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, sample(engine, noise, y.flip(0), 5, settings), rtol=1e-5, atol=1e-5)


def test_contexts_share_one_device_memory_block(built, golden):
    folder, entry, trt = built
    engine = _engine(folder, entry)
    trt.context_memory.clear()
    noise, y = _inputs(golden)
    GraphedSampler(engine, CPU)(noise, y, 5, SamplerSettings(steps=6, cfg=2.5, cache_interval=2))
    sample(engine, noise[:1], y[:1], 5, SamplerSettings(steps=2, cfg=2.5))  # a partial batch: more contexts
    plan = engine._plans["detailer"]
    assert len(plan.contexts) >= 4 and trt.context_memory == []  # no context allocated a block of its own
    assert {c.memory for c in plan.contexts.values()} == {plan.memory.data_ptr()}
    assert plan.memory.numel() == plan.engine.device_memory_size_v2


def test_a_failed_capture_is_remembered_and_reported(built, golden, monkeypatch):
    folder, entry, trt = built
    trt.refuse_capture = True
    graphed = GraphedSampler(_engine(folder, entry), CPU)
    tries = []
    capture = graphed._capture
    monkeypatch.setattr(graphed, "_capture", lambda kind: tries.append(kind) or capture(kind))
    noise, y = _inputs(golden)
    with pytest.warns(UserWarning, match="capture failed"):
        graphed(noise, y, 5, SamplerSettings(steps=3, cfg=2.0))
    for _ in range(3):
        graphed(noise, y, 5, SamplerSettings(steps=3, cfg=2.0))
        assert graphed.fallback_reason is not None and "capture failed" in graphed.fallback_reason
    assert len(tries) == 1


def test_plan_io_is_checked_against_the_export_contract(built):
    folder, entry, _ = built
    config = read_manifest(folder).config
    with pytest.raises(ExportError, match=r"does not have the backbone I/O .*x is FLOAT \[-1, 3, 32, 64\], expected float32"):
        TrtEngine.from_entry(folder, entry, io_specs(config, 32, 32), CPU)


def test_fp32_engines_are_built_without_tf32_and_pass_at_1e_3(built):
    _, entry, trt = built
    assert [b["tf32"] for b in trt.built] == [False, False]
    assert entry["verification"]["passed"] and max(r["rel_err"] for r in entry["verification"]["rows"]) < 1e-6


def test_engines_run_under_their_device_whatever_is_current(fp32_export, tmp_path, gpu, monkeypatch):
    """An engine of cuda:1 enqueues with cuda:1 current, also when the caller left cuda:0 current."""
    folder = Path(shutil.copytree(fp32_export, tmp_path / "export"))
    fake_tensorrt.install(monkeypatch)
    with gpu.device(1):
        entry = build_trt(precision="fp32", output_dir=folder, root=tmp_path, profile=BatchProfile(1, 1, 2),
                          timing_cache=None, opt_level=3, console=Console(quiet=True), device="cpu")  # fmt: skip
    monkeypatch.setattr(torch.cuda, "device", lambda d: gpu.device(1))  # the engine's device is cuda:1 (buffers on host)
    engine = _engine(folder, entry, CPU)
    x = aligned_empty((1, 3, *SIZE), torch.float32, CPU).zero_()
    assert gpu.device_index == 0
    engine.backbone(x, torch.zeros(1), torch.zeros(1, dtype=torch.int64))
    assert gpu.device_index == 0


def test_per_step_scalars_are_not_copied_from_host_memory_each_step(golden_model, golden, gpu, monkeypatch):
    from dip_export.runtime.torch_engine import TorchEngine

    engine = TorchEngine(golden_model, CPU)
    noise, y = _inputs(golden)
    graphed = GraphedSampler(engine, CPU)
    made = []
    original = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(1) or original(*a, **k))
    counts = []
    for steps in (4, 12):
        made.clear()
        graphed(noise, y, 5, SamplerSettings(steps=steps, cfg=2.5, cache_interval=2, token_forecast="linear"))
        counts.append(len(made))
    assert counts[0] == counts[1]


def test_refused_profile_and_corrupt_timing_cache(fp32_export, tmp_path, gpu, monkeypatch):
    trt = fake_tensorrt.install(monkeypatch)
    shapes = {"x": ((1, 3, *SIZE),) * 3, "t": ((1,),) * 3, "y": ((1,),) * 3}
    trt.refuse_profiles = True
    with pytest.raises(ExportError, match="refused the optimisation profile"):
        build_engine(fp32_export / "backbone.onnx", tmp_path / "b.plan", shapes)
    trt.refuse_profiles = False
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"garbage")
    console = Console(record=True, width=300)
    build_engine(fp32_export / "backbone.onnx", tmp_path / "b.plan", shapes, timing_cache=cache, console=console)
    assert "not a timing cache TensorRT can read" in console.export_text()
    assert cache.read_bytes().startswith(fake_tensorrt.CACHE_MAGIC) and trt.logged


# ---- the fakes' rules: a wrong program fails each


def test_fake_tf32_makes_fp32_engines_differ_from_onnx_runtime(built):
    """With TF32 on (the builder's default) an fp32 engine no longer equals ONNX Runtime at 1e-3."""
    folder, entry, trt = built
    plan_body = dict(_engine(folder, entry)._plans["backbone"].engine.body, tf32=True)
    tf32 = fake_tensorrt._Engine(trt, plan_body, 0)
    exact = fake_tensorrt._Engine(trt, dict(plan_body, tf32=False), 0)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 3, *SIZE)).astype(np.float32), "t": np.array([0.3, 0.7], np.float32),
             "y": np.array([0, 1])}  # fmt: skip
    a, b = tf32.run(feeds)["tokens"], exact.run(feeds)["tokens"]
    rel = np.abs(a - b).max() / np.abs(b).max()
    assert 1e-4 < rel < 1e-2


def test_fake_refuses_misaligned_addresses_and_the_wrong_device(built):
    folder, entry, trt = built
    plan = _engine(folder, entry)._plans["detailer"]
    context = plan.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    buf = aligned_empty((4096,), torch.uint8, CPU)
    assert context.set_tensor_address("x", buf.data_ptr())
    assert not context.set_tensor_address("x", buf.data_ptr() + 64)
    with pytest.raises(RuntimeError, match="aligned"):
        context.set_device_memory(buf.data_ptr() + 4, plan.engine.device_memory_size_v2)
    for name, shape in (("x", (1, 3, *SIZE)), ("tokens", (1, *plan.spec.inputs[1].shape[1:]))):
        assert context.set_input_shape(name, shape)
    bound = {name: aligned_empty((1 << 16,), torch.float32, CPU) for name in ("tokens", "v")}  # alive while the engine writes
    for name, tensor in bound.items():
        context.set_tensor_address(name, tensor.data_ptr())
    assert not context.execute_async_v3(1)  # USER_MANAGED without memory
    memory = aligned_empty((plan.engine.device_memory_size_v2,), torch.uint8, CPU)
    context.set_device_memory(memory.data_ptr(), memory.numel())
    plan.engine.device = 1  # built on cuda:1; cuda:0 is current
    assert not context.execute_async_v3(1)
    plan.engine.device = 0
    assert context.execute_async_v3(1)


def test_fake_11x_enums_are_the_real_ones(monkeypatch):
    ten, eleven = fake_tensorrt.make_module("10.13.0"), fake_tensorrt.make_module("11.1.0")
    assert int(ten.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    assert int(eleven.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    with pytest.raises(AttributeError):
        _ = eleven.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # code written for 8.x/10.x breaks on 11
    assert int(ten.BuilderFlag.TF32) == int(eleven.BuilderFlag.TF32) == 6  # TF32 exists in both
    assert not hasattr(eleven.BuilderFlag, "FP16") and hasattr(ten.BuilderFlag, "FP16")
    assert ten.ExecutionContextAllocationStrategy.USER_MANAGED == 2


def _qdq_model(path, *, zero_dtype=TensorProto.INT8, zero=0, scale=(0.1, 0.2), channels=2):
    w = numpy_helper.from_array(np.ones((channels, 3), np.int8), "w")
    s = numpy_helper.from_array(np.array(scale, np.float32), "s")
    z = helper.make_tensor("z", zero_dtype, (len(scale),), [zero] * len(scale))
    nodes = [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"], axis=0, name="dq"),
             helper.make_node("MatMul", ["x", "wf"], ["out"])]  # fmt: skip
    if zero_dtype == TensorProto.UINT8:
        w = numpy_helper.from_array(np.ones((channels, 3), np.uint8), "w")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])], [w, s, z])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({}, None), ({"zero_dtype": TensorProto.UINT8}, "UINT8"), ({"zero": 3}, "non-zero zero point"),
     ({"scale": (0.1, -0.2)}, "must be positive"), ({"scale": (0.1, 0.2, 0.3), "channels": 2}, "3 scales for 2 channels")],
)  # fmt: skip
def test_fake_parser_enforces_the_qdq_rules(tmp_path, kwargs, message):
    trt = fake_tensorrt.make_module()
    network = trt.Builder(trt.Logger()).create_network(0)
    parser = trt.OnnxParser(network, trt.Logger())
    path = _qdq_model(tmp_path / "m.onnx", **kwargs)
    assert parser.parse_from_file(path) == (message is None)
    if message is not None:
        assert any(message in parser.get_error(i) for i in range(parser.num_errors))


# ---- dip-export trt: which export


def test_trt_takes_the_most_recent_export_or_the_one_named(fp32_export, tmp_path, gpu, monkeypatch):
    """After a benchmark has added exports under engines/, `dip-export trt --fp16` goes on with the newest one."""
    import os

    from typer.testing import CliRunner

    from dip_export.cli import export_app

    fake_tensorrt.install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(("golden-32x64-fp32", "bench-32x64-fp32")):
        shutil.copytree(fp32_export, tmp_path / "engines" / name)
        os.utime(tmp_path / "engines" / name / "manifest.json", ns=(10**18, 10**18 + i * 10**9))
    runner = CliRunner()
    result = runner.invoke(export_app, ["trt", "--fp16"])
    out = result.output
    assert "several exports" not in out and "building from engines/bench-32x64-fp32" in " ".join(out.split())
    # the fp16 graph needs the checkpoint the fixture's export came from: one line naming it, nothing half-written
    assert result.exit_code == 1 and "checkpoint this export came from" in out and "Traceback" not in out
    named = runner.invoke(export_app, ["trt", "--fp16", "engines/golden-32x64-fp32"])
    assert "building from" not in named.output and "checkpoint this export came from" in named.output
    missing = runner.invoke(export_app, ["trt", "--fp16", "nowhere.pt"])
    assert missing.exit_code == 2 and "neither a checkpoint file nor an export folder" in missing.output


def test_timed_runs_synchronise_like_graphed_ones(gpu):
    """Ungraphed rows are timed end to end as graphed rows are; the per-call synchronising timers run separately."""
    from dip_export.measure.harness import StageTimer

    class Net:
        def backbone(self, x, t, y):
            return x

        def detailer(self, x, tokens):
            return x

    timed = StageTimer(Net(), torch.device("cuda"))
    timed.profile = False  # as dip-bench's timed runs set it
    x = torch.zeros(2, 3)
    for _ in range(3):
        timed.detailer(timed.backbone(x, x, x), x)
    assert gpu.synchronizes == 0 and timed.calls == {"backbone": 3, "detailer": 3} and timed.rows["backbone"] == 6
    timed.profile = True
    timed.detailer(timed.backbone(x, x, x), x)
    assert gpu.synchronizes == 4 and timed.times["backbone"] > 0


def test_fake_capture_refuses_host_syncs_on_the_capturing_stream(gpu):
    graph = torch.cuda.CUDAGraph()
    buf = torch.zeros(3)
    with pytest.raises(RuntimeError, match="capturing"), torch.cuda.graph(graph):
        buf.sum().item()  # a device-to-host read
    with pytest.raises(RuntimeError, match="capturing"), torch.cuda.graph(graph):
        buf.copy_(torch.tensor([1.0, 2.0, 3.0]))  # pageable host-to-device copy
    with torch.cuda.graph(graph):
        assert torch.cuda.is_current_stream_capturing()
        with torch.cuda.stream(torch.cuda.Stream()):
            assert not torch.cuda.is_current_stream_capturing()  # capture is per stream
        buf.add_(1.0)  # a kernel on the capturing stream: recorded, not run
    assert buf.sum() == 0
    graph.replay()
    assert buf.sum() == 3
