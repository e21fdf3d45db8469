"""An int8 export made for TensorRT (`--target trt`: symmetric Q/DQ, fp16 float part) is a file for TensorRT: ONNX
Runtime refuses it in one line, under any backend name that would run it there (`onnx:int8`, the default, `auto`),
on the CLI and the Python API alike, before any engine is made. The export itself is made on the CPU; its manifest's
`extra.target` is checked like every field of a file the tool did not write in this run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dip_export.pipeline
from dip_export import DiPPipeline, cli
from dip_export.errors import DipError, UsageError
from dip_export.export import onnx_export, quantize
from dip_export.export.calibration import CalibrationSettings
from dip_export.export.manifest import read_manifest
from tests.test_hostile import RUN_SETTINGS, one_line, run

CALIB = CalibrationSettings(samples=2, steps=4, keep_steps=2)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, ckpt: Path) -> Iterator[dict[str, Path]]:
    """The tiny checkpoint's int8 export for TensorRT, made by `dip-export onnx` on the CPU (a small calibration), and
    the fp32 export it was made from."""
    base = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXPORT_ROOT", base / "engines")
        mp.setattr(quantize, "EXPORT_ROOT", base / "engines")
        mp.setattr(quantize, "CalibrationSettings", lambda: CALIB)
        code, err = run(cli.export_main, "onnx", ckpt, "--precision", "int8", "--target", "trt", "--output-dir", base / "i8t")
        assert code == 0, err
        (fp32,) = (base / "engines").glob("*-fp32")  # the export it was quantized from, made on the way
        yield {"trt": base / "i8t", "fp32": fp32}


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if an engine over an export folder would be made."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an engine was made")

    monkeypatch.setattr(dip_export.pipeline, "open_export", refuse)


def test_the_export_for_tensorrt_is_made_on_the_cpu_and_says_its_target(exports: dict[str, Path]) -> None:
    made = read_manifest(exports["trt"])
    assert made.precision == "int8" and made.target == "trt" and made.extra["target"] == "trt"
    assert read_manifest(exports["fp32"]).target == "onnx"  # no target recorded: ONNX Runtime's


@pytest.mark.parametrize("backend", [["--backend", "onnx:int8"], [], ["--backend", "auto"]], ids=["onnx:int8", "default", "auto"])
def test_cli_refuses_a_tensorrt_export_on_onnx_runtime(exports: dict[str, Path], tmp_path: Path, no_engine: None,
                                                        backend: list[str]) -> None:  # fmt: skip
    out = tmp_path / "i2.npz"
    code, err = run(cli.sample_main, exports["trt"], "--steps", "2", "--num-samples", "1", *backend, "--device", "cpu",
                    "--out", out)  # fmt: skip
    one_line(code, err, 2, str(exports["trt"]), "made for TensorRT (--target trt)", "use --backend trt:int8")
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("backend", ["onnx:int8", None, "auto"])
def test_api_refuses_a_tensorrt_export_on_onnx_runtime_at_load(exports: dict[str, Path], no_engine: None,
                                                               backend: str | None) -> None:  # fmt: skip
    with pytest.raises(UsageError, match=r"made for TensorRT \(--target trt\): use --backend trt:int8"):
        DiPPipeline.load(exports["trt"], backend=backend, device="cpu")


def test_tensorrt_backend_is_still_offered_for_it(exports: dict[str, Path]) -> None:
    """trt:int8 is what the message points to: on a machine without CUDA it is refused for that reason, not the target."""
    with pytest.raises(DipError) as refused:
        DiPPipeline.load(exports["trt"], backend="trt:int8", device="cpu")
    assert "TensorRT" in str(refused.value) and "--target trt" not in str(refused.value)


def test_an_export_made_for_onnx_runtime_still_runs_there(exports: dict[str, Path], tmp_path: Path) -> None:
    code, err = run(cli.sample_main, exports["fp32"], "--steps", "2", "--num-samples", "1", "--device", "cpu",
                    "--out", tmp_path / "ok.npz")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "ok.npz").is_file()


def _with_target(folder: Path, dest: Path, target: object) -> Path:
    copy = Path(shutil.copytree(folder, dest, dirs_exist_ok=True))
    path = copy / "manifest.json"
    data = json.loads(path.read_text())
    data["extra"]["target"] = target
    path.write_text(json.dumps(data))
    return copy


@RUN_SETTINGS
@given(target=st.one_of(st.text(max_size=12).filter(lambda t: t not in ("onnx", "trt")), st.integers(), st.none(),
                        st.lists(st.just("trt"), max_size=2), st.booleans()))  # fmt: skip
def test_a_manifest_target_no_version_writes_is_refused_naming_the_file(
    exports: dict[str, Path], tmp_path: Path, target: object
) -> None:
    folder = _with_target(exports["trt"], tmp_path / "bad", target)
    code, err = run(cli.sample_main, folder, "--steps", "2", "--num-samples", "1", "--device", "cpu",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 1, str(folder / "manifest.json"), "extra.target")
    if isinstance(target, str) and target:
        assert repr(target) not in err.split("manifest.json", 1)[1]  # the value is described, never echoed


def test_a_float_export_labelled_for_tensorrt_is_refused_naming_the_file(exports: dict[str, Path], tmp_path: Path) -> None:
    """--target trt shapes int8 and fp8 graphs only: an fp32 manifest that claims it is not one the tool wrote."""
    folder = _with_target(exports["fp32"], tmp_path / "relabelled", "trt")
    code, err = run(cli.sample_main, folder, "--steps", "2", "--num-samples", "1", "--device", "cpu",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 1, str(folder / "manifest.json"), "extra.target trt goes with an int8 or fp8 export")


@pytest.mark.parametrize("label", ["onnx", "removed"])
def test_the_target_is_read_off_the_graph_not_only_the_label(exports: dict[str, Path], tmp_path: Path, label: str) -> None:
    """A TensorRT int8 graph (fp16 float part) relabelled for ONNX Runtime, or with its label removed (which reads as
    onnx), is refused naming the graph, on the CLI and the API: the label and the graph must agree."""
    folder = Path(shutil.copytree(exports["trt"], tmp_path / "relabelled"))
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    if label == "removed":
        del data["extra"]["target"]
    else:
        data["extra"]["target"] = label
    path.write_text(json.dumps(data))
    code, err = run(cli.sample_main, folder, "--steps", "2", "--num-samples", "1", "--device", "cpu",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 1, str(folder), "labelled for ONNX Runtime (--target onnx) but the graph is shaped for TensorRT")
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(DipError, match="the graph is shaped for TensorRT"):
        DiPPipeline.load(folder, device="cpu")
