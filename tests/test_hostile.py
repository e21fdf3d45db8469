"""Careless and hostile input: nothing deleted, nothing read from outside, nothing mixed, one line per mistake.

Every file here is built in tmp_path: tampered exports, checkpoints and shards, and CLI arguments.
The commands run through their real entry points (`*_main`), as a shell would start them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import dip_export.pipeline
from dip_export import cli
from dip_export.checkpoint import LoadedModel, build_model, load_checkpoint
from dip_export.errors import CheckpointError
from dip_export.export.manifest import ownership_problem
from dip_export.export.onnx_export import export_onnx
from dip_export.io import _tmp_prefix, atomic_dir
from tests.conftest import lightning_checkpoint

SIZE = (32, 64)
RUN_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


def run(main, *args: str | Path) -> tuple[int, str]:
    """Start a command as the shell would; returns (exit code, stderr)."""
    err = io.StringIO()
    argv = [main.__name__, *map(str, args)]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        old, sys.argv = sys.argv, argv
        try:
            main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        else:
            code = 0
        finally:
            sys.argv = old
    return code, err.getvalue()


def one_line(code: int, stderr: str, expected_code: int, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == expected_code, stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], lines[0]


def waited_then_one_line(code: int, stderr: str, expected_code: int, waiting: str, *words: str) -> None:
    """A torchrun rank that tried to join its process group: the line saying it waits (exactly `waiting`), then the
    one-line error, nothing else."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0] == waiting, stderr
    one_line(code, lines[1], expected_code, *words)


def sample(*args: str | Path) -> tuple[int, str]:
    return run(cli.sample_main, *args)


@pytest.fixture(scope="module")
def loaded(golden):
    return LoadedModel(build_model(golden.config, golden.state), golden.config, name="golden", source="test")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, golden):
    return lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", golden.state)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, loaded):
    return export_onnx(loaded, precision="fp32", image_size=SIZE, output_dir=tmp_path_factory.mktemp("exp") / "fp32")


@pytest.fixture
def export(tmp_path, pristine):
    """A fresh copy of a valid export, to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "exp"))


def tamper(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        target, *rest = key.split("__")
        if rest:
            data[target][rest[0]] = value
        else:
            data[target] = value
    path.write_text(json.dumps(data))


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if any image would be generated."""

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(dip_export.pipeline, "generate", refuse)


# ------------------------------------------------------------------ 1. data loss


def test_output_dir_onto_a_folder_of_user_files_touches_nothing(tmp_path, ckpt):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, err = run(cli.export_main, "onnx", ckpt, "--image-size", "32x64", "--output-dir", mine)
    one_line(code, err, 2, "not an export of this tool")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]


@pytest.mark.parametrize("where", [".", "cwd", "parent"])
def test_output_dir_working_folder_is_refused(tmp_path, ckpt, monkeypatch, where):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    (work / "manifest.json").write_text(json.dumps({"format": "dip-export/1"}))  # even if it looks like an export
    monkeypatch.chdir(work)
    target = {".": ".", "cwd": str(work), "parent": str(tmp_path)}[where]
    code, err = run(cli.export_main, "onnx", ckpt, "--image-size", "32x64", "--output-dir", target)
    one_line(code, err, 2, "working folder")
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt", "manifest.json"]


def test_output_dir_that_is_a_file_is_not_renamed_away(tmp_path, ckpt):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, err = run(cli.export_main, "onnx", ckpt, "--image-size", "32x64", "--output-dir", target)
    one_line(code, err, 2, "not a folder")
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _rewrite_export(folder: Path) -> None:
    with atomic_dir(folder, problem_of=ownership_problem) as tmp:
        (tmp / "manifest.json").write_text(json.dumps({"format": "dip-export/1", "new": True}))


def test_replacing_an_export_keeps_a_user_file_named_like_the_old_backup(tmp_path, pristine):
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    backup = tmp_path / ".exp.old"
    backup.mkdir()
    (backup / "precious").write_text("mine")
    _rewrite_export(folder)
    assert (backup / "precious").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp.old", "exp"]
    assert json.loads((folder / "manifest.json").read_text())["new"]


def test_stale_temporary_cleanup_spares_look_alikes(tmp_path):
    host = _tmp_prefix(tmp_path / "exp").rsplit("-", 1)[0]
    look_alike = tmp_path / f"{host}-999999999.my-notes.tmp"  # not a name the tool makes
    look_alike.write_text("mine")
    _rewrite_export(tmp_path / "exp")
    assert look_alike.read_text() == "mine"


# ------------------------------------------------------------------ 2. reads outside the export folder


@pytest.fixture
def outside_model(tmp_path, pristine):
    other = tmp_path / "outside"
    other.mkdir()
    shutil.copy(pristine / "backbone.onnx", other / "backbone.onnx")
    return other / "backbone.onnx"


@pytest.mark.parametrize("kind", ["etc_passwd", "dotdot", "absolute", "symlink"])
def test_manifest_paths_must_stay_inside_the_folder(export, outside_model, kind, tmp_path):
    if kind == "symlink":
        (export / "backbone.onnx").unlink()
        (export / "backbone.onnx").symlink_to(outside_model)
    else:
        rel = {"etc_passwd": "/etc/passwd", "dotdot": "../outside/backbone.onnx", "absolute": str(outside_model)}[kind]
        tamper(export, files__backbone=rel)
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", out)
    one_line(code, err, 1, "symlink" if kind == "symlink" else "outside the export folder")
    assert not out.exists()


def test_cached_export_pointing_outside_is_refused_not_followed(tmp_path, ckpt, monkeypatch, outside_model):
    monkeypatch.chdir(tmp_path)
    args = [ckpt, "--backend", "onnx", "--image-size", "32x64", "--classes", "1", "--seeds", "0", "--steps", "1"]
    assert sample(*args, "--out", "a.npz")[0] == 0
    (cached,) = Path("engines").iterdir()
    outside = outside_model.read_bytes()
    tamper(cached, files__backbone=str(outside_model))  # an edited manifest: no longer the tool's, never replaced
    edited = (cached / "manifest.json").read_bytes()
    code, err = sample(*args, "--out", "b.npz")
    one_line(code, err, 2, "is not an export of this tool", "no valid mark")
    assert (cached / "manifest.json").read_bytes() == edited and outside_model.read_bytes() == outside
    assert not Path("b.npz").exists()


# ------------------------------------------------------------------ 3. silent mixing


def test_resume_with_a_replaced_checkpoint_is_refused(tmp_path, golden):
    ckpt = lightning_checkpoint(tmp_path / "w.ckpt", golden.state)
    out = tmp_path / "o.npz"
    args = ["--image-size", "32", "--num-samples", "4", "--batch-size", "1", "--shard-batches", "1", "--steps", "1",
            "--resume", "--out", out]  # fmt: skip
    assert sample(ckpt, *args)[0] == 0
    out.unlink()
    (tmp_path / "o.npz.parts" / "shard-000003.npz").unlink()  # as if interrupted before the last shard
    lightning_checkpoint(ckpt, {k: v + 0.01 for k, v in golden.state.items()})  # same path, new weights
    code, err = sample(ckpt, *args)
    one_line(code, err, 2, "other settings", "content")
    assert not out.exists()


def old_png(path: Path) -> bytes:
    """An earlier run's image, as this tool writes it (marked; a user's other file is never replaced)."""
    from dip_export.io import save_png

    save_png(path, np.full((2, 2, 3), 9, np.uint8), "sample-image")
    return path.read_bytes()


def test_png_dir_reused_by_a_smaller_run_is_refused(tmp_path, ckpt, no_sampling):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(3):
        old_png(pngs / f"{i:06d}.png")  # an earlier run's images
    out = tmp_path / "o.npz"
    code, err = sample(ckpt, "--image-size", "32", "--num-samples", "2", "--steps", "1", "--png-dir", pngs, "--out", out)
    one_line(code, err, 2, "000002.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs"]


def test_png_dir_rerun_of_the_same_plan_replaces_its_files(tmp_path, ckpt):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    old = old_png(pngs / "000000.png")  # an earlier run's image
    code, err = sample(ckpt, "--image-size", "32", "--num-samples", "1", "--steps", "1", "--png-dir", pngs,
                       "--out", tmp_path / "o.npz")  # fmt: skip
    assert code == 0, err
    assert (pngs / "000000.png").read_bytes().startswith(b"\x89PNG") and (pngs / "000000.png").read_bytes() != old


# ------------------------------------------------------------------ 4. resource exhaustion


def _own_format(path: Path, golden, config: dict | None = None, sampling: dict | None = None) -> Path:
    meta = {
        "dip_config": json.dumps(config if config is not None else golden.config.to_dict()),
        "dip_sampling": json.dumps(sampling or {}),
    }
    save_file({k: v.contiguous() for k, v in golden.state.items()}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 65536, "depth": 100}, "hidden_size"),
        ({"hidden_size": 192, "num_heads": 4, "depth": 100}, "does not match the weights"),
    ],
)
def test_stored_config_is_checked_against_the_tensors_before_building(tmp_path, golden, monkeypatch, change, message):
    path = _own_format(tmp_path / "big.safetensors", golden, {**golden.config.to_dict(), **change})

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built from the stored config")

    monkeypatch.setattr("dip_export.checkpoint.DiP", no_build)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_stored_sampling_defaults_are_bounded(tmp_path, golden):
    path = _own_format(tmp_path / "s.safetensors", golden, sampling={"steps": 10**12})
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "steps")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--steps", "1000000000000"], ["--steps", "10000"]),
        (["--image-size", "100000"], ["4096"]),
        (["--seed", "18446744073709551615"], ["--seed"]),
        (["--num-samples", "10000000000"], ["--num-samples"]),
        (["--batch-size", "100000000"], ["--batch-size"]),
        (["--seeds", "9223372036854775808"], ["--seeds"]),
        (["--seed", str(2**63 - 2), "--num-samples", "3"], ["--seed"]),
    ],
)
def test_limits_are_checked_before_any_work(tmp_path, no_sampling, args, words):
    code, err = sample(*args, "--out", tmp_path / "o.npz")
    one_line(code, err, 2, *words)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 5. one line instead of a traceback


@pytest.mark.parametrize(
    "meta",
    [
        {"dip_config": "{not json"},
        {"dip_config": json.dumps({"hidden_size": "abc"})},
        {"dip_config": "[1, 2]"},
        {"dip_config": json.dumps({"hidden_size": 96.0, "num_heads": 4, "depth": 2})},
        {"dip_sampling": "{oops"},
        {"dip_sampling": json.dumps({"cfg": "high"})},
    ],
)
def test_bad_safetensors_metadata_names_the_file(tmp_path, golden, meta):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in golden.state.items()}, str(path), metadata=meta)
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path))


@pytest.mark.parametrize(
    "change",
    [
        "list",
        {"image_size": ["a", 64]},
        {"image_size": 32},
        {"files": {"backbone": "backbone.onnx"}},
        {"files__backbone": 7},
        {"config": "big"},
        {"config": {"hidden_size": -1}},
        {"config__num_classes": 1000},
        {"config__hidden_size": 192},
        {"sampling": {"steps": 10**12}},
        {"precision": "fp64"},
        {"precision": 123},
        {"opset": "18"},
        {"surprise": 1},
        {"engines": {"fp16": {"files": {"backbone": "/etc/passwd"}}}},
    ],
)
def test_tampered_manifest_is_one_line_naming_the_file(export, tmp_path, no_sampling, change):
    if change == "list":
        (export / "manifest.json").write_text("[1, 2]")
    else:
        tamper(export, **change)
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(export))


@pytest.mark.parametrize("kind", ["truncated", "random", "wrong_size", "swapped", "fp32_labelled_int8", "fp32_labelled_fp16"])
def test_onnx_files_must_be_what_the_manifest_says(export, tmp_path, no_sampling, kind):
    graph = export / "backbone.onnx"
    if kind == "truncated":
        graph.write_bytes(graph.read_bytes()[:1000])
    elif kind == "random":
        graph.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "wrong_size":
        tamper(export, image_size=[64, 64])
    elif kind == "swapped":
        shutil.copy(export / "detailer.onnx", graph)
    else:
        tamper(export, precision=kind.rsplit("_", 1)[1])
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "backbone.onnx")


def test_backend_precision_must_match_the_export(export, tmp_path, no_sampling):
    code, err = sample(export, "--backend", "onnx:int8", "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "is a fp32 export")


def test_graph_the_runtime_rejects_is_one_line(export, tmp_path, no_sampling):
    model = onnx.load(str(export / "detailer.onnx"))
    model.graph.node[0].op_type = "NoSuchOperator"
    onnx.save_model(model, str(export / "detailer.onnx"))
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(export), "the exporter never writes")


def test_onnx_external_data_outside_the_folder_is_refused(export, tmp_path, no_sampling):
    model = onnx.load(str(export / "detailer.onnx"))
    onnx.save_model(model, str(export / "detailer.onnx"), save_as_external_data=True, location="detailer.onnx.data",
                    size_threshold=0)  # fmt: skip
    model = onnx.load(str(export / "detailer.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save_model(model, str(export / "detailer.onnx"))
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "outside the export folder")


def test_quantized_graph_labelled_float_is_refused(export, tmp_path, no_sampling):
    model = onnx.load(str(export / "detailer.onnx"))
    first = model.graph.node[0]
    scale = onnx.helper.make_tensor("q_scale", onnx.TensorProto.FLOAT, [], [0.1])
    model.graph.initializer.append(scale)
    q = onnx.helper.make_node("QuantizeLinear", [first.input[0], "q_scale"], ["q_out"])
    dq = onnx.helper.make_node("DequantizeLinear", ["q_out", "q_scale"], ["dq_out"])
    first.input[0] = "dq_out"
    model.graph.node.insert(0, dq)
    model.graph.node.insert(0, q)
    onnx.save_model(model, str(export / "detailer.onnx"))
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "labelled fp32 but the graph is quantized")


def test_out_onto_an_existing_folder_is_refused_before_work(tmp_path, ckpt, no_sampling):
    (tmp_path / "o.npz").mkdir()
    code, err = sample(ckpt, "--image-size", "32", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "is a folder")


def test_bench_json_onto_a_folder_is_refused_before_the_benchmark(tmp_path, monkeypatch):
    def no_bench(*args, **kwargs):
        raise AssertionError("benchmark started")

    monkeypatch.setattr("dip_export.measure.bench.run_bench", no_bench)
    (tmp_path / "r.json").mkdir()
    code, err = run(cli.bench_main, "--backends", "torch", "--steps", "1", "--json", tmp_path / "r.json")
    one_line(code, err, 2, "is a folder")
    code, err = run(cli.bench_main, "--backends", "", "--steps", "1")
    one_line(code, err, 2, "--backends is given an empty value")


@pytest.mark.parametrize("opset", ["0", "-3", "99"])
def test_opset_out_of_range(tmp_path, opset):
    code, err = run(cli.export_main, "onnx", "--opset", opset, "--output-dir", tmp_path / "x")
    one_line(code, err, 2, "--opset")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["settings_garbage", "settings_list", "shard_garbage", "shard_wrong_shape"])
def test_damaged_parts_folder_is_one_line(tmp_path, ckpt, damage):
    out = tmp_path / "o.npz"
    args = [ckpt, "--image-size", "32", "--num-samples", "2", "--batch-size", "1", "--shard-batches", "1", "--steps", "1",
            "--resume", "--out", out]  # fmt: skip
    assert sample(*args)[0] == 0
    out.unlink()
    parts = tmp_path / "o.npz.parts"
    if damage == "settings_garbage":
        (parts / "settings.json").write_bytes(b"\xff\x00garbage")
    elif damage == "settings_list":
        (parts / "settings.json").write_text("[]")
    elif damage == "shard_garbage":
        (parts / "shard-000001.npz").write_bytes(b"PK\x03\x04 not really")
    else:
        np.savez(parts / "shard-000001.npz", arr_0=np.zeros((1, 8, 8, 3), np.uint8), indices=np.arange(1, 2))
    code, err = sample(*args)
    one_line(code, err, 1, str(parts))
    assert not out.exists()


# ------------------------------------------------------------------ 6. checks before the work


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_refused_before_work(tmp_path, ckpt, no_sampling):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = sample(ckpt, "--image-size", "32", "--out", ro / "o.npz")
        one_line(code, err, 2, "not writable")
    finally:
        ro.chmod(0o755)


def test_out_under_a_file_is_refused_before_work(tmp_path, ckpt, no_sampling):
    (tmp_path / "afile").write_text("x")
    code, err = sample(ckpt, "--image-size", "32", "--out", tmp_path / "afile" / "o.npz")
    one_line(code, err, 2, "not a folder")


def test_png_dir_that_is_a_file_leaves_nothing_behind(tmp_path, ckpt, no_sampling):
    (tmp_path / "pngs").write_text("x")
    code, err = sample(ckpt, "--image-size", "32", "--png-dir", tmp_path / "pngs", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pngs"]


# ------------------------------------------------------------------ 7. accepted nonsense


@pytest.mark.parametrize(("args", "word"), [(["--cfg", "-5"], "--cfg"), (["--seed", "-1"], "--seed"),
                                            (["--seeds", "3,-1"], "--seeds")])  # fmt: skip
def test_negative_guidance_and_seeds_are_refused(tmp_path, no_sampling, args, word):
    code, err = sample(*args, "--out", tmp_path / "o.npz")
    one_line(code, err, 2, word)


# ------------------------------------------------------------------ 8. messages


def test_messages_are_accurate(tmp_path, golden):
    as_json = tmp_path / "config.pt"
    as_json.write_text(json.dumps({"hidden_size": 96}))
    code, err = sample(as_json, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "not a PyTorch checkpoint")
    assert "--trust-checkpoint" not in err
    folder = tmp_path / "dir.ckpt"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(folder)
    code, err = run(cli.export_main, "onnx", "/dev/null", "--output-dir", tmp_path / "x")
    one_line(code, err, 1, "not a regular file")


def test_refusal_does_not_advise_weights_only_false(tmp_path, golden):
    path = tmp_path / "plain.pkl"
    with path.open("wb") as f:
        pickle.dump({"state_dict": golden.state, "hook": print}, f)
    code, err = sample(path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "--trust-checkpoint")
    assert "weights_only" not in err


@pytest.mark.parametrize("how", ["pickle.dump", "legacy torch.save"])
def test_plain_pickle_gives_no_torch_warnings(tmp_path, golden, how):
    path = tmp_path / "plain.pt"
    if how == "pickle.dump":
        with path.open("wb") as f:
            pickle.dump(golden.state, f, protocol=4)  # tensors that only torch.load(weights_only=False) rebuilds
    else:
        torch.save(golden.state, path, _use_new_zipfile_serialization=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_checkpoint(path)
        except CheckpointError as err:
            assert how == "pickle.dump" and "--trust-checkpoint" in str(err)
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize(
    ("main", "args"),
    [
        (cli.sample_main, ["--steps", "abc"]),
        (cli.sample_main, ["--no-such-option"]),
        (cli.sample_main, ["a", "b"]),
        (cli.export_main, ["nonsense"]),
        (cli.export_main, ["trt", "--opt-level", "x"]),
        (cli.bench_main, ["--repeats"]),
    ],
)
def test_parse_errors_are_one_line_exit_2(main, args):
    code, err = run(main, *args)
    one_line(code, err, 2)
    assert "╭" not in err and "Usage:" not in err


# ------------------------------------------------------------------ 9. safe loading without --trust-checkpoint


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


class _RunsOnReduce:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (self.marker,))


class _RunsOnSetstate:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state):
        _touch(state["marker"])


class _HyperParameters(dict):  # an OmegaConf / jsonargparse-like config object
    pass


def test_lightning_checkpoint_with_code_objects_loads_its_tensors_and_runs_nothing(tmp_path, golden):
    marker = tmp_path / "marker"
    path = lightning_checkpoint(tmp_path / "last.ckpt", golden.state, raw_offset=1.0)
    data = torch.load(path, weights_only=True)
    data["hyper_parameters"] = _HyperParameters(lr=1e-4, reduce=_RunsOnReduce(str(marker)))
    data["callbacks"] = {"ModelCheckpoint": _RunsOnSetstate(str(marker)), "make": functools.partial(_touch, str(marker))}
    data["loops"] = {"fit_loop": [_RunsOnReduce(str(marker)), os.system]}
    data["lr_schedulers"] = [functools.partial(_touch, str(marker))]
    torch.save(data, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the file holds is more than weights-only loading takes
    loaded = load_checkpoint(path)
    assert not marker.exists()
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in golden.state.items())
    raw = load_checkpoint(path, weights="raw")
    assert torch.equal(raw.model.state_dict()["s_embedder.proj.bias"], golden.state["s_embedder.proj.bias"] + 1)
    assert not marker.exists()
    code, err = sample(path, "--image-size", "32", "--num-samples", "1", "--steps", "1", "--out", tmp_path / "o.npz")
    assert code == 0, err
    assert not marker.exists()


def test_weights_that_need_code_still_need_trust(tmp_path, golden):
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {k: _RunsOnReduce(str(marker)) for k in golden.state}}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


# ------------------------------------------------------------------ 10. property-based arguments

_bad_int = st.one_of(st.integers(max_value=0), st.integers(min_value=10**13), st.text(min_size=1, max_size=6))
_bad_seed = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63, max_value=2**70))
_bad_float = st.one_of(st.floats(max_value=-1e-6), st.floats(min_value=101), st.sampled_from(["nan", "inf", "-inf", "x"]))
_bad_size = st.one_of(
    st.integers(min_value=4097, max_value=10**9).map(str), st.sampled_from(["0", "12", "8x0", "axb", "8x8x8", ""])
)
_bad_name = st.text(min_size=0, max_size=8).filter(lambda s: s.strip() not in ("", "euler", "heun", "torch", "onnx"))
BAD_ARGS = st.one_of(
    st.tuples(st.just("--steps"), _bad_int),
    st.tuples(st.just("--seed"), _bad_seed),
    st.tuples(st.just("--cfg"), _bad_float),
    st.tuples(st.just("--shift"), st.one_of(st.floats(max_value=0), st.just("nan"))),
    st.tuples(st.just("--image-size"), _bad_size),
    st.tuples(st.just("--batch-size"), _bad_int),
    st.tuples(st.just("--num-samples"), st.one_of(st.integers(max_value=0), st.integers(min_value=10**8))),
    st.tuples(st.just("--cache-interval"), st.integers(max_value=0)),
    st.tuples(st.just("--sampler"), _bad_name),
    st.tuples(st.just("--backend"), _bad_name),
    st.tuples(st.just("--guidance-interval"), st.sampled_from(["1", "a,b", "0.5,0.1", "nan,1"])),
    st.tuples(st.just("--classes"), st.sampled_from(["-1", "10", "x", ","])),
    st.tuples(st.text(alphabet="-abcxyz", min_size=3, max_size=8).map(lambda s: "--" + s.lstrip("-")), st.just("1")),
)


@RUN_SETTINGS
@given(bad=st.lists(BAD_ARGS, min_size=1, max_size=3))
def test_random_bad_arguments_fail_cleanly(tmp_path_factory, bad):
    work = tmp_path_factory.mktemp("prop")
    argv = [str(v) for pair in bad for v in pair]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(dip_export.pipeline, "generate", lambda *a, **k: pytest.fail("sampling started"))
        code, err = sample(*argv, "--out", work / "o.npz")
    assert code in (1, 2), err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    assert list(work.iterdir()) == []


EXPORT_BAD_ARGS = st.one_of(
    st.tuples(st.just("--opset"), st.one_of(st.integers(max_value=16), st.integers(min_value=21), st.just("x"))),
    st.tuples(st.just("--precision"), _bad_name.filter(lambda s: s not in ("fp32", "fp16", "bf16", "int8"))),
    st.tuples(st.just("--image-size"), _bad_size),
    st.tuples(st.just("--weights"), st.sampled_from(["", "both", "x"])),
    st.tuples(st.just("--preset"), st.sampled_from(["dip-zz", "", "xl"])),
)
BENCH_BAD_ARGS = st.one_of(
    st.tuples(st.just("--steps"), _bad_int),
    st.tuples(st.just("--batch"), _bad_int),
    st.tuples(st.just("--cfg"), _bad_float),
    st.tuples(st.just("--repeats"), st.one_of(st.integers(max_value=0), st.integers(min_value=1001))),
    st.tuples(st.just("--warmup"), st.integers(max_value=-1)),
    st.tuples(st.just("--backends"), st.sampled_from(["", ",", " , ", "tpu", "torch:int3", "onnx,cuda"])),
    st.tuples(st.just("--image-size"), _bad_size),
)


def _fails_cleanly(work: Path, main, argv: list[str]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr("dip_export.export.onnx_export.export_onnx", lambda *a, **k: pytest.fail("export started"))
        mp.setattr("dip_export.measure.bench.run_bench", lambda *a, **k: pytest.fail("benchmark started"))
        code, err = run(main, *argv)
    assert code in (1, 2), err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert list(work.iterdir()) == []


@RUN_SETTINGS
@given(bad=st.lists(EXPORT_BAD_ARGS, min_size=1, max_size=3))
def test_random_bad_export_arguments_fail_cleanly(tmp_path_factory, bad):
    work = tmp_path_factory.mktemp("prop")
    _fails_cleanly(work, cli.export_main, ["onnx", *[str(v) for pair in bad for v in pair], "--output-dir", "out"])


@RUN_SETTINGS
@given(bad=st.lists(BENCH_BAD_ARGS, min_size=1, max_size=3))
def test_random_bad_bench_arguments_fail_cleanly(tmp_path_factory, bad):
    work = tmp_path_factory.mktemp("prop")
    _fails_cleanly(work, cli.bench_main, [*[str(v) for pair in bad for v in pair], "--json", "r.json", "--plot", "p.png"])


@pytest.mark.parametrize("option", [["--weights", "raw"], ["--trust-checkpoint"]])
def test_checkpoint_options_with_an_export_folder_are_refused(tmp_path, export, option):
    code, err = sample(export, *option, "--num-samples", "2", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "is an export folder")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("kind", ["folder", "symlink", "loose"])
def test_a_bad_owner_key_is_refused_before_the_export_is_made(tmp_path, monkeypatch, kind):
    import dip_export.export.onnx_export as onnx_export
    from dip_export.ownership import KEY_ENV

    key = tmp_path / "owner.key"
    if kind == "folder":
        key.mkdir()
    elif kind == "symlink":
        key.symlink_to(tmp_path / "elsewhere.key")
    else:
        key.write_text("0" * 64 + "\n")
        key.chmod(0o644)
    monkeypatch.setenv(KEY_ENV, str(key))
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: pytest.fail("the export started"))
    code, err = run(cli.export_main, "onnx", "--output-dir", tmp_path / "new")
    one_line(code, err, 1, "owner key")
    assert not (tmp_path / "new").exists()
