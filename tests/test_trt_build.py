"""Everything around the TensorRT build that runs without a GPU; the build itself needs one."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from dip_export.cli import export_app
from dip_export.config import DiPConfig
from dip_export.errors import ExportError, UsageError
from dip_export.export.manifest import read_manifest
from dip_export.export.spec import io_specs
from dip_export.export.trt_build import (
    BatchProfile,
    build_trt,
    compare_outputs,
    engine_file,
    engine_matches,
    find_export,
    gpu_identity,
    profile_shapes,
)
from dip_export.runtime.ort_engine import make_session
from dip_export.runtime.trt_engine import TrtEngine, aligned_empty
from tests.fakes import tensorrt as fake_tensorrt
from tests.fakes.cuda import FakeCuda

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
    name = engine_file("backbone", "int8", "10.13.0", "NVIDIA H100 80GB HBM3", BatchProfile(1, 2, 8), 5)
    assert name == "backbone.int8.b1-2-8.o5.trt10.13.0.nvidia-h100-80gb-hbm3.plan"
    entry = {"trt_version": "10.13.0", "gpu": "NVIDIA H100 80GB HBM3"}
    assert engine_matches(entry, "10.13.0", "NVIDIA H100 80GB HBM3")
    assert not engine_matches(entry, "11.0.0", "NVIDIA H100 80GB HBM3")
    assert not engine_matches(entry, "10.13.0", "NVIDIA A100-SXM4-80GB")


def test_find_export_takes_the_most_recent(tmp_path):
    import os

    with pytest.raises(UsageError, match="no export"):
        find_export(tmp_path, None)
    for i, name in enumerate(("b-32x32-fp16", "a-32x32-fp32", "c-32x32-int8")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({}))
        os.utime(tmp_path / name / "manifest.json", ns=(10**18 + i * 10**9, 10**18 + [1, 2, 0][i] * 10**9))
    assert find_export(tmp_path, None).name == "a-32x32-fp32"


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


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--opt-level", "9"], "--opt-level"), (["--opt-level", "-1"], "--opt-level"), (["--batch", "4,2,1"], "--batch")],
)
def test_bad_build_options_are_named_before_a_missing_tensorrt(tmp_path, monkeypatch, args, words):
    import dip_export.runtime.catalog as catalog

    monkeypatch.setattr(catalog, "check_available", lambda *a, **k: pytest.fail("package checked before the options"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(export_app, ["trt", *args])
    assert result.exit_code == 2 and words in result.output and "tensorrt" not in result.output.lower()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("level", [9, -1, 3.0, True, "3"])
def test_build_trt_checks_its_level_before_importing_tensorrt(tmp_path, monkeypatch, level):
    import dip_export.export.trt_build as trt_build

    monkeypatch.setattr(trt_build, "_tensorrt", lambda: pytest.fail("tensorrt imported before the options"))
    with pytest.raises(UsageError, match="--opt-level"):
        build_trt(precision="fp16", output_dir=tmp_path, root=tmp_path, profile=BatchProfile(), timing_cache=None,
                  opt_level=level, console=Console(quiet=True))  # fmt: skip


def test_two_precisions_at_once_are_refused():
    result = runner.invoke(export_app, ["trt", "--fp16", "--int8"])
    assert result.exit_code == 2 and "choose one precision" in result.output


# ---- builds and runs against the fake tensorrt module (tests/fakes), which enforces the real API's rules

SIZE = (32, 64)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory, golden):
    from dip_export.checkpoint import LoadedModel, build_model
    from dip_export.export.onnx_export import export_onnx

    loaded = LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")
    return export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path_factory.mktemp("trt") / "fp32")


@pytest.fixture()
def export_copy(fp32_export, tmp_path):
    import shutil

    return Path(shutil.copytree(fp32_export, tmp_path / "export"))


@pytest.fixture()
def gpu(monkeypatch):
    return FakeCuda().install(monkeypatch)


def _build(folder, profile="1,1,8", opt_level=3, cache=None, precision="fp32"):
    return build_trt(precision=precision, output_dir=folder, root=folder.parent, profile=BatchProfile.parse(profile),
                     timing_cache=cache, opt_level=opt_level, console=Console(quiet=True), device="cpu")  # fmt: skip


def test_sampling_reuses_any_engine_whose_profile_covers_the_batch(export_copy, gpu, monkeypatch):
    """A user's `--batch 1,4,16 --opt-level 5` engines serve a pipeline asking 1,2,8 at level 3: no rebuild, no overwrite."""
    trt = fake_tensorrt.install(monkeypatch)
    user = _build(export_copy, "1,4,16", opt_level=5)
    files = {f: (export_copy / f).read_bytes() for f in user["files"].values()}
    asked = BatchProfile(1, 2, 8)
    again = build_trt(precision="fp32", output_dir=export_copy, root=export_copy.parent, profile=asked, timing_cache=None,
                      opt_level=3, console=Console(quiet=True), device="cpu", covering=True)  # fmt: skip
    assert again == user and len(trt.built) == 2
    assert all((export_copy / f).read_bytes() == data for f, data in files.items())
    bigger = build_trt(precision="fp32", output_dir=export_copy, root=export_copy.parent, profile=BatchProfile(1, 2, 32),
                       timing_cache=None, opt_level=3, console=Console(quiet=True), device="cpu", covering=True)  # fmt: skip
    assert len(trt.built) == 4 and set(bigger["files"].values()).isdisjoint(files)  # new names: the user's plans stay
    assert all((export_copy / f).read_bytes() == data for f, data in files.items())


def test_engines_are_rebuilt_for_another_batch_profile(export_copy, gpu, monkeypatch):
    """A batch-1 build (max 16 rows) must not be reused for batch-16 CFG (32 rows); the same ask is reused."""
    trt = fake_tensorrt.install(monkeypatch)
    first = _build(export_copy, "1,1,8")
    assert first["profile"]["network_rows"] == [1, 2, 16] and len(trt.built) == 2
    second = _build(export_copy, "1,16,16")
    assert second["profile"]["network_rows"] == [1, 32, 32] and len(trt.built) == 4
    assert read_manifest(export_copy).engines["fp32"]["profile"]["max"] == 16
    _build(export_copy, "1,16,16")
    assert len(trt.built) == 4  # reused
    _build(export_copy, "1,16,16", opt_level=5)
    assert len(trt.built) == 6 and trt.built[-1]["opt_level"] == 5
    entry = {"trt_version": "10.13.0", "gpu": "g", "profile": {"network_rows": [1, 2, 16]}, "opt_level": 3}
    assert engine_matches(entry, "10.13.0", "g", profile=BatchProfile(1, 1, 8), opt_level=3)
    assert not engine_matches(entry, "10.13.0", "g", profile=BatchProfile(1, 16, 16), opt_level=3)


def test_timing_cache_from_another_gpu_starts_a_new_one(export_copy, gpu, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    cache = export_copy / "timing.cache"
    cache.write_bytes(fake_tensorrt.CACHE_MAGIC + b'{"owner": "10.13.0|NVIDIA A100", "entries": 7}')
    entry = _build(export_copy, cache=cache)
    assert set(entry["files"]) == {"backbone", "detailer"}
    saved = json.loads(cache.read_bytes()[len(fake_tensorrt.CACHE_MAGIC) :])
    assert saved["owner"] == f"10.13.0|{gpu.get_device_name()}" and saved["entries"] == 2  # a new cache, both builds


@pytest.mark.parametrize("kind", ["user file", "symlink"])
def test_a_timing_cache_path_holding_a_users_file_is_refused_before_any_build(export_copy, gpu, monkeypatch, tmp_path,
                                                                             kind):  # fmt: skip
    from dip_export.errors import UsageError

    trt = fake_tensorrt.install(monkeypatch)
    mine = tmp_path / "notes.txt"
    mine.write_bytes(b"my notes")
    cache = mine if kind == "user file" else tmp_path / "timing.cache"
    if kind == "symlink":
        cache.symlink_to(fake_tensorrt_cache(tmp_path / "real.cache"))
    before = cache.read_bytes()
    with pytest.raises(UsageError, match="refusing to replace" if kind == "user file" else "symlink"):
        _build(export_copy, cache=cache)
    assert cache.read_bytes() == before and trt.built == [] and mine.read_bytes() == b"my notes"


def fake_tensorrt_cache(path):
    path.write_bytes(fake_tensorrt.CACHE_MAGIC + b'{"owner": "10.13.0|NVIDIA A100", "entries": 7}')
    return path


def test_a_build_that_returns_none_is_an_error_and_writes_nothing(export_copy, gpu, monkeypatch):
    trt = fake_tensorrt.install(monkeypatch)
    trt.fail_builds = True
    before = sorted(p.name for p in export_copy.iterdir())
    with pytest.raises(ExportError, match="failed to build"):
        _build(export_copy)
    assert sorted(p.name for p in export_copy.iterdir()) == before


def test_engines_that_disagree_with_onnx_runtime_are_refused(export_copy, gpu, monkeypatch):
    trt = fake_tensorrt.install(monkeypatch)
    trt.corrupt_outputs = True
    before = sorted(p.name for p in export_copy.iterdir())
    with pytest.raises(ExportError, match="does not match ONNX Runtime") as err:
        _build(export_copy)
    assert sorted(p.name for p in export_copy.iterdir() if p.name != "verify-fp32") == before  # no engine left
    assert "fp32" not in read_manifest(export_copy).engines
    command_file = export_copy / "verify-fp32" / "polygraphy.sh"
    assert str(command_file) in str(err.value) and len(str(err.value).splitlines()) == 1
    commands = [line for line in command_file.read_text().splitlines() if line.startswith("polygraphy run")]
    assert len(commands) == 2 and all("--onnx-outputs mark all --trt-outputs mark all" in c for c in commands)
    assert all("--atol 0.001 --rtol 0.001" in c and "--tf32" not in c and "--onnxrt" in c for c in commands)
    assert "'x:[1,3,32,64]' 't:[1]' 'y:[1]' --trt-opt-shapes 'x:[2,3,32,64]'" in commands[0]
    assert str((export_copy / "detailer.onnx").resolve()) in commands[1]
    import runpy

    feeds = list(runpy.run_path(str(export_copy / "verify-fp32" / "detailer_loader.py"))["load_data"]())
    assert [f["tokens"].shape[0] for f in feeds] == [1, 2] and set(feeds[0]) == {"x", "tokens"}


@pytest.mark.parametrize("version", ["10.13.0", "11.0.0"])
def test_strongly_typed_build_on_10_and_11(export_copy, gpu, monkeypatch, version):
    """11.x has no precision builder flags; 10.x needs STRONGLY_TYPED asked for. Verified runs at both profile ends."""
    trt = fake_tensorrt.install(monkeypatch, version)
    entry = _build(export_copy, "1,2,4")
    assert all(b["strongly_typed"] for b in trt.built)
    assert [r["rows"] for r in entry["verification"]["rows"]] == [1, 1, 2, 2]
    assert entry["verification"]["passed"] and entry["trt_version"] == version
    if version.startswith("11"):
        with pytest.raises(AttributeError):
            _ = trt.BuilderFlag.FP16


def test_compare_outputs_lists_every_mismatch():
    ok = np.ones((2, 3))
    report = compare_outputs([("a", 2, ok, ok), ("b", 2, ok * 1.001, ok)], 1e-2)
    assert report["passed"] and [r["output"] for r in report["rows"]] == ["a", "b"]
    with pytest.raises(ExportError) as err:
        compare_outputs([("a", 1, ok * 2, ok), ("b", 1, np.full((2, 3), np.nan), ok), ("c", 1, ok[:1], ok)], 1e-2)
    message = str(err.value)
    assert "a at 1 rows: relative error 1" in message and "b at 1 rows: relative error inf" in message
    assert "c at 1 rows: shape (1, 3) != (2, 3)" in message


def test_engines_belong_to_the_device_asked_for(export_copy, monkeypatch):
    """On cuda:1 the identity and the deserialisation are cuda:1's, whatever the current device."""
    gpu = FakeCuda(names=("NVIDIA A100", "NVIDIA H100")).install(monkeypatch)
    trt = fake_tensorrt.install(monkeypatch)
    assert gpu_identity(torch.device("cuda:1"))[0] == "NVIDIA H100" and gpu.device_index == 0
    with gpu.device(1):
        entry = _build(export_copy)  # built while cuda:1 is current: the plans are the H100's
    trt.deserialized_on.clear()
    specs = io_specs(read_manifest(export_copy).config, *SIZE)
    TrtEngine.from_entry(export_copy, entry, specs, "cuda:1")
    assert trt.deserialized_on == [1, 1]
    with pytest.raises(ExportError, match="NVIDIA A100"):
        TrtEngine.from_entry(export_copy, entry, specs, "cuda:0")


def test_rows_outside_the_profile_name_the_batch_and_the_profile(export_copy, gpu, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    entry = _build(export_copy, "2,2,4")
    engine = TrtEngine.from_entry(export_copy, entry, io_specs(read_manifest(export_copy).config, *SIZE), "cpu")
    x, t, y = torch.zeros(1, 3, *SIZE), torch.zeros(1), torch.zeros(1, dtype=torch.int64)
    with pytest.raises(UsageError, match=r"1 network rows .*2\.\.8 rows"):
        engine.backbone(x, t, y)
    with pytest.raises(UsageError, match=r"1 network rows do not fit the backbone engine's profile \(2\.\.8"):
        engine._plans["backbone"](x, t, y)  # the context itself refuses the shape (set_input_shape is False)


def test_inputs_in_the_right_form_are_bound_in_place(export_copy, gpu, monkeypatch):
    trt = fake_tensorrt.install(monkeypatch)
    entry = _build(export_copy)
    engine = TrtEngine.from_entry(export_copy, entry, io_specs(read_manifest(export_copy).config, *SIZE), "cpu")
    x, t, y = aligned_empty((2, 3, *SIZE), torch.float32, torch.device("cpu")).normal_(), torch.rand(2), torch.tensor([0, 5])
    tokens = engine.backbone(x, t, y)
    v = engine.detailer(x, tokens)
    plan = engine._plans["detailer"]
    assert not plan.staging and plan.bound[(2, None)]["x"] == x.data_ptr()
    assert plan.bound[(2, None)]["tokens"] == tokens.data_ptr()
    engine.backbone(x.double(), t, y.int())  # another dtype is staged, once per row count
    assert {"x", "y"} <= {name for _, name in engine._plans["backbone"].staging}
    unaligned = torch.empty(x.numel() + 1)[1:].view(x.shape).copy_(x)  # 4 bytes past an aligned address: staged
    engine.detailer(unaligned, tokens)
    assert (2, "x") in plan.staging and plan.bound[(2, None)]["x"] == plan.staging[(2, "x")].data_ptr()
    assert 0 not in trt.streams  # never the legacy default stream
    torch.testing.assert_close(v, torch.from_numpy(make_session(export_copy / "detailer.onnx").run(
        None, {"x": x.numpy(), "tokens": tokens.numpy()})[0]))  # fmt: skip


@pytest.mark.parametrize("stage", ["second build", "verification"])
def test_an_interrupt_leaves_no_unlisted_engine_and_the_export_stays_replaceable(export_copy, gpu, monkeypatch, stage):
    """Ctrl-C after one engine is written: it is removed, and the folder still proves it is this tool's export."""
    from dip_export.export import trt_build
    from dip_export.export.manifest import ownership_problem

    fake_tensorrt.install(monkeypatch)
    before = sorted(p.name for p in export_copy.iterdir())
    real_build, calls = trt_build._build_role, []

    def build_role(*args, **kwargs):
        calls.append(args[2])
        if stage == "second build" and len(calls) == 2:
            raise KeyboardInterrupt
        return real_build(*args, **kwargs)

    def verify(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trt_build, "_build_role", build_role)
    if stage == "verification":
        monkeypatch.setattr(trt_build, "verify_engines", verify)
    with pytest.raises(KeyboardInterrupt):
        _build(export_copy)
    assert calls[:1] == ["backbone"]
    assert sorted(p.name for p in export_copy.iterdir()) == before
    assert ownership_problem(export_copy) is None


def test_a_failed_verification_leaves_an_export_that_can_still_be_replaced(export_copy, gpu, monkeypatch):
    from dip_export.export.manifest import ownership_problem

    trt = fake_tensorrt.install(monkeypatch)
    trt.corrupt_outputs = True
    with pytest.raises(ExportError):
        _build(export_copy)
    assert ownership_problem(export_copy) is None, "the polygraphy files are the tool's own"


def test_a_build_lists_only_what_it_wrote_so_a_users_file_is_never_adopted(export_copy, gpu, monkeypatch):
    """A user's note in an export folder stays unlisted after engines are built: the folder is then not replaced."""
    from dip_export.export.manifest import ownership_problem

    fake_tensorrt.install(monkeypatch)
    (export_copy / "notes.txt").write_text("mine")
    entry = _build(export_copy)
    listed = read_manifest(export_copy).contents
    assert set(entry["files"].values()) <= set(listed) and "notes.txt" not in listed
    assert "notes.txt" in ownership_problem(export_copy)
    (export_copy / "notes.txt").unlink()
    assert ownership_problem(export_copy) is None  # the engines themselves are listed with their hashes


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 4096))
def test_a_timing_cache_is_read_only_at_a_timing_caches_size(tmp_path, monkeypatch, size):
    """A file past a timing cache's size (a user's large file named by mistake) is refused unread, in one line."""
    from dip_export.export import trt_build

    monkeypatch.setattr(trt_build, "MAX_TIMING_CACHE", 1024)
    path = tmp_path / "cache.bin"
    with path.open("wb") as f:
        f.truncate(size)
    if size > 1024:
        with pytest.raises(UsageError, match=f"holds {size} bytes, more than a timing cache") as err:
            trt_build._timing_cache_bytes(path)
        assert "\n" not in str(err.value)
    else:
        assert trt_build._timing_cache_bytes(path) == bytes(size)


@pytest.mark.parametrize(("flag", "capability", "words"), [("--fp8", (7, 5), "fp8 needs compute capability 8.9"),
                                                           ("--fp8", (8, 6), "fp8 needs compute capability 8.9"),
                                                           ("--bf16", (7, 5), "bf16 needs compute capability 8.0")])  # fmt: skip
def test_a_precision_this_gpu_cannot_build_is_refused_before_the_export_from_a_checkpoint(tmp_path, monkeypatch, flag,
                                                                                         capability, words):  # fmt: skip
    """From a checkpoint SOURCE, the export it builds from takes minutes: the GPU's precision is checked first."""
    import dip_export.export.trt_build as trt_build
    from dip_export.checkpoint import DEMO_CHECKPOINT

    FakeCuda(capability=capability).install(monkeypatch)
    fake_tensorrt.install(monkeypatch)
    monkeypatch.setattr(trt_build, "export_for_source", lambda *a, **k: pytest.fail("exported before the precision check"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(export_app, ["trt", flag, str(DEMO_CHECKPOINT)])
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "engines").exists()
