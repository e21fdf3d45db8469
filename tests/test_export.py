"""ONNX export against PyTorch and the authors' golden numbers; failure modes leave nothing behind."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from dip_export.checkpoint import LoadedModel, build_model
from dip_export.errors import DipError, ExportError, UsageError
from dip_export.export import onnx_export
from dip_export.export.manifest import read_manifest
from dip_export.export.onnx_export import export_onnx
from dip_export.runtime.ort_engine import make_session
from tests.conftest import rel_err

SIZE = (32, 64)


@pytest.fixture(scope="module")
def loaded(golden):
    return LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, loaded):
    root = tmp_path_factory.mktemp("exports")
    return {p: export_onnx(loaded, precision=p, image_size=SIZE, output_dir=root / p) for p in ("fp32", "fp16", "bf16")}


def _run_golden(folder, golden, batch_rows):
    """ONNX Runtime on the golden inputs (rows repeated to reach a batch size)."""
    idx = np.arange(batch_rows) % 2
    feeds = {"x": golden["x"][idx], "t": golden["t"][idx], "y": golden["y"][idx]}
    tokens = make_session(folder / "backbone.onnx").run(None, feeds)[0]
    v = make_session(folder / "detailer.onnx").run(None, {"x": feeds["x"], "tokens": tokens})[0]
    given = make_session(folder / "detailer.onnx").run(None, {"x": feeds["x"], "tokens": golden["tokens_given"][idx]})[0]
    return idx, tokens, v, given


@pytest.mark.parametrize("batch", [2, 3])
def test_fp32_onnx_reproduces_authors_numbers_at_two_batch_sizes(exports, golden, batch):
    idx, tokens, v, given = _run_golden(exports["fp32"], golden, batch)
    assert rel_err(tokens, golden["tokens"][idx]) <= 1e-4
    assert rel_err(v, golden["v"][idx]) <= 1e-4
    assert rel_err(given, golden["v_given_tokens"][idx]) <= 1e-4


def test_fp16_export_holds_fp16_weights_and_stays_close(exports, golden):
    _, tokens, v, _ = _run_golden(exports["fp16"], golden, 2)
    assert rel_err(tokens, golden["tokens"]) <= 3e-2
    assert rel_err(v, golden["v"]) <= 3e-2
    for name in ("backbone", "detailer"):
        model = onnx.load(str(exports["fp16"] / f"{name}.onnx"))
        sizes = {}
        for init in model.graph.initializer:
            n = int(np.prod(init.dims)) if init.dims else 1
            sizes[init.data_type] = sizes.get(init.data_type, 0) + n
        assert sizes.get(onnx.TensorProto.FLOAT16, 0) / sum(sizes.values()) >= 0.8
        assert next(i.type.tensor_type.elem_type for i in model.graph.input) == onnx.TensorProto.FLOAT


def test_bf16_export_is_bf16_and_verified(exports):
    manifest = read_manifest(exports["bf16"])
    assert manifest.verification["passed"] and manifest.verification["worst_rel"] <= 6e-2
    model = onnx.load(str(exports["bf16"] / "backbone.onnx"))
    bf16 = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == onnx.TensorProto.BFLOAT16)
    total = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    assert bf16 / total >= 0.8


def test_manifest_records_the_contract(exports, golden):
    data = json.loads((exports["fp32"] / "manifest.json").read_text())
    assert data["files"] == {"backbone": "backbone.onnx", "detailer": "detailer.onnx"}
    assert data["precision"] == "fp32" and data["image_size"] == list(SIZE)
    assert data["config"]["hidden_size"] == 96 and data["verification"]["passed"]
    assert {"torch", "onnx", "onnxruntime"} <= set(data["versions"])
    assert len(data["verification"]["rows"]) == 4
    graph = onnx.load(str(exports["fp32"] / "backbone.onnx")).graph
    assert [i.name for i in graph.input] == ["x", "t", "y"]
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.output]
    assert dims == [["batch", 8, 96]]  # only the batch is dynamic


def test_failed_verification_leaves_earlier_export_untouched(tmp_path, loaded, monkeypatch):
    folder = tmp_path / "exp"
    export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=folder)
    before = (folder / "manifest.json").read_text()
    monkeypatch.setitem(onnx_export.TOLERANCES, "fp16", 1e-9)
    with pytest.raises(ExportError, match="verification failed"):
        export_onnx(loaded, precision="fp16", image_size=SIZE, output_dir=folder)
    assert (folder / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no temporary folder left


def test_interrupted_export_leaves_nothing_complete_looking(tmp_path, loaded, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "verify_export", boom)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path / "exp")
    assert list(tmp_path.iterdir()) == []


def test_read_only_output_folder_is_a_clean_error(tmp_path, loaded):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    # root ignores permission bits; /proc refuses new folders to everyone
    target = ro / "exp" if os.geteuid() != 0 else Path("/proc/dip-export-test/exp")
    with pytest.raises(DipError, match="cannot write"):
        export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=target)


def test_unknown_precision(loaded, tmp_path):
    with pytest.raises(UsageError):
        export_onnx(loaded, precision="fp64", image_size=SIZE, output_dir=tmp_path / "x")


def test_large_models_use_external_data(tmp_path, loaded, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1000)
    folder = export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path / "big")
    assert (folder / "backbone.onnx.data").stat().st_size > (folder / "backbone.onnx").stat().st_size
    assert read_manifest(folder).verification["passed"]
