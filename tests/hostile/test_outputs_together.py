"""A run's outputs (npz, grid, --png-dir PNGs) land together or not at all (`io.output_group`): Ctrl-C, SIGTERM or
a failure before the end leaves none of the new files, no temporary, and every earlier file as it was. Ctrl-C and
SIGTERM wait for a group's renames and a temporary's naming (`io.uninterrupted`), then act."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dip_export.app
from dip_export import io as dio
from dip_export.entry import INTERRUPTED, TERMINATED
from tests.hostile.test_swap_journal import listing


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_an_uninterrupted_block_acts_at_its_end(signum: int) -> None:
    seen: list[str] = []

    def handler(got: int, frame: object) -> None:
        seen.append(f"handled {got}")
        raise KeyboardInterrupt

    previous = signal.signal(signum, handler)
    try:
        with pytest.raises(KeyboardInterrupt), dio.uninterrupted():
            signal.raise_signal(signum)
            seen.append("block went on")
            signal.raise_signal(signum)  # twice: acted on once
            seen.append("block ended")
        assert seen == ["block went on", "block ended", f"handled {signum}"]
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, previous)


def _outputs(folder: Path) -> tuple[Path, Path]:
    return folder / "o.npz", folder / "pngs"


@settings(max_examples=30, deadline=None, derandomize=True)
@given(count=st.integers(1, 6), fail_at=st.integers(0, 8), earlier=st.booleans(),
       failure=st.sampled_from([KeyboardInterrupt, OSError, RuntimeError]))  # fmt: skip
def test_a_write_that_stops_at_any_file_leaves_none_of_the_group(
    tmp_path_factory: pytest.TempPathFactory, count: int, fail_at: int, earlier: bool, failure: type[BaseException]
) -> None:
    folder = tmp_path_factory.mktemp("out")
    out, pngs = _outputs(folder)
    request = types.SimpleNamespace(out=out, png_dir=pngs)  # what _write_outputs reads of a SampleRequest
    old = np.full((count, 4, 4, 3), 7, np.uint8)
    if earlier:  # an earlier run's outputs, which a stopped run must leave as they were
        dip_export.app._write_outputs(request, old)
    before = listing(folder)
    real, calls = dio.atomic_path.__wrapped__, [0]  # type: ignore[attr-defined]

    def stopping(target: Path, kind: str | None = None, size: int = 0):  # the (fail_at)th file of the group fails
        calls[0] += 1
        if calls[0] - 1 == fail_at:
            raise failure("stopped")
        return real(target, kind, size)

    import contextlib

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dio, "atomic_path", contextlib.contextmanager(stopping))
        new = np.full((count, 4, 4, 3), 200, np.uint8)
        if fail_at < count + 2:  # npz, grid, then one PNG per image
            with pytest.raises(failure):
                dip_export.app._write_outputs(request, new)
            assert listing(folder) == before  # nothing new, nothing gone, no temporary
        else:
            dip_export.app._write_outputs(request, new)
            with np.load(out) as data:
                np.testing.assert_array_equal(data["arr_0"], new)
            assert sorted(p.name for p in pngs.iterdir()) == [f"{i:06d}.png" for i in range(count)]


def _installed(name: str) -> Path:
    return Path(sys.executable).parent / name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_while_outputs_are_written_leaves_all_or_none(tmp_path: Path, signum: int) -> None:
    """dip-sample writing 300 PNGs is signalled once the first temporary appears in --png-dir, a little later each
    time: it ends with every output in place (the signal came during the renames) or none, and never a temporary."""
    words = {signal.SIGINT: INTERRUPTED, signal.SIGTERM: TERMINATED}
    seen = set()
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        out, pngs = _outputs(folder)
        child = subprocess.Popen([_installed("dip-sample"), "--steps", "1", "--num-samples", "300", "--batch-size", "300",
                                  "--out", out, "--png-dir", pngs], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, cwd=folder)  # fmt: skip
        deadline = time.monotonic() + 120
        while not (pngs.is_dir() and any(pngs.iterdir())) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.01 * attempt)
        child.send_signal(signum)
        _, err = child.communicate(timeout=120)
        left = sorted(p.name for p in folder.rglob("*"))
        assert not [name for name in left if name.endswith(".tmp")], left
        if child.returncode == 0:
            assert out.is_file() and out.with_suffix(".png").is_file() and len(list(pngs.iterdir())) == 300
            seen.add("all")
        else:
            assert child.returncode == 128 + signum, err
            assert err.strip().splitlines()[-1] == words[signum] and "Traceback" not in err, err
            assert not out.exists() and not out.with_suffix(".png").exists()
            assert not pngs.exists() or not any(pngs.iterdir()), left
            seen.add("none")
    assert "none" in seen  # the window this guards was hit


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_bench_report_and_its_plot_land_together(tmp_path: Path, failure: type[BaseException]) -> None:
    """dip-bench --json --plot: a plot that fails (or Ctrl-C while it is drawn) leaves the earlier report as it was."""
    from rich.console import Console

    from dip_export.io import save_json

    report = tmp_path / "b.json"
    save_json(report, {"rows": [1]}, "bench-report")
    before = listing(tmp_path)

    def plotter(data: dict, path: Path) -> None:
        raise failure("stopped")

    with pytest.raises(failure):
        dip_export.app._write_report({"rows": [2]}, report, tmp_path / "b.png", plotter, Console(quiet=True))
    assert listing(tmp_path) == before
