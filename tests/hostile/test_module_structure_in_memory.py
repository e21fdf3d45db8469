"""A loaded model's module changed in memory into another architecture is refused where the tool uses it.

`LoadedModel.module()` is the one way every stage reaches the module (torch engines, exports, calibration,
references, the converter). Whenever the module's signature (its submodules, its tensors' objects, versions, dtypes,
shapes, devices) is not the one last checked, the module is compared with what its config builds: submodules by name
and type, weights by name and shape, each dense float32 on one device. A mismatch is one UsageError before any
tracing, running or writing; a module put back as it was runs again. Its fields are checked again there too, so
one set around the setter (`object.__setattr__`) is refused as the setter refuses it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.checkpoint import LoadedModel, check_module, resolve_model
from dip_export.errors import DipError, UsageError
from dip_export.export.onnx_export import export_onnx
from dip_export.runtime.backends import BackendSpec, make_torch_engine

FEW = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
CHANGES = ["identity", "narrower", "appended block", "dropped block", "half", "bf16 data", "zeros data", "integer buffer",
           "meta", "sparse", "setting", "forward hook", "pre hook", "forward set", "activation setting"]  # fmt: skip


def _change(model: torch.nn.Module, how: str, index: int) -> None:
    """One change of the module into what its config does not build, at a submodule or weight picked by `index`."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    name, linear = linears[index % len(linears)]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    leaf = name.rpartition(".")[2]
    weight = list(model.parameters())[index % len(list(model.parameters()))]
    if how == "identity":
        setattr(parent, leaf, torch.nn.Identity())
    elif how == "narrower":
        setattr(parent, leaf, torch.nn.Linear(linear.in_features, max(1, linear.out_features - 1 - index % 3)))
    elif how == "appended block":
        model.blocks.append(copy.deepcopy(model.blocks[index % len(model.blocks)]))
    elif how == "dropped block":
        del model.blocks[index % len(model.blocks)]
    elif how == "half":
        weight.data = weight.data.half()
    elif how == "bf16 data":
        weight.data = weight.data.bfloat16()
    elif how == "zeros data":
        weight.data = torch.zeros(3 + index % 5, 2)
    elif how == "integer buffer":
        model.register_buffer(f"steps{index}", torch.zeros(2, dtype=torch.int64))
    elif how == "meta":
        model.to("meta")
    elif how == "sparse":
        setattr(parent, leaf, torch.nn.Linear(linear.in_features, linear.out_features))
        getattr(parent, leaf).weight = torch.nn.Parameter(linear.weight.detach().to_sparse())
    elif how == "setting":  # a number that shapes the computation, with every weight as it was
        attention = model.blocks[index % len(model.blocks)].attn
        attention.num_heads, attention.head_dim = attention.num_heads * 2, attention.head_dim // 2
    elif how == "forward hook":
        linear.register_forward_hook(lambda module, args, out: out * 0 + 0.7)
    elif how == "pre hook":
        linear.register_forward_pre_hook(lambda module, args: None)
    elif how == "forward set":
        linear.forward = lambda x: x
    else:
        activation = next(m for m in model.modules() if isinstance(m, torch.nn.SiLU))
        activation.inplace = True


@FEW
@given(how=st.sampled_from(CHANGES), index=st.integers(0, 500))
def test_check_module_refuses_every_change_of_architecture(how: str, index: int) -> None:
    model = resolve_model(None).model
    check_module(model)  # as read: the architecture's
    _change(model, how, index)
    with pytest.raises(UsageError, match="not the one its config builds") as err:
        check_module(model)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


@FEW
@given(how=st.sampled_from(CHANGES), index=st.integers(0, 500), surface=st.sampled_from(["torch", "engine", "export"]))
def test_every_surface_refuses_a_changed_module_before_work(tmp_path_factory, how: str, index: int, surface: str) -> None:
    out = tmp_path_factory.mktemp("e") / "export"
    if surface == "torch":  # a pipeline that already ran: its next call checks the module as it is now
        pipe = DiPPipeline.load(device="cpu", backend="torch")
        pipe(classes=[1], seeds=[0], steps=2)
        assert pipe.source.loaded is not None
        _change(pipe.source.loaded.model, how, index)
        with pytest.raises(UsageError, match="not the one its config builds"):
            pipe(classes=[1], seeds=[0], steps=2)
        return
    loaded = resolve_model(None)
    _change(loaded.model, how, index)
    with pytest.raises(UsageError, match="not the one its config builds"):
        if surface == "engine":
            make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
        else:
            export_onnx(loaded, image_size=(32, 32), output_dir=out)
    assert not out.exists()


def test_an_onnx_pipeline_refuses_a_changed_module_before_exporting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pipe = DiPPipeline.load(device="cpu", backend="onnx")
    assert pipe.source.loaded is not None
    model = pipe.source.loaded.model
    model.blocks.append(copy.deepcopy(model.blocks[0]))
    with pytest.raises(UsageError, match=r"blocks\.4 not in the architecture"):
        pipe(classes=[1], seeds=[0], steps=2)
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


def test_a_module_put_back_runs_again_with_its_own_pictures() -> None:
    pipe = DiPPipeline.load(device="cpu", backend="torch")
    assert pipe.source.loaded is not None
    first = pipe(classes=[3, 5], seeds=[0, 1], steps=2)
    model = pipe.source.loaded.model
    kept = model.s_embedder.proj
    model.s_embedder.proj = torch.nn.Identity()
    with pytest.raises(UsageError, match=r"s_embedder\.proj is Identity, not Linear"):
        pipe(classes=[3, 5], seeds=[0, 1], steps=2)
    model.s_embedder.proj = kept
    again = pipe(classes=[3, 5], seeds=[0, 1], steps=2)
    assert np.array_equal(first, again)


BYPASSED = [("name", "../evil"), ("name", ""), ("weights", "raw2"), ("config", None), ("source", 5),
            ("model", torch.nn.Linear(2, 2)), ("sampling", {"steps": "eight"}), ("size_assumed", "no")]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BYPASSED, ids=[f"{f}={v!r}"[:30] for f, v in BYPASSED])
@pytest.mark.parametrize("surface", ["export", "engine"])
def test_fields_set_around_the_setter_are_refused_where_used(tmp_path: Path, field: str, value, surface: str) -> None:
    loaded = resolve_model(None)
    object.__setattr__(loaded, field, value)
    out = tmp_path / "export"
    with pytest.raises(DipError) as err:
        if surface == "export":
            export_onnx(loaded, image_size=(32, 32), output_dir=out)
        else:
            make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
    assert type(err.value) is UsageError and "\n" not in str(err.value)
    assert not out.exists()


def test_the_tools_own_records_are_not_set_by_hand() -> None:
    loaded = resolve_model(None)
    for name in ("as_read", "checked_as"):
        with pytest.raises(UsageError, match="not set by hand"):
            setattr(loaded, name, ())
    assert isinstance(loaded, LoadedModel)


def test_a_global_module_hook_is_refused_while_registered() -> None:
    pipe = DiPPipeline.load(device="cpu", backend="torch")
    first = pipe(classes=[1], seeds=[0], steps=2)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
    try:
        with pytest.raises(UsageError, match="global module hook"):
            pipe(classes=[1], seeds=[0], steps=2)
    finally:
        handle.remove()
    assert np.array_equal(pipe(classes=[1], seeds=[0], steps=2), first)


@pytest.mark.parametrize(("field", "value"), [("stamp", None), ("source", "other.safetensors"), ("weights", "raw")])
def test_where_the_weights_were_read_from_is_not_set_after_loading(tmp_path: Path, field: str, value) -> None:
    """An identity is the source's only while source, weights choice and file stamp are those of the load: a stamp
    dropped or a source renamed would have the export of these weights recorded as another file's and reused for it."""
    loaded = resolve_model(None)
    before = loaded.identity
    with pytest.raises(UsageError, match="not set after loading"):
        setattr(loaded, field, value)
    setattr(loaded, field, getattr(loaded, field))  # its own value again: nothing changes
    assert loaded.identity == before
    object.__setattr__(loaded, field, value)  # around the setter: known by its weights alone from now on
    assert loaded.identity.startswith("weights:")


def test_a_source_config_set_around_its_setter_is_refused_where_used() -> None:
    import dataclasses

    pipe = DiPPipeline.load(device="cpu", backend="torch")
    other = dataclasses.replace(pipe.source.config, num_classes=1000)
    object.__setattr__(pipe.source, "config", other)
    with pytest.raises(UsageError, match="config is not its loaded model's"):
        pipe(classes=[999], seeds=[0], steps=2)
    with pytest.raises(UsageError, match="config is not its loaded model's"):
        pipe.engine()


@pytest.mark.parametrize("name", ["detailer", "backbone", "forward"])
def test_a_method_set_on_the_model_itself_is_refused(name: str) -> None:
    pipe = DiPPipeline.load(device="cpu", backend="torch")
    first = pipe(classes=[1], seeds=[0], steps=2)
    assert pipe.source.loaded is not None
    model = pipe.source.loaded.model
    setattr(model, name, lambda *args, **kwargs: None)
    with pytest.raises(UsageError, match=f"the model's {name} is not the one its config builds"):
        pipe(classes=[1], seeds=[0], steps=2)
    delattr(model, name)
    assert np.array_equal(pipe(classes=[1], seeds=[0], steps=2), first)


def test_the_tools_records_live_outside_the_model() -> None:
    """Nothing set on a LoadedModel, by any means, changes what the tool recorded of it at load or at its last check."""
    import copy

    loaded = resolve_model(None)
    identity, read = loaded.identity, loaded.as_read
    with torch.no_grad():
        loaded.model.blocks[0].attn.qkv.weight.mul_(0.0)
    for name in ("as_read", "checked_as"):
        with pytest.raises(AttributeError):
            object.__setattr__(loaded, name, read)
    assert loaded.identity != identity and loaded.identity.startswith("weights:")
    twin = copy.copy(loaded)  # no records of its own: known by its weights, checked on use
    assert twin.as_read == () and twin.identity == loaded.identity
