"""Every run's memory is estimated from the config before the model is built or its tensors are read.

The weights are counted exactly from the config's arithmetic; a file declaring a huge model in a few
bytes, a run or an export too large for the limit, and a backend whose package is missing are each
refused in one line before any network exists (the constructor fails the test if it is called).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dip_export.checkpoint
from dip_export import DiPPipeline, cli
from dip_export.budget import (
    BudgetError,
    RunShape,
    check_work,
    export_bytes,
    parameter_count,
    run_bytes,
    trt_build_bytes,
    weight_bytes,
)
from dip_export.checkpoint import META_CONFIG, load_checkpoint
from dip_export.config import DiPConfig
from dip_export.errors import MissingDependencyError
from dip_export.model import DiP
from dip_export.runtime import catalog
from tests.test_hostile import one_line, run

# within every field's bound, yet about 206 G parameters: 770 GiB of fp32 weights
HUGE = {"hidden_size": 8192, "num_heads": 64, "depth": 256, "patch_size": 2, "num_classes": 10, "in_channels": 3,
        "detailer_width": 8, "image_size": 32}  # fmt: skip


@st.composite
def small_configs(draw: st.DrawFn) -> DiPConfig:
    heads = draw(st.integers(1, 4))
    return DiPConfig(
        hidden_size=heads * 4 * draw(st.integers(1, 4)), num_heads=heads, depth=draw(st.integers(1, 3)),
        patch_size=draw(st.sampled_from([2, 4, 8])), num_classes=draw(st.integers(1, 20)),
        in_channels=draw(st.integers(1, 4)), detailer_width=draw(st.integers(1, 8)),
    )  # fmt: skip


@settings(max_examples=40, deadline=None, derandomize=True)
@given(small_configs())
def test_weights_are_exact_for_the_config(config: DiPConfig) -> None:
    model = DiP(config)
    assert weight_bytes(config) == sum(p.numel() * p.element_size() for p in model.parameters())
    assert weight_bytes(config) == 4 * parameter_count(config)
    assert not list(model.buffers())  # no buffer the count would miss


@settings(max_examples=60, deadline=None, derandomize=True)
@given(small_configs(), st.integers(1, 64), st.integers(1, 16), st.integers(1, 16), st.integers(1, 100))
def test_estimates_grow_with_batch_size_and_images(config: DiPConfig, batch: int, h: int, w: int, kept: int) -> None:
    p = config.patch_size
    shape = RunShape(batch, h * p, w * p, kept)
    base = run_bytes(config, shape)
    assert base > weight_bytes(config)  # the weights are part of every run
    for bigger in (RunShape(batch + 1, h * p, w * p, kept), RunShape(batch, (h + 1) * p, w * p, kept),
                   RunShape(batch, h * p, (w + 1) * p, kept), RunShape(batch, h * p, w * p, kept + 1)):  # fmt: skip
        assert run_bytes(config, bigger) > base
    assert export_bytes(config, (h + 1) * p, w * p) > export_bytes(config, h * p, w * p) > weight_bytes(config)
    assert trt_build_bytes(config, h * p, w * p, batch + 1) > trt_build_bytes(config, h * p, w * p, batch)


def test_resident_weights_are_not_counted_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    from dip_export.budget import check_run

    config, shape = DiPConfig(hidden_size=64, num_heads=4, depth=2, patch_size=4), RunShape(2, 32, 32)
    monkeypatch.setenv("DIP_MEMORY_LIMIT", str(run_bytes(config, shape) - 1))  # the weights are already taken off
    check_run(config, shape, resident=True)
    with pytest.raises(BudgetError):
        check_run(config, shape)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(small_configs(), st.sampled_from(["depth", "hidden_size", "num_classes", "detailer_width"]))
def test_weights_grow_with_the_architecture(config: DiPConfig, field: str) -> None:
    step = config.num_heads * 4 if field == "hidden_size" else 1
    bigger = DiPConfig(**{**config.to_dict(), field: getattr(config, field) + step})
    assert weight_bytes(bigger) > weight_bytes(config)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 10_000), st.integers(1, 64))
def test_work_refusal_is_monotone_in_steps(steps: int, images: int) -> None:
    def refused(n: int) -> bool:
        try:
            check_work([n], images=images)
        except BudgetError:
            return True
        return False

    assert refused(steps) <= refused(steps + 1)  # once refused, more steps stay refused


# ---------------------------------------------------------------- nothing is built before the check


@pytest.fixture
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a network or reading a safetensors file's tensors fails the test."""
    import safetensors

    monkeypatch.setattr(dip_export.checkpoint, "DiP", lambda *a, **k: pytest.fail("a network was built"))
    monkeypatch.setattr(safetensors, "safe_open", lambda *a, **k: pytest.fail("tensors were read"))


def _tiny_safetensors(path: Path, config: dict[str, object]) -> Path:
    """A file of a few hundred bytes whose header declares `config` and holds one 4-byte tensor."""
    header = {"__metadata__": {META_CONFIG: json.dumps(config)},
              "s_embedder.proj.weight": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}  # fmt: skip
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * 4)
    return path


def test_api_refuses_a_huge_declared_model_from_the_header(tmp_path: Path, nothing_built: None) -> None:
    path = _tiny_safetensors(tmp_path / "huge.safetensors", HUGE)
    assert path.stat().st_size < 1000
    with pytest.raises(BudgetError, match=r"huge\.safetensors: a DiP of hidden 8192, depth 256 .* needs about \d+\.\d GiB"):
        DiPPipeline.load(path, device="cpu")
    with pytest.raises(BudgetError, match="depth 256"):
        load_checkpoint(path)


def test_a_model_beyond_the_bounds_is_refused_with_its_figure(tmp_path: Path, nothing_built: None) -> None:
    path = _tiny_safetensors(tmp_path / "vast.safetensors", {**HUGE, "hidden_size": 65536, "num_heads": 512, "depth": 1000})
    with pytest.raises(dip_export.errors.CheckpointError,
                       match=r"vast\.safetensors: bad stored config .*hidden_size.*; a DiP of hidden 65536, depth 1000 "
                             r".* would need about \d+\.\d GiB, more than"):  # fmt: skip
        DiPPipeline.load(path, device="cpu")
    code, err = run(cli.sample_main, path, "--out", tmp_path / "o.npz", "--device", "cpu")
    one_line(code, err, 1, "hidden 65536, depth 1000", "would need about")
    odd = _tiny_safetensors(tmp_path / "odd.safetensors", {**HUGE, "hidden_size": 65536, "num_heads": 3})
    with pytest.raises(dip_export.errors.CheckpointError, match=r"bad stored config .*\)$"):  # not a DiP at all: the bound
        DiPPipeline.load(odd, device="cpu")


def test_a_header_declaring_more_than_the_file_holds_is_refused(tmp_path: Path, nothing_built: None) -> None:
    path = tmp_path / "liar.safetensors"
    raw = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\x00" * 4)
    with pytest.raises(BudgetError, match=r"declares 4096\.0 GiB of tensors"):
        load_checkpoint(path)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.integers(0, 1 << 12), max_size=3), min_size=1, max_size=4), st.sampled_from(["F32", "BF16", "U8"]))
def test_a_header_is_refused_exactly_when_it_declares_more_than_it_holds(
    tmp_path_factory: pytest.TempPathFactory, shapes: list[list[int]], dtype: str
) -> None:
    from dip_export.checkpoint import SAFETENSORS_SIZES, safetensors_header

    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    header = {f"t{i}": {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]} for i, shape in enumerate(shapes)}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    declared = sum(SAFETENSORS_SIZES[dtype] * int(torch.tensor(shape, dtype=torch.int64).prod()) for shape in shapes)
    if declared > path.stat().st_size + (1 << 20):
        with pytest.raises(BudgetError, match="declares"):
            safetensors_header(path)
    else:
        assert {k: v.shape for k, v in safetensors_header(path)[0].items()} == {k: tuple(v["shape"]) for k, v in header.items()}


@pytest.mark.parametrize("dtype", ["\x1b[31mF99", "SECRET", 5, ["F32"], None])
def test_an_unknown_dtype_is_named_by_its_entry_not_echoed(tmp_path: Path, dtype) -> None:
    path = tmp_path / "dtype.safetensors"
    raw = json.dumps({"SECRET-NAME": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    refused = r"header entry 1 has (no dtype|a dtype DiP weights are not read from)"
    with pytest.raises(dip_export.errors.CheckpointError, match=refused) as err:
        load_checkpoint(path)
    assert "SECRET" not in str(err.value) and "\x1b" not in str(err.value)


def test_a_broken_header_is_named_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    raw = json.dumps({"SECRET-NAME": {"dtype": "F32", "shape": "x"}}).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(dip_export.errors.CheckpointError, match="header entry 1 has no valid shape") as err:
        load_checkpoint(path)
    assert "SECRET" not in str(err.value)


def test_a_pickle_declaring_a_huge_model_is_refused_before_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.pt"
    torch.save({META_CONFIG: HUGE, "state_dict": {"s_embedder.proj.weight": torch.zeros(1, 1)}}, path)
    monkeypatch.setattr(dip_export.checkpoint, "DiP", lambda *a, **k: pytest.fail("a network was built"))
    with pytest.raises(BudgetError, match="hidden 8192, depth 256"):
        DiPPipeline.load(path, device="cpu")


def test_cli_refuses_the_huge_declared_model_in_one_line(tmp_path: Path, nothing_built: None) -> None:
    path = _tiny_safetensors(tmp_path / "huge.safetensors", HUGE)
    code, err = run(cli.sample_main, path, "--out", tmp_path / "o.npz", "--device", "cpu")
    one_line(code, err, 1, "hidden 8192, depth 256", "needs about", "GiB, more than the")
    code, err = run(cli.export_main, "onnx", path, "--output-dir", tmp_path / "x")
    one_line(code, err, 1, "depth 256", "needs about")
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "x").exists()


def test_a_run_too_large_is_refused_before_the_preset_is_built(nothing_built: None) -> None:
    with pytest.raises(BudgetError, match="batch 4096 at 2048x2048"):
        DiPPipeline.load(preset="dip-s-16", batch_size=4096, image_size=2048, num_samples=4096, device="cpu")


def test_the_images_kept_are_counted_at_load(monkeypatch: pytest.MonkeyPatch, nothing_built: None) -> None:
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "64M")
    with pytest.raises(BudgetError, match="keeping 1000000 images"):
        DiPPipeline.load(num_samples=1_000_000, batch_size=1, device="cpu")


def test_cli_sample_counts_its_images_before_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       nothing_built: None) -> None:  # fmt: skip
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "64M")
    code, err = run(cli.sample_main, "--num-samples", "1000000", "--batch-size", "1", "--device", "cpu",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 2, "keeping 1000000 images", "needs about")


def test_export_is_budgeted_before_the_model_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      nothing_built: None) -> None:  # fmt: skip
    xl = dip_export.config.get_preset("dip-xl-16")
    limit = (weight_bytes(xl) * 3) // 2  # a sampling run's weights fit; an export's copies do not
    monkeypatch.setenv("DIP_MEMORY_LIMIT", str(limit))
    code, err = run(cli.export_main, "onnx", "--preset", "dip-xl-16", "--output-dir", tmp_path / "x")
    one_line(code, err, 1, "exporting a DiP of hidden 1152, depth 26", "at 256x256 needs about")


@pytest.mark.parametrize(("args", "words"), [
    (["schedule", "--output", "fit.safetensors", "--batch", "5000"], "--batch"),
    (["schedule", "--output", "fit.safetensors", "--batch", "0"], "--batch"),
    (["trt", "--batch-profile", "1,1,100000"], "MAX <= 4096"),
])  # fmt: skip
def test_export_batches_are_bounded_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nothing_built: None,
                                                    args: list[str], words: str) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.export_main, *args)
    one_line(code, err, 2, words)


def test_schedule_batch_is_budgeted_before_the_model_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              nothing_built: None) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "16M")
    code, err = run(cli.export_main, "schedule", "--output", "fit.safetensors", "--batch", "4096")
    one_line(code, err, 2, "sampling batch 64", "needs about")  # 64 training images: no batch holds more


# ---------------------------------------------------------------- backend packages, up front


@pytest.fixture
def no_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    real = catalog.installed
    monkeypatch.setattr(catalog, "installed", lambda module: module != "onnxruntime" and real(module))


def test_catalog_names_the_missing_package(no_onnxruntime: None) -> None:
    reason = catalog.unavailable_reason("onnx")
    assert reason is not None and "onnxruntime is not installed: backend onnx needs it; pip install onnxruntime" in reason
    assert catalog.unavailable_reason("torch") is None
    assert catalog.unavailable_reason("trt", "cpu") == "TensorRT needs a CUDA GPU"  # the device is said first
    with pytest.raises(MissingDependencyError, match="backend onnx needs it"):
        catalog.check_available("onnx")


def test_api_refuses_a_backend_without_its_package_before_the_model(no_onnxruntime: None, nothing_built: None) -> None:
    with pytest.raises(MissingDependencyError, match="onnxruntime is not installed: backend onnx"):
        DiPPipeline.load(backend="onnx", device="cpu")


def test_cli_refuses_a_backend_without_its_package_in_one_line(tmp_path: Path, no_onnxruntime: None,
                                                               nothing_built: None) -> None:  # fmt: skip
    code, err = run(cli.sample_main, "--backend", "onnx:int8", "--device", "cpu", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "onnxruntime is not installed", "backend onnx")
    code, err = run(cli.export_main, "onnx", "--output-dir", tmp_path / "x")
    one_line(code, err, 1, "onnxruntime is not installed", "dip-export onnx")


def test_bench_rows_and_auto_read_the_same_check(no_onnxruntime: None) -> None:
    from dip_export.measure.autobackend import candidates
    from dip_export.runtime.backends import BackendSpec, unavailable_reason

    cpu = torch.device("cpu")
    assert "backend onnx needs it" in (unavailable_reason(BackendSpec("onnx", "int8"), cpu, from_model=True) or "")
    assert all(spec.name != "onnx" for spec in candidates(cpu))


def test_an_export_made_from_a_checkpoint_needs_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    real = catalog.installed
    monkeypatch.setattr(catalog, "installed", lambda module: module != "onnxscript" and real(module))
    assert "onnxscript is not installed" in (catalog.unavailable_reason("onnx", from_model=True) or "")
    assert catalog.unavailable_reason("onnx", from_model=False) is None  # an export folder runs without it


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stem=st.sampled_from(["a\x07", "x\x1b[2J", "r\u202eb", "t\tab", "n" * 201, "ok\u200b"]))
def test_schedule_refuses_a_name_its_writer_would_refuse_before_the_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       nothing_built: None, stem: str) -> None:  # fmt: skip
    """The schedule's checkpoint is named as save_checkpoint names it (the model after its file): a name the writer
    refuses after minutes of fitting is refused before anything is built."""
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.export_main, "schedule", "--output", f"{stem}.safetensors")
    one_line(code, err, 2, "the model is named after its file")  # a bad argument
