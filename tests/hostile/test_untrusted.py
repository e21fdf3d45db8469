"""One reader for untrusted files: size, nesting, schema, containment; content identities."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from dip_export import cli
from dip_export.checkpoint import load_checkpoint
from dip_export.distributed import World, check_settings
from dip_export.errors import CheckpointError, DipError, ExportError
from dip_export.export.manifest import read_manifest
from dip_export.measure import autobackend
from dip_export.ownership import file_sha256
from dip_export.pipeline import ModelSource
from dip_export.untrusted import MAX_DEPTH, Field, Schema, UntrustedFileError, nesting_depth, parse_json, read_json
from tests.test_hostile import one_line, run

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\[]{}', max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="ab[]{", max_size=3), inner, max_size=3),
    max_leaves=20,
)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_values)
def test_nesting_is_counted_without_parsing(value: object) -> None:
    assert nesting_depth(json.dumps(value).encode()) == depth(value)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.integers(MAX_DEPTH + 1, 200_000), st.sampled_from("[{"))
def test_deep_json_is_one_error_not_a_recursion(n: int, bracket: str) -> None:
    text = bracket * n if bracket == "[" else '{"a":' * n
    with pytest.raises(UntrustedFileError, match="nested deeper"):
        parse_json(text, "f.json")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3), st.none()))
def test_fields_are_exact_types_within_range(value: object) -> None:
    field = Field(int, lo=1, hi=100)
    ok = type(value) is int and 1 <= value <= 100
    assert (field.problem(value) is None) == ok


def test_nan_and_infinity_are_refused() -> None:
    for text in ('{"a": NaN}', "[Infinity]", "-Infinity"):
        with pytest.raises(UntrustedFileError):
            parse_json(text, "f.json")


def test_schema_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"steps": true}')
    with pytest.raises(UntrustedFileError, match=r"s\.json: field steps must be int"):
        read_json(path, schema=Schema({"steps": Field(int)}))


# ---------------------------------------------------------------- surfaces


def test_manifest_that_is_a_symlink_out_is_refused(tmp_path: Path, export: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.move(export / "manifest.json", outside)
    os.symlink(outside, export / "manifest.json")
    with pytest.raises(ExportError, match="symlink"):
        read_manifest(export)


def test_deeply_nested_manifest_is_one_line(tmp_path: Path, export: Path) -> None:
    (export / "manifest.json").write_text("[" * 100_000)
    code, err = run(cli.sample_main, export, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "manifest.json", "nested deeper")


def test_symlinked_auto_backend_cache_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"k": {"backend": "torch:fp32", "reason": "x", "ms": {}}}))
    root = tmp_path / "engines"
    root.mkdir()
    os.symlink(secret, root / autobackend.CACHE_FILE)
    assert autobackend._read_cache(root / autobackend.CACHE_FILE) == {}
    (root / autobackend.CACHE_FILE).unlink()
    (root / autobackend.CACHE_FILE).write_text("[" * 50_000)
    assert autobackend._read_cache(root / autobackend.CACHE_FILE) == {}


def test_shard_settings_nested_or_symlinked_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "o.parts"
    folder.mkdir()
    (folder / "settings.json").write_text('{"a":' * 10_000)
    with pytest.raises(DipError, match=r"settings\.json.*nested deeper"):
        check_settings(folder, {"a": 1}, World())
    (folder / "settings.json").unlink()
    (tmp_path / "other.json").write_text('{"a": 1}')
    os.symlink(tmp_path / "other.json", folder / "settings.json")
    with pytest.raises(DipError, match="symlink"):
        check_settings(folder, {"a": 1}, World())


def test_safetensors_metadata_nesting_names_the_file(tmp_path: Path, golden) -> None:
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in golden.state.items()}, str(path), metadata={"dip_config": "[" * 5000})
    with pytest.raises((CheckpointError, UntrustedFileError), match=r"m\.safetensors metadata dip_config"):
        load_checkpoint(path)


def test_identity_covers_external_data_whatever_its_name(tmp_path: Path, export: Path) -> None:
    _external(export)  # the re-saved graph and its weights recorded as the export's own
    from dip_export.config import DiPConfig

    first = ModelSource("x", DiPConfig(), {}, export_dir=export, export_size=(32, 32), export_precision="fp32").identity
    data = bytearray((export / "weights.bin").read_bytes())
    data[-1] ^= 1
    (export / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"weights\.bin: changed since export"):  # the weights are part of what is read
        _ = ModelSource("x", DiPConfig(), {}, export_dir=export, export_size=(32, 32), export_precision="fp32").identity
    assert first.startswith("export:")


def test_calibration_key_changes_when_the_checkpoint_is_replaced_in_place(tmp_path: Path, loaded) -> None:
    from dataclasses import replace

    from dip_export.export.calibration import CalibrationSettings

    path = tmp_path / "m.pt"
    path.write_bytes(b"one")
    model = replace(loaded, source=str(path))
    first = CalibrationSettings().key(model, (32, 32))
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))
    assert CalibrationSettings().key(model, (32, 32)) != first


def test_int_keys_in_a_state_dict_are_one_error(tmp_path: Path, golden) -> None:
    import torch

    path = tmp_path / "m.pt"
    torch.save({**golden.state, 7: torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a string"):
        load_checkpoint(path)


def test_auto_backend_cache_that_is_a_folder_is_refused_before_measuring(tmp_path: Path, loaded) -> None:
    import torch

    (tmp_path / autobackend.CACHE_FILE).mkdir()
    with pytest.raises(DipError, match="is a folder"):
        autobackend.choose_backend(loaded, "id", (32, 32), 1, torch.device("cpu"),
                                   make=lambda spec: pytest.fail("measuring started"), root=tmp_path)  # fmt: skip


# ---- a manifest describes its graphs: the config's exact parameter count against the weights the graphs hold

CONFIG_CHANGES = st.sampled_from(["depth", "hidden_size", "detailer_width", "num_classes"]).flatmap(
    lambda key: st.tuples(st.just(key), st.integers(1, 64) if key != "hidden_size" else st.sampled_from([64, 96, 256]))
)


@settings(max_examples=20, deadline=None)
@given(change=CONFIG_CHANGES)
def test_a_manifest_config_that_is_not_the_graphs_is_refused(tmp_path_factory, pristine, change) -> None:
    from dip_export.budget import parameter_count
    from dip_export.config import DiPConfig
    from dip_export.export.manifest import weight_allowance

    folder = Path(shutil.copytree(pristine, tmp_path_factory.mktemp("m") / "exp"))
    data = json.loads((folder / "manifest.json").read_text())
    config = DiPConfig.from_dict(data["config"])
    key, value = change
    data["config"][key] = value
    if key == "hidden_size":
        data["config"]["num_heads"] = value // config.head_dim
    (folder / "manifest.json").write_text(json.dumps(data))
    try:
        after = parameter_count(DiPConfig.from_dict(data["config"]))
    except DipError:
        return
    before = parameter_count(config)
    if after == before:
        assert read_manifest(folder).config.to_dict() == data["config"]
    elif abs(after - before) > weight_allowance(config, tuple(data["image_size"]), "fp32"):
        with pytest.raises(ExportError, match=r"manifest does not describe these graphs|has shape"):
            read_manifest(folder)
    else:  # a few class rows: the label table's own check
        with pytest.raises(ExportError, match="classes"):
            read_manifest(folder)


@pytest.mark.parametrize("depth", [1, 256])
def test_a_wrong_depth_is_refused_on_every_surface(tmp_path: Path, export: Path, depth: int) -> None:
    from dip_export import DiPPipeline

    data = json.loads((export / "manifest.json").read_text())
    data["config"]["depth"] = depth
    (export / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="does not describe"):
        DiPPipeline.load(export)
    code, err = run(cli.sample_main, export, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "does not describe")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [("versions", {"torch": "x" * 5000}), ("versions", {"torch": 2}), ("name", "n" * 201), ("source", {"path": ["a"]})],
)
def test_manifest_text_fields_are_short_strings(export: Path, key: str, value: object) -> None:
    data = json.loads((export / "manifest.json").read_text())
    data[key] = value
    (export / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="at most"):
        read_manifest(export)


def _external(export: Path, location: str = "weights.bin") -> Path:
    """The backbone's weights moved to an external data file, listed in the manifest as the export's own."""
    import onnx

    graph = export / "backbone.onnx"
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, location=location, size_threshold=0)
    manifest = json.loads((export / "manifest.json").read_text())
    for path in (graph, export / location):
        manifest["contents"][path.name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    (export / "manifest.json").write_text(json.dumps(manifest))
    return export / location


@pytest.mark.parametrize("change", ["scaled", "unlisted"])
def test_external_weights_rewritten_or_unlisted_are_refused_before_sampling(
    tmp_path: Path, export: Path, no_sampling, change: str
) -> None:
    import numpy as np

    from dip_export import DiPPipeline

    data = _external(export)
    DiPPipeline.load(export, device="cpu", backend="onnx")  # as written: taken
    if change == "scaled":  # every weight x1.05, the size and modification time kept
        stat = data.stat()
        weights = np.frombuffer(data.read_bytes(), dtype=np.float32) * np.float32(1.05)
        data.write_bytes(weights.tobytes())
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        words = "changed since export"
    else:
        manifest = json.loads((export / "manifest.json").read_text())
        del manifest["contents"]["weights.bin"]
        (export / "manifest.json").write_text(json.dumps(manifest))
        words = "not among the files"
    with pytest.raises(ExportError, match=words):
        DiPPipeline.load(export, device="cpu", backend="onnx")
    code, err = run(cli.sample_main, export, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "weights.bin", words)
    assert not (tmp_path / "o.npz").exists()


# ---- the heads a manifest's config names are the graph's: the memory estimate counts attention scores per head


def _heads_changed(pristine: Path, folder: Path, heads: int) -> Path:
    folder = Path(shutil.copytree(pristine, folder))
    data = json.loads((folder / "manifest.json").read_text())
    data["config"]["num_heads"] = heads
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_a_manifest_naming_other_heads_than_its_graph_is_refused(tmp_path_factory, pristine, data) -> None:
    from dip_export import DiPPipeline

    config = read_manifest(pristine).config
    divisors = [
        n for n in range(1, config.hidden_size + 1) if config.hidden_size % (4 * n) == 0 and n != config.num_heads
    ]  # fmt: skip (a head: 4k wide, 2D RoPE)
    heads = data.draw(st.sampled_from(divisors))
    folder = _heads_changed(pristine, tmp_path_factory.mktemp("h") / "exp", heads)
    shown = f"the manifest's config says {heads} heads of {config.hidden_size // heads}"
    with pytest.raises(ExportError, match=f"heads {config.head_dim} wide, {shown}"):
        read_manifest(folder)
    with pytest.raises(ExportError, match=shown):
        DiPPipeline.load(folder, device="cpu")
    code, err = run(cli.sample_main, folder, "--steps", "2", "--num-samples", "1", "--out", folder.parent / "o.npz")
    one_line(code, err, 1, shown)
    assert not (folder.parent / "o.npz").exists()


def test_the_heads_are_read_off_the_backbone_graph_norm_weights() -> None:
    """`_config_problem` on hand-made initializer lists: every query/key norm is one head wide, and a backbone
    holds at least one (a graph without them gives nothing to check the heads against)."""
    from onnx import helper

    from dip_export.export.manifest import _config_problem

    def graph(*shapes: tuple[str, list[int]]):
        inits = [helper.make_tensor(name, 1, dims, [0.0] * int(np.prod(dims))) for name, dims in shapes]
        return helper.make_graph([], "g", [], [], inits)

    good = graph(
        ("m.blocks.0.attn.q_norm.weight", [32]), ("m.blocks.0.attn.k_norm.weight", [32]), ("y.embedding_table.weight", [11, 2])
    )
    assert _config_problem(good, 10, 4, 32) == ""
    assert "says 2 heads of 64" in _config_problem(good, 10, 2, 64)
    assert "9 classes" in _config_problem(graph(("y.embedding_table.weight", [10, 2])), 10, 4, 32)
    assert "no attention norm" in _config_problem(graph(("m.blocks.0.attn.norm.weight", [32])), 10, 4, 32)
    assert _config_problem(graph(("m.enc1.weight", [4, 3])), 10, 0, 0) == ""  # the detailer: no heads to check
    assert "attention norms of shape [2, 16]" in _config_problem(graph(("a.attn.k_norm.weight", [2, 16])), 10, 4, 32)
