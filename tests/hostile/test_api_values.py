"""DiPPipeline.load / __call__: wrong types and nonsense values give a UsageError before any work."""

from __future__ import annotations

import numpy as np
import pytest

from dip_export import DiPPipeline
from dip_export.errors import DipError, UsageError


@pytest.fixture(scope="module")
def pipe():
    return DiPPipeline.load()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"preset": ["dip-s-16"]},
        {"preset": {}},
        {"backend": 5},
        {"backend": ["torch"]},
        {"backend": ""},
        {"device": 5},
        {"device": None},
        {"weights": np.array(["ema", "raw"])},
        {"image_size": 0},
        {"image_size": ""},
        {"image_size": False},
        {"image_size": "3_2"},
        {"revision": 5},
    ],
)
def test_load_refuses(kwargs):
    with pytest.raises(UsageError):
        DiPPipeline.load(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": {1: 2}, "seeds": [1]},
        {"classes": {1, 2}, "seeds": [1, 2]},
        {"classes": (c for c in [1]), "seeds": [1]},
        {"classes": [1], "seeds": [1], "callback": 5},
        {"classes": [1], "seeds": [1], "cfg": 10**400},
    ],
)
def test_call_refuses_before_sampling(pipe, kwargs):
    calls = []
    pipe.source.loaded.model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(UsageError):
        pipe(steps=1, **kwargs)
    assert calls == []  # refused before the network ran


def test_call_takes_integer_arrays(pipe):
    images = pipe(classes=np.array([1, 2]), seeds=np.array([3, 4]), steps=1)
    reference = pipe(classes=[1, 2], seeds=[3, 4], steps=1)
    np.testing.assert_array_equal(images, reference)


def test_budget_before_building_a_huge_plan(pipe, monkeypatch):
    def no_plan(*args, **kwargs):
        raise AssertionError("the plan was built before the memory check")

    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1G")
    monkeypatch.setattr(pipe, "plan", no_plan)
    with pytest.raises(DipError, match="keeping 10000000 images"):
        pipe(num_samples=10**7, steps=1)
