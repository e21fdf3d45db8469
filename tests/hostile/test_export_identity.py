"""One model identity decides every reuse of what the model computes.

`LoadedModel.identity` (checkpoint.py) is the source's content, the weights taken from it (ema | raw) and the
config; an on-the-fly export (`is_current`) is reused only when that identity, the image size, the precision
and the opset all match, and the int8 calibration cache is keyed by it. A run that needs another export makes
it again in the folder (an export of this tool is replaced); ONNX Runtime's errors while running are one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.checkpoint import load_checkpoint, model_identity
from dip_export.errors import DipError, ExportError
from dip_export.export import onnx_export
from dip_export.export.calibration import CalibrationSettings
from dip_export.export.manifest import read_manifest
from dip_export.export.onnx_export import DEFAULT_OPSET, default_export_dir, ensure_export, is_current
from tests.test_hostile import SIZE, run

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(a=st.binary(max_size=64), b=st.binary(max_size=64), wa=st.sampled_from(["ema", "raw"]),
       wb=st.sampled_from(["ema", "raw"]), classes=st.integers(2, 9))  # fmt: skip
def test_the_identity_differs_exactly_when_content_weights_or_config_do(tmp_path: Path, golden, a: bytes, b: bytes,
                                                                        wa: str, wb: str, classes: int) -> None:  # fmt: skip
    (tmp_path / "a.ckpt").write_bytes(a)
    (tmp_path / "b.ckpt").write_bytes(b)  # another name: only the content counts
    config_b = dataclasses.replace(golden.config, num_classes=classes)
    same = a == b and wa == wb and config_b == golden.config
    assert (model_identity(tmp_path / "a.ckpt", wa, golden.config) == model_identity(tmp_path / "b.ckpt", wb, config_b)) == same


def test_the_calibration_key_differs_for_raw_and_ema_weights(loaded) -> None:
    calib = CalibrationSettings()
    raw = dataclasses.replace(loaded, weights="raw")
    assert calib.key(loaded, SIZE) != calib.key(raw, SIZE)
    assert calib.key(loaded, SIZE) == calib.key(dataclasses.replace(loaded), SIZE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, golden) -> SimpleNamespace:
    """dip-sample on a checkpoint in the release's Lightning layout (raw weights apart from the EMA ones), in a
    new working folder: ONNX with the EMA weights (an export made on the fly; a copy of it is kept), ONNX with the
    raw weights, eager PyTorch with the raw weights."""
    work = tmp_path_factory.mktemp("work")
    raw = {k: v * 1.05 for k, v in golden.state.items()}
    ckpt = tmp_path_factory.mktemp("ckpt") / "both.ckpt"
    torch.save({"state_dict": {**{f"ema_denoiser.{k}": v for k, v in golden.state.items()},
                               **{f"denoiser.{k}": v for k, v in raw.items()}}}, ckpt)  # fmt: skip
    images, old = {}, os.getcwd()
    os.chdir(work)
    try:
        for name, args in (("onnx-ema", ["--backend", "onnx"]), ("onnx-raw", ["--backend", "onnx", "--weights", "raw"]),
                           ("torch-raw", ["--backend", "torch", "--weights", "raw"])):  # fmt: skip
            out = work / f"{name}.npz"
            code, err = run(cli.sample_main, ckpt, "--image-size", f"{SIZE[0]}x{SIZE[1]}", "--classes", "1,2", "--seeds",
                            "0,1", "--steps", "2", "--cfg", "1", "--device", "cpu", *args, "--out", out)  # fmt: skip
            assert code == 0, err
            images[name] = np.load(out)["arr_0"].astype(int)
            if name == "onnx-ema":
                shutil.copytree(work / "engines" / f"both-{SIZE[0]}x{SIZE[1]}-fp32", work / "ema-export")
    finally:
        os.chdir(old)
    loaded = {w: load_checkpoint(ckpt, weights=w) for w in ("ema", "raw")}
    return SimpleNamespace(work=work, ckpt=ckpt, images=images, ema_export=work / "ema-export", loaded=loaded)


def test_dip_sample_raw_and_ema_never_share_an_export(runs) -> None:
    """The ONNX run of the raw weights gives eager PyTorch's images of the raw weights, not the EMA export's."""
    assert np.abs(runs.images["onnx-raw"] - runs.images["torch-raw"]).max() <= 2
    assert np.abs(runs.images["onnx-ema"] - runs.images["onnx-raw"]).max() > 2
    made = read_manifest(runs.work / "engines" / f"both-{SIZE[0]}x{SIZE[1]}-fp32")  # replaced: this tool's export
    assert made.source["weights"] == "raw"


@FAST
@given(precision=st.sampled_from(["fp32", "fp16", "bf16"]), size=st.sampled_from([SIZE, (32, 32), (64, 32)]),
       opset=st.sampled_from([DEFAULT_OPSET, 19, 20]), weights=st.sampled_from(["ema", "raw"]))  # fmt: skip
def test_an_export_is_current_only_when_everything_it_computes_matches(runs, precision: str, size: tuple[int, int],
                                                                       opset: int, weights: str) -> None:  # fmt: skip
    wanted = runs.loaded[weights]
    match = precision == "fp32" and size == SIZE and opset == DEFAULT_OPSET and weights == "ema"
    assert is_current(runs.ema_export, wanted, precision=precision, image_size=size, opset=opset) == match


def test_the_manifest_records_the_weights_identity_and_opset_its_graphs_hold(runs) -> None:
    import onnx

    from dip_export.export.onnx_export import graph_opset

    manifest = read_manifest(runs.ema_export)
    assert manifest.source["weights"] == "ema"
    assert manifest.source["identity"] == runs.loaded["ema"].identity != runs.loaded["raw"].identity
    held = {graph_opset(onnx.load(str(runs.ema_export / rel), load_external_data=False)) for rel in manifest.files.values()}
    assert held == {manifest.opset} == {DEFAULT_OPSET}


def test_an_export_of_another_size_or_precision_where_one_goes_is_made_again(tmp_path: Path, monkeypatch, runs) -> None:
    """The folder of the 32x64 fp32 export holding another one (its size swapped, or fp16): the run needs another
    export there, so it makes one (this tool's export is replaced); here the export itself is stubbed."""
    monkeypatch.chdir(tmp_path)
    loaded = runs.loaded["ema"]
    made = []
    monkeypatch.setattr(onnx_export, "export_onnx", lambda loaded, **kw: made.append(kw) or kw["output_dir"])
    for field, value in (("image_size", [SIZE[1], SIZE[0]]), ("precision", "fp16")):
        folder = default_export_dir(loaded.name, "fp32", SIZE)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(runs.ema_export, folder)
        data = json.loads((folder / "manifest.json").read_text())
        data[field] = value
        (folder / "manifest.json").write_text(json.dumps(data))
        assert ensure_export(loaded, precision="fp32", image_size=SIZE) == folder
    assert [(kw["precision"], kw["image_size"]) for kw in made] == [("fp32", SIZE)] * 2
    shutil.rmtree(folder)
    shutil.copytree(runs.ema_export, folder)
    assert ensure_export(loaded, precision="fp32", image_size=SIZE) == folder and len(made) == 2  # reused as it is


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _another_models_graph(folder: Path, manifest: dict) -> None:
    """The largest listed file (the backbone's weights) changed as by another model's export: the manifest kept."""
    path = folder / max(manifest["contents"], key=lambda rel: manifest["contents"][rel]["size"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


FORGERIES = {
    "a manifest made by hand, naming this model": lambda folder, m: m.update(owner_mac="0" * 64),
    "a manifest re-marked by another user": lambda folder, m: m.update(owner_mac=m["owner_mac"][::-1]),
    "no contents listed": lambda folder, m: m.update(contents={}),
    "a graph replaced under a marked manifest": _another_models_graph,
    "a file added beside the graphs": lambda folder, m: (folder / "extra.onnx").write_bytes(b"x"),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_manifest_naming_this_model_is_reused_only_when_this_tool_wrote_the_folder(tmp_path: Path, monkeypatch,
                                                                                     runs, forgery: str) -> None:  # fmt: skip
    """The manifest's `source` names this very model in every case: only this user's mark over the files as they
    were written makes the folder reusable. Otherwise it is neither run, quantized nor replaced: refused, kept."""
    monkeypatch.chdir(tmp_path)
    loaded = runs.loaded["ema"]
    folder = default_export_dir(loaded.name, "fp32", SIZE)
    shutil.copytree(runs.ema_export, folder)
    assert is_current(folder, loaded, precision="fp32", image_size=SIZE)  # as written: reused
    data = json.loads((folder / "manifest.json").read_text())
    FORGERIES[forgery](folder, data)
    (folder / "manifest.json").write_text(json.dumps(data))
    before = _snapshot(folder)
    assert data["source"] == json.loads((runs.ema_export / "manifest.json").read_text())["source"]
    assert not is_current(folder, loaded, precision="fp32", image_size=SIZE)
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: pytest.fail("exported over a folder not ours"))
    with pytest.raises(DipError) as caught:
        onnx_export.check_export_run(loaded, SIZE, tmp_path / "int8", precision="int8",
                                     calibration=CalibrationSettings(), calibration_dir=tmp_path / "calib")  # fmt: skip
    assert "\n" not in str(caught.value) and str(folder.name) in str(caught.value)
    assert _snapshot(folder) == before and not (tmp_path / "calib").exists()


def test_a_user_folder_where_an_export_goes_is_refused_in_one_line(tmp_path: Path, monkeypatch, loaded) -> None:
    monkeypatch.chdir(tmp_path)
    folder = default_export_dir(loaded.name, "fp32", SIZE)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "mine"}))
    with pytest.raises(DipError) as caught:
        ensure_export(loaded, precision="fp32", image_size=SIZE)
    assert "\n" not in str(caught.value) and "not an export of this tool" in str(caught.value)
    assert json.loads((folder / "manifest.json").read_text()) == {"format": "mine"}


def test_an_onnx_runtime_error_while_running_is_one_line(tmp_path: Path) -> None:
    """A graph that loads but fails on what it is given (here: the wrong image size) reports one line."""
    import onnx
    from onnx import TensorProto, helper

    from dip_export.runtime.ort_engine import _BoundSession, make_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["v"])], "g", [x], [v])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "g.onnx"))
    io = SimpleNamespace(name="detailer", inputs=[SimpleNamespace(name="x", dtype="float32")],
                         outputs=[SimpleNamespace(name="v", concrete=lambda b: (b, 3, 8, 8))])  # fmt: skip
    session = _BoundSession(make_session(tmp_path / "g.onnx"), io, torch.device("cpu"))
    with pytest.raises(ExportError) as caught:
        session(torch.zeros(1, 3, 8, 8))
    text = str(caught.value)
    assert "\n" not in text and text.startswith("ONNX Runtime failed running the detailer graph")
    assert "Expected" not in text and "index" not in text  # ONNX Runtime's own words stay out
    from dip_export.export.onnx_export import onnx_runner

    with pytest.raises(ExportError) as caught:  # the verification of an export runs its graphs the same way
        onnx_runner(tmp_path / "g.onnx", "fp32")({"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert "\n" not in str(caught.value) and "ONNX Runtime failed running this graph" in str(caught.value)
