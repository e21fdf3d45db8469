"""Image size: the pair (H, W) a pipeline reports is taken back wherever a size is (the one parser, `settings.image_size`).

The parser is property-tested (a pair of ints means what "HxW" means, with the same limits; bools, floats and
other lengths are refused); `DiPPipeline.load` and the pipeline's call are the surfaces.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.errors import UsageError
from dip_export.settings import MAX_IMAGE_SIDE, image_size

SIDE = st.integers(-2, MAX_IMAGE_SIDE + 2)
NOT_AN_INT = st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.none())


@given(SIDE, SIDE, st.sampled_from([tuple, list]))
def test_a_pair_means_what_hxw_means(h, w, kind):
    pair = kind([h, w])
    if 1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE:
        assert image_size(pair) == (h, w) == image_size(f"{h}x{w}")
        assert type(image_size(pair)[0]) is int
    else:
        with pytest.raises(UsageError):
            image_size(pair)


@given(st.integers(1, MAX_IMAGE_SIDE), NOT_AN_INT, st.booleans())
def test_a_pair_holds_exact_ints_only(side, other, first):
    pair = (other, side) if first else (side, other)
    with pytest.raises(UsageError, match="height" if first else "width"):
        image_size(pair)


@given(st.lists(st.integers(1, 64), max_size=5).filter(lambda values: len(values) != 2))
def test_a_pair_has_two_sides(values):
    with pytest.raises(UsageError, match=f"pair \\(H, W\\) of integers, got list of {len(values)}"):
        image_size(values)


def test_numpy_ints_pass_and_other_containers_do_not():
    assert image_size((np.int64(32), np.int32(16))) == (32, 16)
    for value in ({32, 16}, {"h": 32, "w": 32}, np.array([32, 32]), b"32x32", range(32, 34)):
        with pytest.raises(UsageError):
            image_size(value)


@pytest.fixture(scope="module")
def pipe():
    return DiPPipeline.load(image_size=(32, 32))


def test_load_takes_a_pair(pipe):
    assert pipe.image_size == (32, 32)
    assert DiPPipeline.load(image_size=[32, 32]).image_size == (32, 32)
    assert DiPPipeline.load(image_size=pipe.image_size).image_size == pipe.image_size


@pytest.mark.parametrize("size", [(32, 32.0), (True, 32), (32,), [32, 32, 3], (0, 32), (32, MAX_IMAGE_SIDE + 1)])
def test_load_refuses_a_bad_pair(size):
    with pytest.raises(UsageError, match="image size"):
        DiPPipeline.load(image_size=size)


def test_a_call_takes_the_pipelines_own_size(pipe):
    own = pipe(classes=[1], seeds=[0], steps=2, image_size=pipe.image_size)
    as_text = pipe(classes=[1], seeds=[0], steps=2, image_size="32x32")
    as_list = pipe(classes=[1], seeds=[0], steps=2, image_size=[32, 32])
    assert own.shape == (1, 32, 32, 3) and np.array_equal(own, as_text) and np.array_equal(own, as_list)


def test_a_call_takes_another_pair(pipe):
    images = pipe(classes=[1], seeds=[0], steps=2, image_size=(16, 32))  # the demo's patch size divides both
    assert images.shape == (1, 16, 32, 3)


@pytest.mark.parametrize("size", [(32.0, 32), (32, False), [32], (16, 33)])
def test_a_call_refuses_a_bad_pair(pipe, size):
    with pytest.raises(UsageError, match="image size"):
        pipe(classes=[1], seeds=[0], steps=2, image_size=size)
