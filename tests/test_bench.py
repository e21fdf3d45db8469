"""dip-bench end to end on the demo model with a few steps: the JSON contract and its numbers."""

import json

import pytest
from typer.testing import CliRunner

from dip_export.cli import bench_app
from dip_export.measure.harness import psnr

runner = CliRunner()
ROW_FIELDS = {
    "backend", "precision", "ms_per_step", "s_per_image", "images_per_s", "backbone_ms", "detailer_ms",
    "speedup_vs_eager", "psnr_db_vs_eager", "peak_mem_mb", "gflop_per_step", "fraction_of_peak", "digit_accuracy",
}  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        result = runner.invoke(
            bench_app,
            ["--steps", "3", "--repeats", "1", "--warmup", "0", "--backends", "torch,onnx,trt:fp16",
             "--variants", "--device", "cpu", "--json", "b.json", "--plot", "b.png"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert (root / "b.png").read_bytes().startswith(b"\x89PNG")
        return json.loads((root / "b.json").read_text())


def test_json_has_the_contract_fields(report):
    assert {"settings", "machine", "results"} <= set(report)
    assert report["settings"]["model"] == "dip-digits" and report["settings"]["steps"] == 3
    assert report["machine"]["gemm_peak_gflops"]["fp32"] > 0
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert all(set(r) >= ROW_FIELDS for r in ok)


def test_eager_is_the_reference_and_onnx_matches_it(report):
    rows = {(r["backend"], r["precision"], r["variant"]): r for r in report["results"]}
    eager = rows[("torch", "fp32", "")]
    assert eager["speedup_vs_eager"] == 1.0 and eager["images_identical"]
    onnx = rows[("onnx", "fp32", "")]
    assert onnx["status"] == "ok" and (onnx["images_identical"] or onnx["psnr_db_vs_eager"] > 40)
    assert onnx["digit_accuracy"] is not None and 0 <= onnx["digit_accuracy"] <= 1
    assert onnx["backbone_ms"] > 0 and onnx["detailer_ms"] > 0
    assert onnx["ms_per_step"] >= onnx["backbone_ms"] + onnx["detailer_ms"] - 1e-6


def test_unavailable_backends_are_listed_with_a_reason(report):
    trt = next(r for r in report["results"] if r["backend"] == "trt")
    assert trt["status"] == "skipped" and ("GPU" in trt["reason"] or "tensorrt" in trt["reason"])


def test_sampler_variants_are_measured_against_their_own_baselines(report):
    rows = {r["variant"]: r for r in report["results"] if r["variant"]}
    skipped = rows["guidance 1, uncond skipped"]
    assert skipped["images_identical"] or skipped["psnr_db_vs_eager"] > 50
    assert rows["guidance 1, uncond skipped"]["detailer_calls"] == rows["guidance 1, both halves"]["detailer_calls"]
    assert rows["cache-interval 2"]["backbone_calls"] < rows["cache-interval 2"]["detailer_calls"]


def test_psnr():
    import numpy as np

    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255
    assert psnr(a, b) == pytest.approx(10 * np.log10(96))
    assert psnr(a, a) == float("inf")


def test_bad_bench_arguments():
    result = runner.invoke(bench_app, ["--backends", "onnx:fp64"])
    assert result.exit_code == 2 and "no precision" in result.output


def test_rows_say_whether_cuda_graphs_were_used(report):
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert all(r["cuda_graphs"] is False and r["cuda_graphs_note"] == "CUDA graphs need a CUDA device" for r in ok)


# ---- graphed rows on the fake CUDA-graph layer (tests/fakes/cuda.py): captures, synchronisation, timing


@pytest.fixture()
def fake_gpu(monkeypatch):
    from tests.fakes.cuda import FakeCuda

    return FakeCuda().install(monkeypatch)


def test_the_stage_timer_does_not_synchronise_inside_a_capture(golden_model, golden, fake_gpu):
    """The timing wrapper synchronises around calls on CUDA; inside a capture that would end it."""
    import warnings

    import torch

    from dip_export.measure.harness import StageTimer as _Timed
    from dip_export.runtime.cuda_graph import GraphedSampler
    from dip_export.runtime.torch_engine import TorchEngine
    from dip_export.sampling import SamplerSettings, initial_noise

    cpu = torch.device("cpu")
    timed = _Timed(TorchEngine(golden_model, cpu), torch.device("cuda"))  # synchronises like on a GPU
    graphed = GraphedSampler(timed, cpu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphed(initial_noise([0, 1], 32, 64), torch.tensor([1, 2]), 5, SamplerSettings(steps=4, cfg=2.0))
    assert graphed.fallback_reason is None and fake_gpu.captures == 2 and fake_gpu.synchronizes > 0


def test_graphed_rows_capture_once_and_are_timed_end_to_end(golden_model, golden, fake_gpu, monkeypatch):
    import math

    import torch

    from dip_export.checkpoint import LoadedModel
    from dip_export.measure import bench as bench_mod
    from dip_export.runtime.backends import BackendSpec
    from dip_export.runtime.torch_engine import TorchEngine
    from dip_export.sampling import SamplerSettings

    cpu = torch.device("cpu")
    loaded = LoadedModel(golden_model, golden.config, name="golden", source="test")
    settings = bench_mod.BenchSettings(steps=4, batch=2, height=32, width=64, warmup=1, repeats=3)
    sampler = SamplerSettings(steps=4, cfg=2.0)
    spec, net = BackendSpec("torch", "fp32"), TorchEngine(golden_model, cpu)
    plain = bench_mod.run_backend(spec, net, loaded, settings, sampler, cpu)
    assert not plain.cuda_graphs and plain.cuda_graphs_note
    monkeypatch.setattr(bench_mod, "graphs_unavailable", lambda *args: None)  # as on a CUDA device
    row = bench_mod.run_backend(spec, net, loaded, settings, sampler, cpu)
    assert row.cuda_graphs and row.cuda_graphs_note == ""
    assert fake_gpu.captures == 2  # paired + conditional-only, once for warm-up and all three repeats
    assert fake_gpu.replays == 4 * 4  # every step of every run is a replay
    assert math.isnan(row.backbone_ms) and row.ms_per_step > 0  # no per-stage times inside a replay
    assert row.gflop_per_step == pytest.approx(plain.gflop_per_step)
    assert row.backbone_calls == plain.backbone_calls and row.detailer_calls == plain.detailer_calls
    assert (row.images == plain.images).all()
    with pytest.warns(UserWarning, match="not Heun"):
        heun = bench_mod.run_backend(spec, net, loaded, settings, SamplerSettings(steps=4, cfg=2.0, method="heun"), cpu)
    assert not heun.cuda_graphs and "not Heun" in heun.cuda_graphs_note  # the fallback is reported
