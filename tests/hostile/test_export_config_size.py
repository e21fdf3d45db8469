"""An export runs at its manifest's image_size, and its memory is estimated at that size, whatever config.image_size.

The exporter writes the checkpoint's config (its native resolution, part of the model's identity) and the size the
export was made at (`--image-size`, non-square too), so the two differ legitimately; config.image_size is never
taken for the export's size: not by the run, not by the memory estimate made before the export is opened.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dip_export import DiPPipeline, budget
from dip_export.cli import sample_app
from dip_export.config import CONFIG_LIMITS
from tests.test_hostile import SIZE

SIDES = st.one_of(st.sampled_from([16, 32, 64, 4096, CONFIG_LIMITS["image_size"]]),
                  st.integers(1, CONFIG_LIMITS["image_size"] // 16).map(lambda k: 16 * k))  # whole patches  # fmt: skip


@contextlib.contextmanager
def recorded() -> Iterator[list[tuple[int, int]]]:
    """The (height, width) of every run memory estimate made meanwhile (the estimate itself still runs)."""
    seen: list[tuple[int, int]] = []
    real = budget.check_run

    def recording(config, shape, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((shape.height, shape.width))
        return real(config, shape, *args, **kwargs)

    budget.check_run = recording  # type: ignore[assignment]
    try:
        yield seen
    finally:
        budget.check_run = real  # type: ignore[assignment]


def _copy_with_config_side(pristine: Path, into: Path, side: int) -> Path:
    """A hand-edited copy of a good export: config.image_size set to `side` (its mark dropped, as an edit by hand
    leaves it stale; its list of files still holds)."""
    folder = Path(shutil.copytree(pristine, into / "exp"))
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data.pop("owner_mac", None)
    data["config"]["image_size"] = side
    path.write_text(json.dumps(data))
    return folder


def test_the_exporter_writes_the_checkpoints_config_beside_another_size(pristine: Path) -> None:
    data = json.loads((pristine / "manifest.json").read_text())
    assert data["image_size"] == list(SIZE) and data["config"]["image_size"] not in SIZE[1:]  # non-square: both differ


@settings(max_examples=12, deadline=None, derandomize=True)
@given(SIDES)
def test_api_load_estimates_and_runs_at_the_exports_size(pristine: Path, side: int) -> None:
    with recorded() as seen, tempfile.TemporaryDirectory() as tmp:
        folder = _copy_with_config_side(pristine, Path(tmp), side)
        pipe = DiPPipeline.load(folder, batch_size=1)
        assert pipe.image_size == SIZE and pipe.config.image_size == side
        images = pipe(num_samples=1, steps=2)
    assert images.shape == (1, *SIZE, 3)
    assert seen and set(seen) == {SIZE}  # every estimate at the size the export runs at


@settings(max_examples=6, deadline=None, derandomize=True)
@given(SIDES)
def test_dip_sample_estimates_and_runs_at_the_exports_size(pristine: Path, side: int) -> None:
    with recorded() as seen, tempfile.TemporaryDirectory() as tmp:
        folder = _copy_with_config_side(pristine, Path(tmp), side)
        out = Path(tmp) / "s.npz"
        args = [str(folder), "--steps", "2", "--num-samples", "1", "--batch-size", "1", "--out", str(out)]
        result = CliRunner().invoke(sample_app, args)
        assert result.exit_code == 0, result.output
        assert np.load(out)["arr_0"].shape == (1, *SIZE, 3)
    assert seen and set(seen) == {SIZE}


def test_a_huge_config_size_is_not_refused_as_a_huge_run(tmp_path: Path, pristine: Path) -> None:
    """The finding's case: config.image_size 4096 once made the estimate refuse a 32x64 run as 4096x4096."""
    folder = _copy_with_config_side(pristine, tmp_path, 4096)
    with recorded() as seen:
        args = [str(folder), "--steps", "2", "--num-samples", "1", "--out", str(tmp_path / "s.npz")]
        result = CliRunner().invoke(sample_app, args)
    assert result.exit_code == 0, result.output
    assert "4096" not in result.output and set(seen) == {SIZE}
