"""Picture writers and the plan helpers take exact values: one check (`io.check_pictures`) before any byte is written.

A float, object or 4-channel array written as a PNG used to give a corrupt file carrying the tool's mark; an
object array went into an .npz; grid, plan and size helpers failed with TypeError or ZeroDivisionError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dip_export.config import DiPConfig
from dip_export.errors import UsageError
from dip_export.generate import check_image_size, make_plan
from dip_export.io import check_pictures, image_grid, save_npz, save_png
from dip_export.pipeline import ModelSource

DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int64, np.float16, np.float32, np.float64, np.bool_])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)


@settings(max_examples=200)
@given(hnp.arrays(DTYPES, SHAPES), st.sampled_from([3, 4]))
def test_only_uint8_rgb_pictures_pass(array, ndim):
    fits = array.dtype == np.uint8 and array.ndim == ndim and array.shape[-1] == 3 and 0 not in array.shape
    if fits:
        assert check_pictures(array, "x", ndim) is array
    else:
        with pytest.raises(UsageError, match="uint8"):
            check_pictures(array, "x", ndim)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(DTYPES, SHAPES))
def test_a_refused_picture_writes_no_file(tmp_path_factory, array):
    folder = tmp_path_factory.mktemp("out")
    for write, ndim, name in ((save_png, 3, "a.png"), (save_npz, 4, "a.npz")):
        args = (folder / name, array, "sample-image") if write is save_png else (folder / name, array)
        if array.dtype == np.uint8 and array.ndim == ndim and array.shape[-1] == 3 and 0 not in array.shape:
            write(*args)
            assert (folder / name).stat().st_size > 0
        else:
            with pytest.raises(UsageError):
                write(*args)
            assert not (folder / name).exists() and not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_written_png_holds_the_pixels(tmp_path):
    import zlib

    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    save_png(tmp_path / "a.png", image, "sample-image")
    data = (tmp_path / "a.png").read_bytes()
    start = data.index(b"IDAT") + 4
    raw = zlib.decompress(data[start : start + int.from_bytes(data[start - 8 : start - 4], "big")])
    rows = np.frombuffer(raw, np.uint8).reshape(5, 1 + 7 * 3)
    assert (rows[:, 0] == 0).all() and (rows[:, 1:].reshape(5, 7, 3) == image).all()


@pytest.mark.parametrize("bad", [[[[1, 2, 3]]], None, "pixels", np.zeros((1, 2, 2, 3), dtype=object)])
def test_npz_and_grid_refuse_what_is_no_uint8_array(tmp_path, bad):
    with pytest.raises(UsageError):
        save_npz(tmp_path / "a.npz", bad)
    with pytest.raises(UsageError):
        image_grid(bad)
    assert not list(tmp_path.iterdir())


@given(st.one_of(st.integers(-5, 0), st.integers(1 << 21, 1 << 70), st.floats(), st.text(max_size=3), st.booleans()))
def test_grid_columns_and_cell_are_exact_ints_in_range(value):
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(UsageError):
        image_grid(images, columns=value)
    with pytest.raises(UsageError):
        image_grid(images, min_cell=value)


@given(st.integers(1, 12), st.integers(1, 40))
def test_grid_layout(columns, cell):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    grid = image_grid(images, columns=columns, min_cell=cell)
    scale, cols = max(1, -(-cell // 4)), min(5, columns)
    rows = -(-5 // cols)
    assert grid.shape == (rows * (4 * scale + 2) + 2, cols * (4 * scale + 2) + 2, 3)
    assert (grid[2 : 2 + 4 * scale : scale, 2 : 2 + 4 * scale : scale] == images[0]).all()


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=2**31 + 1), st.floats(), st.none(), st.booleans()))
def test_plan_and_size_helpers_take_exact_ints(value):
    with pytest.raises(UsageError):
        make_plan(value)
    with pytest.raises(UsageError):
        check_image_size(value, 32, 16)
    with pytest.raises(UsageError):
        check_image_size(32, 32, value)


@pytest.mark.parametrize(
    "fields",
    [
        {},  # neither a loaded model nor an export folder
        {"export_dir": "engines/x"},  # text, not a Path
        {"loaded": object()},
        {"export_dir": Path("engines/x")},  # no image size or precision
    ],
)
def test_a_hand_made_model_source_is_refused_in_one_line(fields):
    with pytest.raises(UsageError, match="ModelSource"):
        ModelSource("x", DiPConfig(), {}, **fields)
