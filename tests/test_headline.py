"""dip-bench --headline on small models with few images: the recipes it runs, its PSNRs, the flag, the JSON."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from dip_export.checkpoint import resolve_model, save_checkpoint
from dip_export.cli import bench_app
from dip_export.engines import make_engine
from dip_export.generate import generate, make_plan
from dip_export.measure import autobackend, headline, yardstick
from dip_export.measure.bench import BenchRow
from dip_export.measure.harness import psnr
from dip_export.runtime.backends import BackendSpec
from dip_export.sampling import SamplerSettings
from tests.test_bench import ROW_FIELDS

runner = CliRunner()
CPU = torch.device("cpu")
GRID = [0.0, 0.3, 0.62, 0.86, 1.0]  # a "fitted" ab2 grid of 4 steps, unlike the default warp
STORED = {
    "steps": 4, "cfg": 1.5, "sampler": "ab2", "cache_interval": 2,
    "grids": [{"sampler": "ab2", "nfe": 4, "cfg": [1.2, 1.9], "shift": 1.0, "interval": [0.1, 1.0], "grid": GRID, "fit": {}}],
}  # fmt: skip
IMAGES = 3


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory):
    """A short reference (and its own cache), and --backend auto measuring eager fp32 only: fast and deterministic."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yardstick, "REFERENCE_STEPS", 48)
        mp.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 30.0)
        mp.setattr(yardstick, "CACHE", tmp_path_factory.mktemp("reference"))
        mp.setattr(autobackend, "candidates", lambda device: [BackendSpec("torch", "fp32")])
        yield yardstick.CACHE


def _model_file(folder, sampling):
    path = folder / "model.safetensors"
    save_checkpoint(path, resolve_model().model, sampling)
    return path


def _headline(folder, model, *extra):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = runner.invoke(
            bench_app,
            [str(model), "--headline", "--batch-size", str(IMAGES), "--repeats", "1", "--warmup", "0", "--threads", "1",
             "--device", "cpu", "--json", "h.json", *extra],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = (folder / "h.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))  # no NaN / Infinity
    return report, result.output


@pytest.fixture(scope="module")
def fitted(short_reference, tmp_path_factory):
    """A model whose stored recommendation is ab2, 4 steps, a fitted grid, the backbone every 2 evaluations."""
    folder = tmp_path_factory.mktemp("fitted")
    model = _model_file(folder, STORED)
    report, output = _headline(folder, model)
    return report, output, model


def _rows(report):
    return {r["variant"]: r for r in report["results"]}


def _reference(model):
    loaded = resolve_model(model)
    plan = make_plan(loaded.config.num_classes, num_samples=IMAGES, seed=0)
    y = yardstick.Yardstick(IMAGES, 0, 1.5, 1.0, IMAGES, 32, 32)
    return loaded, plan, yardstick.reference_images(loaded, plan, y, SamplerSettings(cfg=1.5), device=CPU).images


def _images(loaded, plan, spec, settings):
    net = make_engine(spec, loaded, (32, 32), CPU, None, batch=IMAGES)
    return generate(net, plan, settings, null_class=loaded.config.null_class, height=32, width=32, batch_size=IMAGES, device=CPU)


def test_both_rows_run_what_their_recipes_say(fitted):
    report, _, _ = fitted
    rows = _rows(report)
    assert set(rows) == {"release recipe", "fast recipe"} and {r["variant_kind"] for r in rows.values()} == {"headline"}
    fast, release = rows["fast recipe"], rows["release recipe"]
    assert (fast["backend"], fast["precision"]) == ("torch", "fp32")  # what --backend auto decided (only eager measured)
    assert (fast["sampler"], fast["steps"], fast["grid"]) == ("ab2", 4, GRID)  # the stored grid matched and was used
    assert (fast["cache_interval"], fast["token_forecast"]) == (2, "linear")  # ab2 at K = 2: the measured forecast
    assert fast["evaluations_per_image"] == fast["detailer_calls"] == 4 and fast["backbone_calls"] < 4
    release_precision = "bf16" if autobackend.native_bf16(CPU) else "fp32"
    assert (release["backend"], release["precision"]) == ("torch", release_precision)
    assert (release["sampler"], release["steps"], release["grid"], release["cache_interval"]) == ("euler", 100, None, 1)
    assert release["backbone_calls"] == release["detailer_calls"] == 100
    recipes = report["settings"]["recipes"]
    assert recipes["release recipe"]["skip_uncond"] is False and recipes["fast recipe"]["backend"] == "torch:fp32"


def test_psnrs_are_the_images_against_the_converged_reference(fitted, short_reference):
    report, _, model = fitted
    rows = _rows(report)
    loaded, plan, reference = _reference(model)
    assert len(list(short_reference.glob(f"{loaded.name}-*.npz"))) == 1  # the run's reference, reused here
    release_spec = BackendSpec("torch", rows["release recipe"]["precision"])
    euler_100 = psnr(_images(loaded, plan, release_spec, SamplerSettings(steps=100, cfg=1.5)), reference)
    assert rows["release recipe"]["psnr_db_vs_reference"] == pytest.approx(euler_100, abs=0.2)
    fast = SamplerSettings(steps=4, cfg=1.5, method="ab2", cache_interval=2, token_forecast="linear", grid=tuple(GRID))
    spec = BackendSpec("torch", "fp32")
    assert rows["fast recipe"]["psnr_db_vs_reference"] == pytest.approx(psnr(_images(loaded, plan, spec, fast), reference))
    default_grid = psnr(_images(loaded, plan, spec, SamplerSettings(**{**fast.__dict__, "grid": None})), reference)
    assert abs(default_grid - rows["fast recipe"]["psnr_db_vs_reference"]) > 0.01  # the grid changed the result
    h = report["headline"]
    assert (h["release_psnr_db"], h["fast_psnr_db"]) == (
        rows["release recipe"]["psnr_db_vs_reference"], rows["fast recipe"]["psnr_db_vs_reference"])  # fmt: skip
    assert h["accuracy_loss"] == (h["fast_psnr_db"] < h["release_psnr_db"]) and h["comparable"] != h["accuracy_loss"]


def test_the_speedup_is_per_image_against_the_release_recipe(fitted):
    report, output, _ = fitted
    rows = _rows(report)
    fast, release = rows["fast recipe"], rows["release recipe"]
    assert report["headline"]["speedup"] == pytest.approx(release["s_per_image"] / fast["s_per_image"])
    assert fast["speedup_vs_eager"] == report["headline"]["speedup"] and release["speedup_vs_eager"] == 1.0
    expected = fast["speedup_vs_eager"] * math.hypot(release["spread"], fast["spread"])
    assert report["headline"]["speedup_spread"] == pytest.approx(expected)
    assert "release recipe: torch:" in output and "fast recipe: torch:fp32" in output and "converged reference" in output


def test_the_json_keeps_the_bench_contract(fitted):
    report, _, _ = fitted
    assert {"settings", "machine", "results", "noise", "headline"} <= set(report)
    assert all(set(r) >= ROW_FIELDS | {"psnr_db_vs_reference"} and r["status"] == "ok" for r in report["results"])
    s = report["settings"]
    assert s["mode"] == "headline" and s["images"] == IMAGES and s["cfg"] == 1.5 and s["reference"].startswith("ab3 ")
    assert s["threads"]["torch_intra_op"] == 1 and all(r["threads"] == 1 for r in report["results"])
    machine = report["machine"]
    assert isinstance(machine["cpu_flags"], list) and machine["physical_cores"] >= 1 and len(machine["load_average_after"]) == 3


def test_a_worse_fast_recipe_is_flagged(short_reference, tmp_path):
    model = _model_file(tmp_path, {"steps": 2, "cfg": 1.5})
    report, output = _headline(tmp_path, model)
    h = report["headline"]
    assert _rows(report)["fast recipe"]["steps"] == 2
    assert h["fast_psnr_db"] < h["release_psnr_db"] - 3 and h["accuracy_loss"] and not h["comparable"]
    assert "not a comparable speed-up" in h["warning"] and "(not comparable)" in output  # the table's speed-up cell
    assert f"not comparable: {h['warning']}" in " ".join(output.split())  # the closing line


def test_the_flag_stays_down_when_the_fast_recipe_is_as_accurate():
    release = BenchRow("torch", "bf16", psnr_db_vs_reference=40.0, speedup_vs_eager=1.0, speedup_spread=0.0)
    fast = BenchRow("compile", "bf16", psnr_db_vs_reference=41.5, speedup_vs_eager=6.0, speedup_spread=0.3)
    h = headline.summary(release, fast)
    assert (h["speedup"], h["accuracy_loss"], h["comparable"], h["warning"]) == (6.0, False, True, None)
    worse = headline.summary(release, BenchRow("compile", "bf16", psnr_db_vs_reference=39.9, speedup_vs_eager=6.0))
    assert worse["accuracy_loss"] and "39.90 dB against 40.00 dB" in worse["warning"]
    identical = headline.summary(release, BenchRow("torch", "bf16", psnr_db_vs_reference=math.inf, speedup_vs_eager=1.0))
    assert identical["fast_psnr_db"] is None and not identical["accuracy_loss"]  # JSON has no infinity


@pytest.mark.parametrize("native", [True, False])
def test_the_release_recipe_takes_bf16_only_where_the_hardware_has_it(monkeypatch, native):
    monkeypatch.setattr(headline, "native_bf16", lambda device: native)
    base = SamplerSettings(steps=4, cfg=3.0, shift=2.0, method="ab2", cache_interval=2, token_forecast="auto", grid=tuple(GRID))
    recipe = headline.release_recipe(base, CPU)
    assert str(recipe.spec) == ("torch:bf16" if native else "torch:fp32")
    s = recipe.sampler
    assert (s.method, s.steps, s.grid, s.cache_interval, s.token_forecast, s.skip_uncond) == ("euler", 100, None, 1, "off", False)
    assert (s.cfg, s.shift, s.interval) == (3.0, 2.0, base.interval)


def test_the_fast_recipe_forecasts_tokens_only_where_the_backbone_is_skipped():
    skipping = SamplerSettings(steps=10, method="unipc", cache_interval=2)
    assert headline.fast_sampler(skipping, {"cache_interval": 2}).token_forecast == "auto"
    assert headline.fast_sampler(skipping, {"cache_interval": 2, "token_forecast": "off"}) == skipping  # the model's word
    every = SamplerSettings(steps=10, method="unipc")
    assert headline.fast_sampler(every, {}) == every


@pytest.fixture()
def stopped(monkeypatch):
    """dip-bench --headline up to the measurement: the recipes and settings it would time, nothing timed."""
    from dip_export.errors import DipError

    seen = {}

    def fake_run(loaded, recipes, bench, device, **_):
        seen.update(recipes=recipes, bench=bench)
        raise DipError("stopped before timing")

    monkeypatch.setattr(headline, "run_headline", fake_run)
    monkeypatch.setattr(autobackend, "candidates", lambda device: [BackendSpec("torch", "fp32")])
    return seen


def test_headline_defaults_to_32_images_at_the_models_guidance(stopped, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(bench_app, ["--headline", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 1 and "stopped before timing" in result.output
    release, fast = stopped["recipes"]
    assert stopped["bench"].batch == 32 and release.sampler.cfg == fast.sampler.cfg == 1.5  # the demo's guidance
    from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint

    stored = load_checkpoint(DEMO_CHECKPOINT).sampling
    fitted = [e for e in stored["grids"] if e["cfg"][0] <= 1.5 <= e["cfg"][1]
              and (e["sampler"], e["nfe"]) == (stored["sampler"], stored["steps"])]  # fmt: skip
    assert len(fitted) == 1  # the demo's recommendation at its guidance is its fitted grid there
    assert (fast.sampler.method, fast.sampler.steps, list(fast.sampler.grid)) == (
        fitted[0]["sampler"],
        fitted[0]["nfe"],
        fitted[0]["grid"],
    )
    result = runner.invoke(bench_app, ["--headline", "--device", "cpu", "--cfg", "3", "--batch-size", "4"])
    assert result.exit_code == 1 and "stopped before timing" in result.output
    assert stopped["bench"].batch == 4 and stopped["recipes"][0].sampler.cfg == stopped["recipes"][1].sampler.cfg == 3.0


@pytest.mark.parametrize(
    "extra, named",
    [(["--steps", "5"], "--steps"), (["--backends", "torch"], "--backends"), (["--variants"], "--variants"),
     (["--sampler", "ab2", "--cache-interval", "2"], "--cache-interval, --sampler"), (["--nfe", "10"], "--nfe"),
     (["--samplers", "euler"], "--samplers"), (["--token-forecast", "linear"], "--token-forecast")],
)  # fmt: skip
def test_options_headline_would_ignore_are_refused_up_front(stopped, tmp_path, extra, named):
    result = runner.invoke(bench_app, ["--headline", "--json", str(tmp_path / "h.json"), *extra])
    assert result.exit_code == 2 and f"--headline does not take {named}:" in result.output
    assert len(result.output.strip().splitlines()) == 1 and stopped == {} and not any(tmp_path.iterdir())


def test_plot_with_headline_is_refused_before_anything_else(stopped, tmp_path):
    result = runner.invoke(bench_app, ["--headline", "--plot", str(tmp_path / "p.png"), "--batch-size", "0"])
    assert result.exit_code == 2 and "--headline does not take --plot" in result.output and stopped == {}
