"""dip-sample's solver and token-forecast options, as users type them."""

import numpy as np
import pytest
from typer.testing import CliRunner

from dip_export.cli import sample_app
from tests.conftest import lightning_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, golden):
    return lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", golden.state)


def test_release_heun_through_the_command(tmp_path, ckpt, golden):
    out = tmp_path / "h.npz"
    args = ["--image-size", golden.size, "--classes", "0,4", "--seeds", "11,12", "--steps", "6", "--cfg", "3", "--shift", "2"]
    result = runner.invoke(sample_app, [str(ckpt), *args, "--sampler", "heun", "--out", str(out)])
    assert result.exit_code == 0, result.output
    diff = np.abs(np.load(out)["arr_0"].astype(int) - golden["sample_heun6_cfg3_shift2_uint8"])
    assert diff.max() <= 1


def test_solver_with_token_forecast_runs(tmp_path, ckpt, golden):
    out = tmp_path / "u.npz"
    args = ["--image-size", golden.size, "--classes", "0,4", "--seeds", "11,12", "--steps", "5", "--cfg", "2"]
    extra = ["--sampler", "unipc", "--cache-interval", "2", "--token-forecast", "linear"]
    result = runner.invoke(sample_app, [str(ckpt), *args, *extra, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert np.load(out)["arr_0"].shape == (2, 32, 64, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--sampler", "rk4"], "sampler must be one of"), (["--token-forecast", "cubic"], "token forecast must be one of")],
)
def test_bad_solver_options_exit_2(tmp_path, ckpt, args, message):
    result = runner.invoke(sample_app, [str(ckpt), *args, "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2
    assert message in result.output
