"""DiPPipeline.load / __call__: wrong types and nonsense values give a UsageError before any work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.errors import DipError, UsageError
from dip_export.pipeline import _planned_count


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
def test_call_refuses_before_sampling(pipe, kwargs, monkeypatch):
    from dip_export.model import DiP

    calls, backbone = [], DiP.backbone
    monkeypatch.setattr(DiP, "backbone", lambda self, *a: calls.append(1) or backbone(self, *a))  # the class's: no hook
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


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"device": ("meta",)}, "unknown device"), ({"device": ("cuda:7",)}, "CUDA device"),
     ({"console": 5}, "rich Console"), ({"console": "x"}, "rich Console"), ({"model": ""}, "empty"),
     ({"model": "  "}, "empty"), ({"model": "a\x00b"}, "NUL"), ({"model": 5}, "got int"), ({"model": ["a"]}, "got list"),
     ({"model": b"/tmp/x.pt"}, "got bytes")],
)  # fmt: skip
def test_load_checks_objects_as_well_as_text(kwargs, words):
    """A torch.device goes through the same device check as its text; a console or model of the wrong kind is refused."""
    import torch

    kwargs = {k: torch.device(*v) if k == "device" else v for k, v in kwargs.items()}  # a torch.device object
    with pytest.raises(UsageError, match=words):
        DiPPipeline.load(**kwargs)


def test_a_hand_made_plan_is_checked_as_one_from_plan(pipe):
    from dip_export.generate import SamplePlan

    for bad in (SamplePlan([0.5], ["a"]), SamplePlan([0], [10]), SamplePlan([-1], [1]), SamplePlan([0], [1, 2])):
        with pytest.raises(UsageError):
            pipe.generate(bad, pipe.sampler_settings(steps=2))
    with pytest.raises(UsageError, match="SamplerSettings"):
        pipe.generate(pipe.plan([1], [0]), {"steps": 2})
    good = pipe.generate(SamplePlan([0], [1]), pipe.sampler_settings(steps=2))
    np.testing.assert_array_equal(good, pipe(classes=[1], seeds=[0], steps=2))


@pytest.mark.parametrize("on_step", [1, "print", [print], True])
def test_a_step_callback_that_cannot_be_called_is_refused_before_the_engine(pipe, monkeypatch, on_step):
    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was made before on_step was checked")

    monkeypatch.setattr(pipe, "engine", no_engine)
    with pytest.raises(UsageError, match="on_step must be callable or None, got"):
        pipe.generate(pipe.plan([1], [0]), pipe.sampler_settings(steps=2), on_step=on_step)


def test_one_setting_under_two_names_is_refused(pipe):
    with pytest.raises(UsageError, match="sampler and method"):
        pipe(classes=[1], seeds=[0], sampler="euler", method="heun")
    with pytest.raises(UsageError, match="guidance_interval and interval"):
        pipe.sampler_settings(guidance_interval=(0.1, 1.0), interval=(0.2, 1.0))


@pytest.mark.parametrize("size", [(7, 7), (32, 32.0), (32,), "32x32", (0, 32), (32, 10**9)])
def test_engine_sizes_are_checked(pipe, size):
    with pytest.raises(UsageError):
        pipe.engine(size=size)


@settings(max_examples=200, deadline=None)
@given(start=st.integers(-(2**80), 2**80), span=st.integers(-50, 50), step=st.integers(-9, 9).filter(bool))
def test_a_range_of_any_ends_counts_as_many_items_as_it_holds(start, span, step):
    """The count a call plans from a range is its exact length, whatever the size of its ends (the seeds' own
    bounds are the plan's to check): `len` itself overflows past sys.maxsize."""
    values = range(start, start + span, step)
    expected = sum(1 for _ in zip(values, range(200), strict=False))
    assert _planned_count([0], values, None) == max(expected, 1)  # one class and the range: the longer counts


def test_seeds_as_a_range_near_the_seed_limit_sample_as_the_same_list_does(pipe):
    top = 2**63 - 1
    as_range = pipe(classes=[3], seeds=range(top - 1, top + 1), steps=2, sampler="euler")
    as_list = pipe(classes=[3], seeds=[top - 1, top], steps=2, sampler="euler")
    assert np.array_equal(as_range, as_list)
    with pytest.raises(UsageError, match=r"--seeds must be in 0\.\.9223372036854775807"):
        pipe(classes=[3], seeds=range(top, top + 2), steps=2, sampler="euler")
    with pytest.raises(UsageError, match=r"the number of classes/seeds must be in 1\.\.\d+, got 1180591620717411303424$"):
        pipe(classes=[3], seeds=range(2**70), steps=2, sampler="euler")
