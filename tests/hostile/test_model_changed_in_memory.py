"""A loaded model whose weights change in memory is no longer known by its source.

`LoadedModel.identity` keys every cache of what a model computes (on-the-fly exports, calibration, references).
It is the source's (the file's content, the weights taken, the config) only while the module's weights are as the
source gave them (`weights_signature`); after another module is set, `load_state_dict`, an in-place change or a
tensor's `.data` replaced, it is the weights' own content (`weights_digest`). So an export made from changed
weights is never reused for the file, nor one made from the file for the changed weights. The config is always
the one the module was built of."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.checkpoint import build_model, resolve_model, weights_digest
from dip_export.config import DiPConfig
from dip_export.errors import UsageError
from dip_export.export.manifest import read_manifest
from dip_export.runtime.backends import BackendSpec, make_torch_engine

FEW = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
CHANGES = ["another module", "load_state_dict", "in place", "data replaced", "buffer added"]


def _change(loaded, how: str, index: int) -> None:
    params = list(loaded.model.parameters())
    p = params[index % len(params)]
    with torch.no_grad():
        if how == "another module":
            loaded.model = build_model(loaded.config, seed=index + 1)
        elif how == "load_state_dict":
            loaded.model.load_state_dict(build_model(loaded.config, seed=index + 1).state_dict())
        elif how == "in place":
            p.add_(1e-3)
        elif how == "data replaced":
            p.data = p.data + 1e-3
        else:
            loaded.model.register_buffer(f"extra{index}", torch.ones(2))


@FEW
@given(how=st.sampled_from(CHANGES), index=st.integers(0, 200))
def test_weights_changed_in_memory_are_known_by_their_content(how: str, index: int) -> None:
    loaded = resolve_model(None)
    before = loaded.identity
    assert not before.startswith("weights:")
    _change(loaded, how, index)
    if how == "buffer added":  # not the architecture's any more: refused where its identity is needed
        with pytest.raises(UsageError, match="not the one its config builds"):
            _ = loaded.identity
        return
    after = loaded.identity
    assert after == "weights:" + weights_digest(loaded.model, loaded.config)
    assert after.removeprefix("weights:") != weights_digest(resolve_model(None).model, loaded.config)


def test_the_tools_own_move_keeps_the_source_identity() -> None:
    loaded = resolve_model(None)
    before = loaded.identity
    engine = make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
    assert engine is not None and loaded.identity == before
    with loaded.moving():
        loaded.model.to(torch.float64)  # a move that does change the values' storage: still the source's values
    assert loaded.identity == before
    with torch.no_grad():
        next(loaded.model.parameters()).mul_(2)
    with loaded.moving():
        loaded.model.to(torch.float32)
    assert loaded.identity.startswith("weights:")  # changed before the move: a move does not make it the source's


def test_config_is_the_modules(tmp_path: Path) -> None:
    loaded = resolve_model(None)
    other = DiPConfig.from_dict({**loaded.config.to_dict(), "depth": loaded.config.depth + 1})
    for attempt in (lambda: setattr(loaded, "config", other), lambda: setattr(loaded, "model", build_model(other))):
        with pytest.raises(UsageError, match="the one its module was built of"):
            attempt()
    with pytest.raises(UsageError, match="as_read"):
        loaded.as_read = ()
    assert loaded.config.depth == other.depth - 1 and not loaded.identity.startswith("weights:")


def test_an_export_of_changed_weights_is_never_reused_for_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The on-the-fly export made from a changed module is made under its content's identity: a later pipeline of
    the file makes its own export again (the file's pictures), recorded under the file's identity."""
    monkeypatch.chdir(tmp_path)
    args = {"classes": [1, 2], "seeds": [0, 1], "steps": 2}
    changed = DiPPipeline.load(device="cpu", backend="onnx")
    assert changed.source.loaded is not None
    changed.source.loaded.model = build_model(changed.config, seed=123)
    changed_images = changed(**args)
    eager = DiPPipeline.load(device="cpu", backend="torch")(**args)
    fresh = DiPPipeline.load(device="cpu", backend="onnx")(**args)
    assert np.abs(fresh.astype(int) - eager.astype(int)).max() <= 2  # the file's model, exported again: its pictures
    assert np.abs(changed_images.astype(int) - eager.astype(int)).max() > 50  # the other module's pictures
    recorded = read_manifest(tmp_path / "engines" / "dip-digits-32x32-fp32").source["identity"]
    assert recorded == resolve_model(None).identity


@pytest.mark.parametrize("change", [("grids", [{"x": 1}]), ("steps", "eight"), ("cfg", float("nan")), ("unknown", 1)])
def test_sampling_defaults_changed_in_place_are_checked_where_used(tmp_path: Path, change: tuple) -> None:
    """A stored-defaults dict changed in place, past the check made when it was set: refused in one line where a
    call reads it, and where an export would write it."""
    from dip_export.export.onnx_export import export_onnx

    key, value = change
    pipe = DiPPipeline.load(device="cpu")
    pipe.source.sampling[key] = value
    with pytest.raises(UsageError, match="changed since it was loaded and are refused"):
        pipe(classes=[1], seeds=[0], steps=2)
    loaded = resolve_model(None)
    loaded.sampling[key] = value
    with pytest.raises(UsageError, match="the model's sampling defaults are refused"):
        export_onnx(loaded, image_size=(32, 32), output_dir=tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_a_module_cfg_set_after_load_is_refused_where_the_module_is_used(tmp_path: Path) -> None:
    import dataclasses

    from dip_export.export.onnx_export import export_onnx

    loaded = resolve_model(None)
    loaded.model.cfg = dataclasses.replace(loaded.config, num_heads=8)
    with pytest.raises(UsageError, match="the one its module was built of"):
        export_onnx(loaded, image_size=(32, 32), output_dir=tmp_path / "e")
    with pytest.raises(UsageError, match="the one its module was built of"):
        make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
    assert not (tmp_path / "e").exists()


def test_a_pipelines_engine_follows_its_modules_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine made from the module's weights (an on-the-fly export) is made again once they change, back and
    forth: every call's pictures are those of the weights as they are then (the torch backend's)."""
    monkeypatch.chdir(tmp_path)
    args = {"classes": [1, 2], "seeds": [0, 1], "steps": 2}
    onnx, eager = DiPPipeline.load(device="cpu", backend="onnx"), DiPPipeline.load(device="cpu", backend="torch")
    assert onnx.source.loaded is not None and eager.source.loaded is not None
    first = onnx(**args)
    original = {k: v.clone() for k, v in onnx.source.loaded.model.state_dict().items()}
    for change in ("scaled", "restored", "scaled again"):
        with torch.no_grad():
            if change == "restored":
                onnx.source.loaded.model.load_state_dict(original)
            else:
                for p in onnx.source.loaded.model.blocks[0].parameters():
                    p.mul_(0.5)
        eager.source.loaded.model.load_state_dict(onnx.source.loaded.model.state_dict())
        got, want = onnx(**args), eager(**args)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 2, change
        if change == "restored":
            assert np.abs(got.astype(int) - first.astype(int)).max() <= 2
