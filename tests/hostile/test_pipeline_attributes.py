"""A pipeline's settings are fixed at load: every public attribute is read-only (a one-line FixedSettingError, both a
UsageError and an AttributeError, at the assignment), so a reassigned value never reaches a call as a raw Python
error; the call's own image_size/batch_size and a new load are the ways to change them."""

from __future__ import annotations

import functools
import inspect
import keyword
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import UsageError
from dip_export.pipeline import FixedSettingError
from tests.test_hostile import one_line, run

CALL = {"classes": [1, 2], "seeds": [0, 1], "steps": 2}


@functools.cache
def pipe() -> DiPPipeline:
    return DiPPipeline.load(batch_size=2)


@functools.cache
def reference() -> np.ndarray:
    return DiPPipeline.load(batch_size=2)(**CALL)


def settings_of(p: DiPPipeline) -> dict[str, Any]:
    return {name: getattr(p, name) for name in public_data(p)}


def public_data(p: DiPPipeline) -> list[str]:
    """Every public name of a pipeline that is not a method: what a user could take for a setting."""
    methods = {n for n in dir(p) if callable(found := inspect.getattr_static(type(p), n, None)) or isinstance(found, classmethod)}
    return [n for n in dir(p) if not n.startswith("_") and n not in methods]


def test_every_public_attribute_is_a_known_read_only_setting() -> None:
    names = public_data(pipe())
    assert set(names) == {"batch_size", "config", "console", "device", "image_size", "name", "reason", "source", "spec"}
    assert not [n for n in vars(pipe()) if not n.startswith("_")]  # nothing public lives in the instance


VALUES = st.one_of(
    st.none(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8),
    st.tuples(st.integers(-5, 100), st.integers(-5, 100)), st.sampled_from(["cuda", torch.device("meta"), object()]),
)  # fmt: skip
NAMES = st.one_of(
    st.sampled_from(["batch_size", "config", "console", "device", "image_size", "name", "reason", "source", "spec"]),
    st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
        lambda n: not keyword.iskeyword(n) and not hasattr(DiPPipeline, n)
    ),  # a new name (a typo of a setting) is refused too, not stored unused
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(name=NAMES, value=VALUES)
def test_any_assignment_or_deletion_of_a_setting_is_refused_and_changes_nothing(name: str, value: Any) -> None:
    p = pipe()
    before = settings_of(p)
    with pytest.raises(FixedSettingError, match=r"^DiPPipeline[ .]") as caught:
        setattr(p, name, value)
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, AttributeError)
    assert "\n" not in str(caught.value) and name in str(caught.value)
    with pytest.raises(AttributeError):
        delattr(p, name)
    after = settings_of(p)
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


@pytest.mark.parametrize(
    ("name", "value", "how"),
    [("batch_size", 0, "pass batch_size= to the call"), ("device", "cuda", "load again with device="),
     ("image_size", (33, 33), "pass image_size= to the call"), ("spec", "onnx", "load again with backend="),
     ("source", None, "load again with another model")],
)  # fmt: skip
def test_the_reported_assignments_fail_at_once_and_the_call_still_gives_the_loaded_settings_images(
    name: str, value: Any, how: str
) -> None:
    p = pipe()
    with pytest.raises(FixedSettingError, match=f"DiPPipeline.{name} is read-only .*; {how}"):
        setattr(p, name, value)
    np.testing.assert_array_equal(p(**CALL), reference())  # batch 2, cpu, 32x32, torch: as loaded


def test_the_call_takes_its_own_batch_and_size_and_checks_them() -> None:
    p = pipe()
    np.testing.assert_array_equal(p(**CALL, batch_size=1), reference())  # same images in batches of one
    assert p(**CALL, image_size=16).shape == (2, 16, 16, 3) and p.image_size == (32, 32)
    with pytest.raises(UsageError, match="batch_size"):
        p(**CALL, batch_size=0)


def test_a_pipeline_made_directly_checks_what_load_would(monkeypatch: pytest.MonkeyPatch) -> None:
    p = pipe()
    with pytest.raises(UsageError, match="batch_size"):
        DiPPipeline(p.source, p.spec, p.device, batch_size=0)
    with pytest.raises(UsageError, match="not a positive multiple of the patch size"):
        DiPPipeline(p.source, p.spec, p.device, image_size=33)
    with pytest.raises(UsageError, match=r"device must be a torch\.device"):
        DiPPipeline(p.source, p.spec, "cuda")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="ModelSource and a BackendSpec"):
        DiPPipeline(p.source, "torch", p.device)  # type: ignore[arg-type]
    other = DiPPipeline(replace(p.source, sampling={}), p.spec, p.device, batch_size=2)  # another source: a new one
    assert (other.image_size, other.batch_size) == (p.image_size, 2) and p.source.sampling


def test_methods_may_still_be_replaced_as_test_doubles_do(monkeypatch: pytest.MonkeyPatch) -> None:
    p = DiPPipeline.load(batch_size=2)
    monkeypatch.setattr(p, "plan", lambda *a, **k: pytest.fail("planned"))
    with pytest.raises(pytest.fail.Exception, match="planned"):
        p(**CALL)
    monkeypatch.undo()
    np.testing.assert_array_equal(p(**CALL), reference())


def test_dip_sample_uses_the_batch_size_it_loads_with(tmp_path: Path) -> None:
    """The CLI (a thin caller of load and the call) reads the settings it loaded: same images as the API."""
    out = tmp_path / "o.npz"
    code, err = run(cli.sample_main, "--classes", "1,2", "--seeds", "0,1", "--steps", "2", "--batch-size", "2",
                    "--out", out)  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(np.load(out)["arr_0"], reference())
    code, err = run(cli.sample_main, "--classes", "1", "--seeds", "0", "--batch-size", "0", "--out", out)
    one_line(code, err, 2, "--batch-size")
