"""A pipeline made by hand (`DiPPipeline(source, spec, device)`) goes through the checks `load()` applies: one
function checks the device, one the backend against the source (torch and compile never run an export folder) and
the machine; a pipeline never moves a model another pipeline holds; and `console=None` prints nothing, whatever
the pipeline exports or builds."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dip_export.pipeline
from dip_export import DiPPipeline, cli
from dip_export.errors import DipError, UsageError
from dip_export.messages import say
from dip_export.pipeline import ModelSource
from dip_export.runtime.backends import BACKENDS, BackendSpec, make_torch_engine
from tests.test_hostile import one_line, run

CALL = {"classes": [1, 2], "seeds": [0, 1], "steps": 2}


@functools.cache
def demo() -> DiPPipeline:
    return DiPPipeline.load(batch_size=2)


@functools.cache
def reference() -> np.ndarray:
    return DiPPipeline.load(batch_size=2)(**CALL)


def fresh(source: ModelSource) -> ModelSource:
    """The same model, held by no pipeline yet (a checkpoint source), or the export folder source as it is."""
    if source.loaded is None:
        return source
    return dataclasses.replace(source, loaded=dataclasses.replace(source.loaded, held_on=None))


def export_source(folder: Path, precision: str = "fp32") -> ModelSource:
    """An export folder's source as open_source makes it (the constructor's checks read no file)."""
    s = demo().source
    return ModelSource(s.name, s.config, {}, path=folder, export_dir=folder, export_size=(32, 32), export_precision=precision)


def device_ok(device: torch.device) -> bool:
    if device.type == "cpu":
        return device.index is None  # load() takes "cpu", never "cpu:N"
    return device.type == "cuda" and torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()


def backend_ok(spec: BackendSpec, source: ModelSource, device: torch.device) -> bool:
    record = BACKENDS.get(spec.name) if isinstance(spec.name, str) else None
    if record is None or spec.precision not in record.precisions:
        return False
    if source.export_dir is not None and (record.runs_from != "export" or (spec.name == "onnx" and spec.precision != "fp32")):
        return False
    return record.unavailable_reason(spec.precision, device, from_model=source.loaded is not None) is None


DEVICES = st.sampled_from(["cpu", "meta", "cuda", "cuda:0", "cuda:7", "cpu:0", "mps", "xpu"]).map(torch.device)
KNOWN = [BackendSpec(name, p) for name in BACKENDS for p in ("fp32", "bf16", "fp16", "int8", "fp8", "int4")]
SPECS = st.one_of(
    st.sampled_from(KNOWN),
    st.builds(BackendSpec, st.sampled_from(["auto", "nope", "torch ", "onnx:fp32", "", "TORCH"]), st.sampled_from(["fp32", ""])),
    st.builds(BackendSpec, st.text(max_size=6), st.text(max_size=6)),
)  # fmt: skip


@settings(max_examples=40)
@given(device=DEVICES, spec=SPECS, exported=st.booleans())
def test_the_constructor_takes_exactly_what_load_takes(tmp_path_factory, device, spec, exported) -> None:
    source = export_source(tmp_path_factory.mktemp("exp")) if exported else fresh(demo().source)
    expected = device_ok(device) and backend_ok(spec, source, device)
    try:
        pipe = DiPPipeline(source, spec, device)
    except DipError as err:  # a UsageError, or a MissingDependencyError naming what the machine lacks
        assert not expected, err
        assert "\n" not in str(err) and str(err)
        assert source.loaded is None or source.loaded.held_on is None  # a refused pipeline holds nothing
        return
    assert expected, (device, spec)
    assert pipe.spec == spec and pipe.device == device


@pytest.mark.parametrize(("device", "backend", "message"), [
    ("meta", "torch", "unknown device 'meta'"), ("cpu", "nope", "unknown backend 'nope'"),
    ("cpu", "onnx:int4", "no precision 'int4'"), ("cpu", "trt:fp16", "TensorRT needs a CUDA GPU"),
])  # fmt: skip
def test_the_constructor_refuses_with_load_s_message(device: str, backend: str, message: str) -> None:
    with pytest.raises(DipError) as by_load:
        DiPPipeline.load(device=device, backend=backend)
    name, _, precision = backend.partition(":")
    with pytest.raises(DipError) as by_hand:
        DiPPipeline(fresh(demo().source), BackendSpec(name, precision or "fp32"), torch.device(device))
    assert message in str(by_load.value)
    assert str(by_hand.value) == str(by_load.value)


@pytest.mark.parametrize("backend", ["torch", "compile", "compile:bf16", "torch:bf16"])
def test_an_export_folder_with_a_torch_backend_is_refused_at_load_and_by_the_cli(tmp_path: Path, backend: str) -> None:
    folder = tmp_path / "engines" / "dip-digits-32x32-fp32"
    folder.mkdir(parents=True)
    message = f"backend {backend.partition(':')[0]} runs from a checkpoint, not an export folder"
    with pytest.raises(UsageError, match=message):
        DiPPipeline.load(folder, backend=backend)
    with pytest.raises(UsageError, match=message):
        DiPPipeline(export_source(folder), BackendSpec.parse(backend), torch.device("cpu"))
    code, err = run(cli.sample_main, folder, "--backend", backend, "--out", tmp_path / "s.npz")
    one_line(code, err, 2, message)
    assert not (tmp_path / "s.npz").exists()


def test_no_pipeline_moves_the_model_another_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    first = DiPPipeline.load(batch_size=2)
    for device, spec in [("meta", first.spec), ("cuda", first.spec), ("cpu", BackendSpec("nope", "fp32"))]:
        with pytest.raises(DipError):
            DiPPipeline(first.source, spec, torch.device(device))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA machine, as far as the checks can tell
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(UsageError, match="held by a pipeline on cpu"):
        DiPPipeline(first.source, first.spec, torch.device("cuda"))
    assert {p.device.type for p in first.source.loaded.model.parameters()} == {"cpu"}
    second = DiPPipeline(first.source, BackendSpec("torch", "bf16"), torch.device("cpu"))  # the same device: shared
    assert second.spec == BackendSpec("torch", "bf16")
    monkeypatch.undo()
    np.testing.assert_array_equal(first(**CALL), reference())  # the first pipeline still works, and as before


@settings(max_examples=40)
@given(devices=st.lists(st.sampled_from(["cpu", "meta", "cuda:0", "cuda:1"]).map(torch.device), min_size=1, max_size=5))
def test_a_model_is_held_on_one_device(devices: list[torch.device]) -> None:
    loaded = dataclasses.replace(demo().source.loaded, held_on=None)
    for device in devices:
        if device == devices[0]:
            loaded.hold(device)
        else:
            with pytest.raises(UsageError, match=f"held by a pipeline on {devices[0]}"):
                loaded.hold(device)
    assert loaded.held_on == devices[0]


def _noisy_engine(spec, loaded, size, device, console, batch=1):
    """Stands in for an on-the-fly export: prints as the export stages do, falling back to the terminal as they do."""
    from rich.console import Console

    console = console or Console(stderr=True)
    with console.status("exporting backbone (fp32) ..."):
        console.print("ONNX vs PyTorch fp32 (tolerance: max relative error <= 1e-04)")
    say(console, "wrote engines/dip-digits-32x32-fp32/ (backbone.onnx, detailer.onnx, manifest.json)")
    return make_torch_engine(BackendSpec("torch", "fp32"), loaded, device)


def test_console_none_prints_nothing_from_what_the_pipeline_makes(monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    monkeypatch.setattr(dip_export.pipeline, "make_engine", _noisy_engine)
    quiet = DiPPipeline.load(backend="onnx", batch_size=2, console=None)
    capfd.readouterr()
    np.testing.assert_array_equal(quiet(**CALL), reference())
    assert capfd.readouterr() == ("", "")
    from rich.console import Console

    loud = DiPPipeline.load(backend="onnx", batch_size=2, console=Console(stderr=True))
    loud(**CALL)
    assert "wrote engines/dip-digits-32x32-fp32/" in capfd.readouterr().err  # a console given is used


def test_a_hand_made_source_whose_parts_disagree_is_refused(tmp_path: Path) -> None:
    from dip_export.config import DiPConfig
    from dip_export.errors import UsageError

    s = demo().source
    with pytest.raises(UsageError, match="config is not its loaded model's"):
        ModelSource(s.name, DiPConfig(), {}, loaded=s.loaded)  # a full-size config over the demo's weights
    for sampling in ({"steps": "bogus"}, {"cfg": float("nan")}, {"nope": 1}):
        with pytest.raises(UsageError, match="sampling defaults are refused"):
            ModelSource(s.name, s.config, sampling, loaded=s.loaded)
    with pytest.raises(UsageError, match="names its image size and precision"):
        ModelSource(s.name, s.config, {}, export_dir=tmp_path / "nonexist")
    fields = {"export_dir": tmp_path / "e", "export_size": (32, 32), "export_precision": "fp32"}
    for change, words in (
        ({"weights": "bogus"}, "weights must be one of"),
        ({"export_precision": "fp64"}, "fp64"),
        ({"export_size": (0, -1)}, "height must be in"),
        ({"export_size": "big"}, "image size"),
        ({"export_size": (32, 36)}, "not a positive multiple"),
        ({"export_target": "x"}, "export_target"),
    ):
        with pytest.raises(UsageError, match=words):
            ModelSource(s.name, s.config, {}, **{**fields, **change})
    assert ModelSource(s.name, s.config, {"steps": 7}, loaded=s.loaded).config == s.config
