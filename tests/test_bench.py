"""dip-bench end to end on the demo model with a few steps: the JSON contract and its numbers."""

import json
import math
import sys
import time

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
            ["--steps", "3", "--repeats", "1", "--warmup", "0", "--backends", "torch,onnx,trt:fp16", "--threads", "1",
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
    assert onnx["digit_accuracy"] is None  # one image per run: the classifier's accuracy would say nothing
    assert report["settings"]["digit_accuracy"].startswith("omitted")
    assert onnx["backbone_ms"] > 0 and onnx["detailer_ms"] > 0
    # the split comes from its own profiled run (not the timed repeats, which noise can put below it): there the
    # step's total holds its parts
    assert onnx["overhead_ms"] >= -1e-6 and onnx["ms_per_step"] > 0


def test_one_thread_count_for_every_backend_is_applied_and_recorded(report):
    threads = report["settings"]["threads"]
    assert threads["torch_intra_op"] == threads["onnxruntime_intra_op"] == threads["compile"] == 1
    ok = [r for r in report["results"] if r["status"] == "ok"]
    assert all(r["threads"] == 1 for r in ok)
    onnx = next(r for r in ok if r["backend"] == "onnx")
    assert onnx["ort_threads"] == 1  # read back from the ONNX Runtime session's options
    machine = report["machine"]
    assert machine["physical_cores"] >= 1 and isinstance(machine["cpu_flags"], list)
    assert len(machine["load_average_before"]) == len(machine["load_average_after"]) == 3


def test_every_ratio_comes_with_its_spread(report):
    ok = [r for r in report["results"] if r["status"] == "ok"]
    eager = next(r for r in ok if (r["backend"], r["variant"]) == ("torch", ""))
    assert eager["speedup_spread"] == 0.0  # the reference against itself
    onnx = next(r for r in ok if r["backend"] == "onnx")
    expected = onnx["speedup_vs_eager"] * math.hypot(eager["spread"], onnx["spread"])
    assert onnx["speedup_spread"] == pytest.approx(expected)
    assert report["noise"]["bound"] == 0.1 and report["noise"]["max_ratio_spread"] >= 0


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
    timed.profile = True  # the profiling run's timers, which synchronise around every call
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
    settings = bench_mod.BenchSettings(SamplerSettings(steps=4, cfg=2.0), batch=2, height=32, width=64, warmup=1, repeats=3)
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


# ---- settings from the model, checks before any work, variants as data, noise


@pytest.fixture()
def captured(monkeypatch):
    """dip-bench up to the measurement: the settings it would measure with, nothing timed."""
    from dip_export.errors import DipError
    from dip_export.measure import bench as bench_mod

    seen = {}

    def fake_run_bench(loaded, specs, bench, device, **_):
        seen.update(bench=bench, specs=specs)
        raise DipError("stopped before timing")

    monkeypatch.setattr(bench_mod, "run_bench", fake_run_bench)
    return seen


def test_no_options_use_the_models_recommended_guidance_and_steps(captured):
    result = runner.invoke(bench_app, ["--device", "cpu"])
    assert result.exit_code == 1 and "stopped before timing" in result.output
    sampler = captured["bench"].sampler
    from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint

    stored = load_checkpoint(DEMO_CHECKPOINT).sampling  # the demo's recommendation, with a grid fitted for it
    assert (sampler.steps, sampler.cfg, sampler.method) == (stored["steps"], stored["cfg"], stored["sampler"])
    assert sampler.grid is not None and "the model's fitted grid for guidance 1.5" in result.output
    assert [str(s) for s in captured["specs"]][:2] == ["torch:fp32", "torch:bf16"]


def test_given_settings_win_and_the_old_batch_spelling_still_works(captured):
    result = runner.invoke(bench_app, ["--device", "cpu", "--steps", "7", "--cfg", "3", "--batch", "4", "--threads", "1"])
    assert result.exit_code == 1, result.output
    bench = captured["bench"]
    assert (bench.sampler.steps, bench.sampler.cfg, bench.batch, bench.threads) == (7, 3.0, 4, 1)
    assert "--batch-size" in runner.invoke(bench_app, ["--help"]).output


def test_plot_without_matplotlib_fails_at_once_with_the_hint(monkeypatch, tmp_path, captured):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    started = time.perf_counter()
    result = runner.invoke(bench_app, ["--plot", str(tmp_path / "p.png"), "--json", str(tmp_path / "b.json")])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 1 and "pip install matplotlib" in result.output
    assert elapsed < 1.0 and captured == {}  # before the model was loaded or anything measured
    assert not any(tmp_path.iterdir())


def test_the_yardstick_runs_on_one_named_backend(captured):
    result = runner.invoke(bench_app, ["--samplers", "euler", "--backends", "torch,onnx"])
    assert result.exit_code == 2 and "one backend" in result.output


def test_variants_are_records_with_a_kind_and_one_baseline_per_compared_kind():
    from dip_export.measure.bench import VARIANTS
    from dip_export.sampling import SamplerSettings

    base = SamplerSettings(steps=10, cfg=4.0)
    assert len({v.name for v in VARIANTS}) == len(VARIANTS)
    assert {v.kind for v in VARIANTS} == {"tokens", "guidance"}
    assert [v.name for v in VARIANTS if v.baseline] == ["guidance 1, both halves"]
    for v in VARIANTS:
        changed = v.settings(base)
        assert changed.steps == 10 and changed != base
        assert (changed.cfg == 1.0) == (v.kind == "guidance")


def test_noise_warning_names_the_largest_ratio_spread():
    from dip_export.measure.bench import BenchRow, noise_summary

    quiet = BenchRow("torch", "fp32", spread=0.02, speedup_vs_eager=1.0, speedup_spread=0.0)
    other = BenchRow("onnx", "fp32", spread=0.03, speedup_vs_eager=2.0, speedup_spread=2.0 * math.hypot(0.02, 0.03))
    assert noise_summary([quiet, other])["warning"] is None
    noisy = BenchRow("onnx", "int8", spread=0.3, speedup_vs_eager=3.0, speedup_spread=3.0 * math.hypot(0.02, 0.3))
    summary = noise_summary([quiet, other, noisy, BenchRow("trt", "fp16", status="skipped")])
    assert summary["max_ratio_spread"] == pytest.approx(math.hypot(0.02, 0.3))
    assert summary["warning"] == "noisy machine: ratios below are +-30%"


def test_digit_accuracy_is_measured_on_a_batch_that_means_something(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(bench_app, ["--steps", "3", "--repeats", "1", "--warmup", "0", "--backends", "torch",
                                       "--batch-size", "50", "--device", "cpu", "--json", "b.json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["digit_accuracy"] == "measured"
    assert 0.0 <= report["results"][0]["digit_accuracy"] <= 1.0
