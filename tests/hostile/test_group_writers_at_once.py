"""Two runs writing the same outputs at once: each run's group (npz and grid) lands whole, one after the other, never
one run's npz beside the other's grid. A group checks and renames under a lock on each folder it writes to.

The first writer is slowed between its renames (a pause after each one), so that without the lock the second
writer's renames would fall between them: the pairs would mix every time, not by chance."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dip_export import io as dip_io
from dip_export.io import image_grid, output_group, save_npz, save_png


def _write(out: Path, value: int, png_dir: Path | None = None) -> None:
    images = np.full((2, 8, 8, 3), value, np.uint8)
    with output_group():
        save_npz(out, images)
        save_png(out.with_suffix(".png"), image_grid(images), "samples-grid")
        if png_dir is not None:
            for i, image in enumerate(images):
                save_png(png_dir / f"{i:06d}.png", image, "sample-image")


def _slow_writer(out: str, value: int, png_dir: str | None, started) -> None:
    renamed = dip_io._rename_into_place

    def slowly(tmp: Path, target: Path) -> None:
        renamed(tmp, target)
        started.set()  # its first rename is done: the other writer starts now
        time.sleep(0.4)

    dip_io._rename_into_place = slowly
    _write(Path(out), value, Path(png_dir) if png_dir else None)


def _values(out: Path, png_dir: Path | None) -> set[int]:
    found = {int(np.load(out)["arr_0"].max()), int(np.asarray(Image.open(out.with_suffix(".png"))).max())}
    if png_dir is not None:
        found |= {int(np.asarray(Image.open(p)).max()) for p in sorted(png_dir.iterdir())}
    return found


@pytest.mark.parametrize("with_pngs", [False, True])
def test_two_groups_at_once_land_one_after_the_other(tmp_path: Path, with_pngs: bool) -> None:
    out, png_dir = tmp_path / "s.npz", (tmp_path / "pngs" if with_pngs else None)
    if png_dir is not None:
        png_dir.mkdir()
    _write(out, 10, png_dir)  # an earlier run's outputs
    context = multiprocessing.get_context("fork")
    started = context.Event()
    slow = context.Process(target=_slow_writer, args=(str(out), 50, str(png_dir) if png_dir else None, started))
    slow.start()
    assert started.wait(60)
    _write(out, 200, png_dir)  # the second run: its group waits for the first one's to land
    slow.join(60)
    assert slow.exitcode == 0
    assert _values(out, png_dir) == {200}  # the second group, whole
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.npz", "s.png", *(["pngs"] if with_pngs else [])])


def test_the_lock_is_released_when_a_group_fails(tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    with pytest.raises(RuntimeError), output_group():
        save_npz(out, np.zeros((1, 8, 8, 3), np.uint8))
        raise RuntimeError("the run failed")
    started = time.perf_counter()
    _write(out, 7)  # no lock left held: it lands at once
    assert time.perf_counter() - started < 10 and _values(out, None) == {7}
    assert sorted(os.listdir(tmp_path)) == ["s.npz", "s.png"]
