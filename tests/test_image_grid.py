"""The PNG grid: ten images a row, small images enlarged with sharp (nearest-neighbour) pixels."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export.budget import GRID_IMAGES, BudgetError, RunShape, grid_bound, grid_bytes, run_bytes, weight_bytes
from dip_export.config import get_preset
from dip_export.io import image_grid


def _images(n: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def test_twenty_digits_make_two_rows_of_ten_enlarged_three_times():
    images = _images(20, 32)
    grid = image_grid(images)
    cell, pad = 96, 2
    assert grid.shape == (2 * (cell + pad) + pad, 10 * (cell + pad) + pad, 3)
    for i in (0, 9, 10, 19):
        r, q = divmod(i, 10)
        top, left = pad + r * (cell + pad), pad + q * (cell + pad)
        tile = grid[top : top + cell, left : left + cell]
        # every 3x3 block is one source pixel
        np.testing.assert_array_equal(tile[::3, ::3], images[i])
        np.testing.assert_array_equal(tile[2::3, 1::3], images[i])


def test_large_images_are_not_resized_and_few_images_make_one_short_row():
    images = _images(3, 128)
    grid = image_grid(images)
    assert grid.shape == (128 + 4, 3 * 130 + 2, 3)
    np.testing.assert_array_equal(grid[2:130, 132:260], images[1])


# ---- the grid's memory: estimated before it is made (`budget.grid_bytes`), never below what it allocates


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), h=st.integers(1, 40), w=st.integers(1, 40), cell=st.integers(1, 120), cols=st.integers(1, 12))
def test_the_estimate_covers_what_the_grid_allocates(n: int, h: int, w: int, cell: int, cols: int) -> None:
    images = np.zeros((n, h, w, 3), np.uint8)
    grid = image_grid(images, columns=cols, min_cell=cell)
    scale = max(1, -(-cell // max(h, w)))
    allocated = grid.nbytes + (n * h * scale * w * scale * 3 if scale > 1 else 0)
    assert allocated <= grid_bytes(n, h, w, cell, cols) <= 3 * allocated
    assert grid_bytes(n, h, w, cell, cols) >= 3 * grid.nbytes  # the PNG's rows and their compressed bytes beside it


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 10**6), side=st.integers(1, 4096), cell=st.integers(1, 4096))
def test_a_grid_past_memory_is_refused_before_any_allocation(
    n: int, side: int, cell: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "64M")
    images = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (n, side, side, 3))  # no memory of its own
    need = grid_bytes(n, side, side, cell)
    if need <= 64 << 20:
        return
    with pytest.raises(BudgetError, match=f"a grid picture of {n} images of {side}x{side} needs about"):
        image_grid(images, min_cell=cell)


@settings(max_examples=30, deadline=None)
@given(samples=st.integers(1, 5000), side=st.sampled_from([16, 32, 64, 256, 1024]), batch=st.integers(1, 16))
def test_a_runs_estimate_holds_its_grid_beside_its_images(samples: int, side: int, batch: int) -> None:
    """dip-sample writes a grid of its first images once sampling is done: the run's estimate counts it."""
    config = get_preset("dip-s-16")
    need = run_bytes(config, RunShape.sampling(batch, side, side, samples))
    assert need >= weight_bytes(config) + samples * side * side * 3 + grid_bytes(min(samples, GRID_IMAGES), side, side)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), h=st.integers(1, 600), w=st.integers(1, 600), dh=st.integers(0, 100), dn=st.integers(0, 10))
def test_the_runs_grid_bound_covers_the_grid_and_grows(n: int, h: int, w: int, dh: int, dn: int) -> None:
    assert grid_bound(n, h, w) >= grid_bytes(n, h, w)
    assert grid_bound(n + dn, h + dh, w) >= grid_bound(n, h, w)
