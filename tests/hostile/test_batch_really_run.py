"""The memory estimate of a sampling run counts the batch really run: min(--batch-size, the images of the run).

`budget.RunShape.sampling` sizes every sampling run (dip-sample, resumed and sharded runs, the Python API's load
and calls, dip-bench); a run of one image at the default --batch-size 16 is estimated as a batch of 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.budget import BudgetError, RunShape, run_bytes
from dip_export.config import DiPConfig
from dip_export.pipeline import DiPPipeline
from tests.test_hostile import one_line, run

DEMO = DiPConfig(hidden_size=128, num_heads=4, depth=4, patch_size=8, num_classes=10, in_channels=3, detailer_width=16,
                 image_size=32)  # fmt: skip
SIDE = 64  # the demo model at 64x64: one image fits the limit below, a batch of 16 does not


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 4096), st.integers(1, 10_000), st.integers(1, 16).map(lambda k: 8 * k))
def test_a_sampling_shape_runs_no_batch_bigger_than_its_images(batch: int, samples: int, side: int) -> None:
    shape = RunShape.sampling(batch, side, side, samples)
    assert shape.batch == min(batch, samples) and shape.samples == samples
    assert run_bytes(DEMO, shape) == run_bytes(DEMO, RunShape(min(batch, samples), side, side, samples))
    assert run_bytes(DEMO, shape) <= run_bytes(DEMO, RunShape(batch, side, side, samples))


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> int:
    """A memory limit between the estimates of a batch of 1 and a batch of 16 at SIDE."""
    one, sixteen = (run_bytes(DEMO, RunShape(b, SIDE, SIDE, 16)) for b in (1, 16))
    assert one < sixteen
    value = (one + sixteen) // 2
    monkeypatch.setenv("DIP_MEMORY_LIMIT", str(value))
    monkeypatch.chdir(tmp_path)
    return value


def test_dip_sample_of_one_image_is_estimated_at_its_batch_of_one(limit: int, tmp_path: Path) -> None:
    out = tmp_path / "one.npz"
    code, err = run(cli.sample_main, "--image-size", str(SIDE), "--classes", "1", "--seeds", "0", "--steps", "1",
                    "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    assert np.load(out)["arr_0"].shape == (1, SIDE, SIDE, 3)


def test_dip_sample_of_sixteen_images_is_still_refused(limit: int, tmp_path: Path) -> None:
    seeds = ",".join(map(str, range(16)))
    code, err = run(cli.sample_main, "--image-size", str(SIDE), "--classes", "1", "--seeds", seeds, "--steps", "1",
                    "--device", "cpu", "--out", tmp_path / "many.npz")  # fmt: skip
    one_line(code, err, 2, f"sampling batch 16 at {SIDE}x{SIDE}", "needs about")
    assert not (tmp_path / "many.npz").exists()


def test_a_resumed_run_of_two_images_is_estimated_at_its_batch(limit: int, tmp_path: Path) -> None:
    out = tmp_path / "r.npz"
    code, err = run(cli.sample_main, "--image-size", str(SIDE), "--num-samples", "2", "--steps", "1", "--resume",
                    "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, err
    assert np.load(out)["arr_0"].shape == (2, SIDE, SIDE, 3)


def test_the_api_estimates_each_call_at_the_batch_it_runs(limit: int) -> None:
    pipe = DiPPipeline.load(device="cpu", image_size=SIDE)  # batch_size 16, one image declared
    assert pipe(classes=[1], seeds=[0], steps=1).shape == (1, SIDE, SIDE, 3)
    with pytest.raises(BudgetError, match=f"sampling batch 16 at {SIDE}x{SIDE} keeping 16 images"):
        pipe(num_samples=16, steps=1)
    with pytest.raises(BudgetError, match="sampling batch 16"):
        DiPPipeline.load(device="cpu", image_size=SIDE, num_samples=16)


def test_dip_bench_counts_its_images_per_run(limit: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dip_export.measure.bench as bench

    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("timing started"))
    code, err = run(cli.bench_main, "--image-size", str(SIDE), "--batch-size", "16", "--backends", "torch", "--steps", "1",
                    "--device", "cpu")  # fmt: skip
    one_line(code, err, 2, f"sampling batch 16 at {SIDE}x{SIDE}", "needs about")
