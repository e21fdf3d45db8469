"""The PNG grid: ten images a row, small images enlarged with sharp (nearest-neighbour) pixels."""

import numpy as np

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
