"""The bundled demo model: the default of every command, and good enough to recognise its digits."""

import numpy as np
from typer.testing import CliRunner

from dip_export.checkpoint import DEMO_CHECKPOINT, resolve_model
from dip_export.cli import sample_app
from dip_export.digits import digit_accuracy

runner = CliRunner()


def test_demo_is_small_and_carries_its_settings():
    assert DEMO_CHECKPOINT.stat().st_size <= 20 * 2**20
    loaded = resolve_model()
    assert loaded.name == "dip-digits" and loaded.config.num_classes == 10
    assert loaded.sampling["steps"] >= 1 and loaded.sampling["cfg"] >= 1.0


def test_demo_samples_are_recognised_as_their_class(tmp_path):
    out = tmp_path / "d.npz"
    result = runner.invoke(sample_app, ["--num-samples", "100", "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    images = np.load(out)["arr_0"]
    assert images.shape == (100, 32, 32, 3)
    assert digit_accuracy(images, np.arange(100) % 10) >= 0.9


def test_classifier_reads_real_digits_and_not_noise():
    from dip_export.digits import load_digit_images

    x, labels = load_digit_images(32)
    real = ((x[:300] + 1) * 127.5 + 0.5).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    assert digit_accuracy(real, labels[:300].numpy()) >= 0.98
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 32, 32, 3), dtype=np.uint8)
    assert digit_accuracy(noise, np.arange(100) % 10) <= 0.3
