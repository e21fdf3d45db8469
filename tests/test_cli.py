"""The commands as users type them: exit codes, one-line errors, files written or not."""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dip_export.cli import bench_app, export_app, sample_app
from tests.conftest import lightning_checkpoint

runner = CliRunner()
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, golden):
    return lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", golden.state, raw_offset=0.5)


def _sample_args(golden, case):
    s = golden.meta["sampler_cases"][case]
    return [
        "--image-size", golden.size, "--classes", "0,4", "--seeds", "11,12",
        "--steps", str(s["steps"]), "--cfg", str(s["cfg"]), "--shift", str(s["shift"]),
    ]  # fmt: skip


@pytest.mark.parametrize("case", ["cfg2.5", "cfg1_shift2"])
def test_dip_sample_gives_the_authors_images(tmp_path, ckpt, golden, case):
    out = tmp_path / "s.npz"
    result = runner.invoke(sample_app, [str(ckpt), *_sample_args(golden, case), "--out", str(out)])
    assert result.exit_code == 0, result.output
    images = np.load(out)["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (2, 32, 64, 3)
    diff = np.abs(images.astype(int) - golden[f"sample_{case}_uint8"])
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.995
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_num_samples_cycles_classes_and_batches_do_not_matter(tmp_path, ckpt):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = [str(ckpt), "--image-size", "32", "--steps", "2", "--num-samples", "7", "--seed", "3"]
    assert runner.invoke(sample_app, [*common, "--batch-size", "7", "--out", str(a)]).exit_code == 0
    assert runner.invoke(sample_app, [*common, "--batch-size", "3", "--out", str(b)]).exit_code == 0
    a_img, b_img = np.load(a)["arr_0"], np.load(b)["arr_0"]
    assert a_img.shape == (7, 32, 32, 3)
    assert np.abs(a_img.astype(int) - b_img).max() <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--classes", "9"], "class 9 is out of range"),
        (["--image-size", "40"], "not a positive multiple of the patch size 16"),
        (["--steps", "0"], "--steps must be in 1..10000"),
        (["--cfg", "1e3"], "--cfg must be in 0..100"),
        (["--classes", "1,2", "--seeds", "1"], "2 classes but 1 seeds"),
        (["--guidance-interval", "0.5"], "two numbers"),
        (["--backend", "tpu"], "unknown backend"),
        (["--out", "x.png"], "must end in .npz"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, ckpt, args, message):
    out = tmp_path / "x.npz"
    full = [str(ckpt), *args] if "--out" in args else [str(ckpt), *args, "--out", str(out)]
    result = runner.invoke(sample_app, full)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_checkpoints_exit_nonzero_without_output(tmp_path):
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.")
    for path in (evil, tmp_path / "missing.ckpt"):
        out = tmp_path / "o.npz"
        result = runner.invoke(sample_app, [str(path), "--out", str(out)])
        assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output
        assert not out.exists()


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()


def test_export_and_sample_on_onnx(tmp_path, ckpt, golden):
    folder = tmp_path / "exp"
    result = runner.invoke(export_app, ["onnx", str(ckpt), "--image-size", golden.size, "--output-dir", str(folder)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "o.npz"
    result = runner.invoke(sample_app, [str(folder), "--backend", "onnx", *_sample_args(golden, "cfg2.5")[2:], "--out", str(out)])
    assert result.exit_code == 0, result.output
    diff = np.abs(np.load(out)["arr_0"].astype(int) - golden["sample_cfg2.5_uint8"])
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.995


@pytest.mark.parametrize(
    ("app", "args"), [(sample_app, []), (export_app, []), (export_app, ["onnx"]), (export_app, ["trt"]), (bench_app, [])]
)
def test_every_help_page_renders(app, args):
    """--help goes through rich markup: a bracket in a help text must not break it."""
    result = runner.invoke(app, [*args, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "--help" in result.output


def test_an_assumed_image_size_is_said_in_one_line(tmp_path, ckpt):
    """A checkpoint without a stored config: the architecture is read off the weights, the size is a guess."""
    args = ["--classes", "0", "--seeds", "0", "--steps", "1", "--out", str(tmp_path / "s.npz")]
    result = runner.invoke(sample_app, [str(ckpt), *args])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("image size")]
    assert lines == ["image size 256x256 assumed: last stores no config (give --image-size for another)"]
    chosen = runner.invoke(sample_app, [str(ckpt), *args, "--image-size", "32x64", "--out", str(tmp_path / "t.npz")])
    assert chosen.exit_code == 0 and "image size" not in chosen.output


def test_help_lists_the_registrys_backends_without_importing_torch():
    import subprocess
    import sys

    from dip_export.runtime.backends import BACKENDS

    code = "import sys, dip_export.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for app, args in ((bench_app, []), (sample_app, [])):
        text = " ".join(runner.invoke(app, [*args, "--help"], terminal_width=400).output.split())
        for name, record in BACKENDS.items():
            assert f"{name} ({record.help}): {record.default}" in text


def test_batch_options_say_what_they_mean_and_old_spellings_still_work(monkeypatch):
    import dip_export.app as app_mod

    seen = []
    monkeypatch.setattr(app_mod, "run_export_trt", lambda precision, source, out, profile, *rest: seen.append(profile))
    assert runner.invoke(export_app, ["trt", "--batch-profile", "1,4,16"]).exit_code == 0
    assert runner.invoke(export_app, ["trt", "--batch", "2,2,8"]).exit_code == 0  # the old spelling, hidden
    assert seen == ["1,4,16", "2,2,8"]
    text = runner.invoke(export_app, ["trt", "--help"], terminal_width=200).output
    assert "--batch-profile" in text and "--batch " not in text


@pytest.mark.parametrize(
    "args,message",
    [
        (["--output", "m.pt"], "must name a .safetensors file"),
        (["--output", "m.safetensors", "--band", "2"], "--band must be LO,HI"),
        (["--output", "m.safetensors", "--band", "3,1"], "--band must be 0 <= LO <= HI"),
        (["--output", "m.safetensors", "--sampler", "heun"], "not heun"),
        (["--output", "m.safetensors", "--sweeps", "0"], "--sweeps"),
        (["--output", "m.safetensors", "--nfe", "0"], "--nfe must be in 1..10000"),
        (["--output", "m.safetensors", "--score", "median"], "--score must be one of pooled, mean"),
    ],
)
def test_schedule_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    args = [a if not a.startswith("m.") else str(tmp_path / a) for a in args]
    result = runner.invoke(export_app, ["schedule", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fitted_db", [38.0, 41.0])
def test_schedule_stores_a_grid_only_when_held_out_images_say_it_is_better(tmp_path, monkeypatch, fitted_db):
    from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint
    from dip_export.measure import yardstick
    from dip_export.sampling import SamplerSettings
    from dip_export.sampling.grids import grid_entry

    grid = tuple(i / 6 for i in range(7))
    info = {"reference": "ab3 512", "heldout_images": 32, "default_grid_db": 40.0, "fitted_grid_db": fitted_db}
    info["euler_100_db"] = 43.0

    def fake_fit(net, loaded, fit, size, batch, on_trial=None):
        assert (fit.sampler, fit.nfe, fit.cfg, fit.search.seed) == ("ab2", 6, 2.0, 5)
        return grid_entry(SamplerSettings(steps=6, cfg=2.0, method="ab2", grid=grid), fit.stored_band(), info), info

    monkeypatch.setattr(yardstick, "fit_schedule", fake_fit)
    out = tmp_path / "m.safetensors"
    result = runner.invoke(export_app, ["schedule", "--output", str(out), "--nfe", "6", "--cfg", "2", "--seed", "5"])
    if fitted_db < 40.0:
        assert result.exit_code == 1 and "not stored" in result.output and not out.exists()
    else:
        assert result.exit_code == 0, result.output
        stored = load_checkpoint(out).sampling
        shipped = load_checkpoint(DEMO_CHECKPOINT).sampling
        assert stored["grids"][:-1] == shipped["grids"]  # the model's own grids are kept
        assert stored["grids"][-1]["grid"] == list(grid) and stored["grids"][-1]["cfg"] == [1.6, 2.5]
        assert stored["steps"] == shipped["steps"]  # the recommendation changes only with --recommend


@pytest.mark.parametrize("recommend", [False, True])
def test_schedule_recommend_stores_the_fitted_solver_and_count_as_the_models_settings(tmp_path, monkeypatch, recommend):
    from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint
    from dip_export.measure import yardstick
    from dip_export.pipeline import DiPPipeline
    from dip_export.sampling import SamplerSettings
    from dip_export.sampling.grids import grid_entry

    grid = tuple(i / 7 for i in range(8))
    info = {"reference": "ab3 512", "heldout_images": 32, "default_grid_db": 40.0, "fitted_grid_db": 41.0, "euler_100_db": 43.0}

    def fake_fit(net, loaded, fit, size, batch, on_trial=None):
        assert (fit.sampler, fit.nfe, fit.cfg, fit.score) == ("unipc", 7, 1.75, "mean")
        return grid_entry(SamplerSettings(steps=7, cfg=1.75, method="unipc", grid=grid), fit.stored_band(), info), info

    monkeypatch.setattr(yardstick, "fit_schedule", fake_fit)
    out = tmp_path / "m.safetensors"
    args = ["schedule", "--output", str(out), "--sampler", "unipc", "--nfe", "7", "--cfg", "1.75", "--score", "mean"]
    result = runner.invoke(export_app, args + (["--recommend"] if recommend else []))
    assert result.exit_code == 0, result.output
    stored, shipped = load_checkpoint(out).sampling, load_checkpoint(DEMO_CHECKPOINT).sampling
    assert stored["grids"][:-1] == shipped["grids"] and stored["grids"][-1]["grid"] == list(grid)
    pipe = DiPPipeline.load(out, device="cpu")
    chosen = pipe.recommended_settings()
    if recommend:
        assert (stored["sampler"], stored["steps"], stored["cfg"], stored["shift"]) == ("unipc", 7, 1.75, 1.0)
        assert (chosen.method, chosen.steps, chosen.cfg) == ("unipc", 7, 1.75)
        assert list(pipe.sampler_settings().grid) == list(grid)  # nothing chosen: the recommendation with its grid
    else:
        assert {k: stored.get(k) for k in ("sampler", "steps", "cfg")} == {k: shipped.get(k) for k in ("sampler", "steps", "cfg")}
