"""Everything around the TensorRT build that runs without a GPU; the build itself needs one."""

import json

import pytest
from typer.testing import CliRunner

from dip_export.cli import export_app
from dip_export.config import DiPConfig
from dip_export.errors import UsageError
from dip_export.export.spec import io_specs
from dip_export.trt_build import BatchProfile, engine_file, engine_matches, find_export, profile_shapes

runner = CliRunner()


def test_profile_covers_the_cfg_pair():
    spec = io_specs(DiPConfig(hidden_size=96, num_heads=4, depth=1, num_classes=5), 32, 64)
    shapes = profile_shapes(spec["backbone"], BatchProfile.parse("1,2,4"))
    assert shapes["x"] == ((1, 3, 32, 64), (4, 3, 32, 64), (8, 3, 32, 64))
    assert shapes["y"] == ((1,), (4,), (8,))
    det = profile_shapes(spec["detailer"], BatchProfile(1, 1, 8))
    assert det["tokens"] == ((1, 8, 96), (2, 8, 96), (16, 8, 96))


@pytest.mark.parametrize("text", ["1,2", "0,1,2", "4,2,8", "a,b,c"])
def test_bad_profiles(text):
    with pytest.raises(UsageError):
        BatchProfile.parse(text)


def test_engine_names_carry_version_gpu_and_precision():
    name = engine_file("backbone", "int8", "10.13.0", "NVIDIA H100 80GB HBM3")
    assert name == "backbone.int8.trt10.13.0.nvidia-h100-80gb-hbm3.plan"
    entry = {"trt_version": "10.13.0", "gpu": "NVIDIA H100 80GB HBM3"}
    assert engine_matches(entry, "10.13.0", "NVIDIA H100 80GB HBM3")
    assert not engine_matches(entry, "11.0.0", "NVIDIA H100 80GB HBM3")
    assert not engine_matches(entry, "10.13.0", "NVIDIA A100-SXM4-80GB")


def test_find_export_picks_the_only_one_or_lists_them(tmp_path):
    with pytest.raises(UsageError, match="no export"):
        find_export(tmp_path, None)
    for name in ("a-32x32-fp32", "b-32x32-fp16"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({}))
    with pytest.raises(UsageError, match="a-32x32-fp32, b-32x32-fp16"):
        find_export(tmp_path, None)


@pytest.mark.parametrize("flag", ["--fp16", "--int8"])
def test_trt_without_tensorrt_or_gpu_refuses_cleanly(tmp_path, monkeypatch, flag):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)
    export = tmp_path / "engines" / "m-32x32-fp32"
    export.mkdir(parents=True)
    (export / "manifest.json").write_text("{}")
    before = sorted(p.name for p in export.iterdir())
    result = runner.invoke(export_app, ["trt", flag])
    assert result.exit_code != 0
    out = result.output.strip()
    assert "tensorrt is not installed" in out and "pip install -e '.[gpu]'" in out
    assert len(out.splitlines()) == 1 and "Traceback" not in out
    assert sorted(p.name for p in export.iterdir()) == before


def test_two_precisions_at_once_are_refused():
    result = runner.invoke(export_app, ["trt", "--fp16", "--int8"])
    assert result.exit_code == 2 and "choose one precision" in result.output
