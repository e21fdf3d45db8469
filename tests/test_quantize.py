"""Calibration from trajectories and the INT8 exports (ONNX Runtime CPU and TensorRT Q/DQ forms)."""

import numpy as np
import onnx
import pytest

from dip_export import calibration, quantize
from dip_export.calibration import CalibrationSettings, load_or_collect
from dip_export.checkpoint import LoadedModel, build_model
from dip_export.export import onnx_export
from dip_export.export.manifest import read_manifest
from dip_export.quantize import export_int8
from dip_export.runtime.ort_engine import make_session

SIZE = (32, 64)
CALIB = CalibrationSettings(samples=3, steps=6, keep_steps=4)


@pytest.fixture(scope="module")
def loaded(golden):
    return LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXPORT_ROOT", path)
        mp.setattr(quantize, "EXPORT_ROOT", path)
        yield path


def test_calibration_covers_the_trajectory_and_is_cached(tmp_path, loaded, monkeypatch):
    batches = load_or_collect(loaded, SIZE, CALIB, tmp_path)
    assert len(batches["backbone"]) == 4 and len(batches["detailer"]) == 4
    ts = [b["t"][0] for b in batches["backbone"]]
    assert ts[0] == 0.0 and ts[-1] == pytest.approx(5 / 6) and ts == sorted(ts)  # first to last step
    ys = np.concatenate([b["y"] for b in batches["backbone"]])
    assert (ys == loaded.config.null_class).any() and (ys < loaded.config.null_class).any()
    assert batches["detailer"][0]["tokens"].shape == (6, 8, 96)  # CFG pairs of 3 samples

    def fail(*args, **kwargs):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(calibration, "collect", fail)
    again = load_or_collect(loaded, SIZE, CALIB, tmp_path)
    np.testing.assert_array_equal(again["detailer"][2]["x"], batches["detailer"][2]["x"])


def _qdq(path):
    graph = onnx.load(str(path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    q = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    return graph, q, inits


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_int8_export_quantizes_the_heavy_ops_and_keeps_the_sensitive_ones(root, loaded, target):
    folder = export_int8(loaded, image_size=SIZE, target=target, calibration=CALIB)
    manifest = read_manifest(folder)
    assert manifest.precision == "int8" and manifest.verification["passed"]
    graph, q, inits = _qdq(folder / "detailer.onnx")
    assert q, "no QuantizeLinear nodes"
    zero_points = [inits[n.input[2]] for n in q if len(n.input) > 2 and n.input[2] in inits]
    if target == "trt":  # symmetric signed 8-bit, zero points 0
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    else:  # unsigned activations for ONNX Runtime's integer kernels
        assert any(z.dtype == np.uint8 for z in zero_points)
    dq_inputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = {n.name: n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")}
    assert not set(convs["/local_decoder/enc1/enc1.0/Conv"].input) & dq_inputs  # first conv in float
    assert not set(convs["/local_decoder/out_conv/Conv"].input) & dq_inputs  # last conv in float
    assert set(convs["/local_decoder/dec2/dec2.0/Conv"].input) & dq_inputs  # the rest quantized


def test_int8_sampling_stays_close_to_fp32(root, loaded, golden):
    folder = export_int8(loaded, image_size=SIZE, target="onnx", calibration=CALIB)
    feeds = {k: golden[k] for k in ("x", "t", "y")}
    tokens = make_session(folder / "backbone.onnx").run(None, feeds)[0]
    rms = np.sqrt(np.mean((tokens - golden["tokens"]) ** 2) / np.mean(golden["tokens"] ** 2))
    assert rms < 0.2
