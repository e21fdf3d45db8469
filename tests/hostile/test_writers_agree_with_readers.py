"""A writer of the tool never writes what its own reader refuses, and a caller's objects never run their methods
where the writers read them.

`io.save_json` checks its text with the reader's rules (size, nesting, each key once) before any file is made;
`save_checkpoint` checks the module's weights with the checkpoint reader's (names and shapes of the architecture,
dense real floating-point tensors); output kinds are read as plain text (a caller's str subclass: none of its
methods, its hash neither). `engines.open_export` reads its arguments as every other entry does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import engines, io
from dip_export.checkpoint import load_checkpoint, resolve_model, save_checkpoint
from dip_export.errors import DipError, UsageError
from dip_export.untrusted import MAX_DEPTH, read_json

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), inner, max_size=3),
    max_leaves=40,
)


def _deep(levels: int) -> dict:
    data: dict = {}
    for _ in range(levels):
        data = {"a": data}
    return data


@FEW
@given(
    data=st.dictionaries(st.text(max_size=4) | st.integers(0, 5), JSON_VALUES, max_size=4), levels=st.integers(0, 2 * MAX_DEPTH)
)
def test_save_json_writes_only_what_read_json_takes(tmp_path_factory: pytest.TempPathFactory, data: dict, levels: int) -> None:
    folder = tmp_path_factory.mktemp("j")
    path = folder / "r.json"
    data = {**data, "deep": _deep(levels)}
    try:
        io.save_json(path, data, "bench-report")
    except DipError as err:  # refused as its reader would refuse it: one line, before any file
        assert str(err).startswith(f"cannot write {path}: ") and "mark" not in str(err)
        assert os.listdir(folder) == []
        return
    read_json(path)  # what was written is read back by the reader, whatever it holds


def test_save_json_names_the_readers_reason(tmp_path: Path) -> None:
    cases = {
        "an object repeats a key": {1: "a", "1": "b"},
        "nested deeper than": _deep(MAX_DEPTH + 5),
        "more than its reader takes": {"x": "a" * (17 << 20)},
    }
    for words, data in cases.items():
        with pytest.raises(UsageError, match=words):
            io.save_json(tmp_path / "r.json", data, "bench-report")
    assert os.listdir(tmp_path) == []


class _Hostile(str):
    def __hash__(self) -> int:
        raise RuntimeError("hashed")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")


@pytest.mark.parametrize("writer", ["json", "png"])
def test_a_str_subclass_kind_runs_none_of_its_methods(tmp_path: Path, writer: str) -> None:
    import numpy as np

    if writer == "json":
        io.save_json(tmp_path / "r.json", {"x": 1}, _Hostile("bench-report"))
    else:
        io.save_png(tmp_path / "g.png", np.zeros((4, 4, 3), np.uint8), _Hostile("samples-grid"))
    assert len(os.listdir(tmp_path)) == 1
    with pytest.raises(UsageError, match="no JSON output kind 'no-such-kind'"):
        io.save_json(tmp_path / "s.json", {"x": 1}, _Hostile("no-such-kind"))
    with (
        pytest.raises(UsageError, match="no marked output kind 'no-such-kind'"),
        io.atomic_path(tmp_path / "t", _Hostile("no-such-kind")),
    ):
        pass
    assert len(os.listdir(tmp_path)) == 1


ODD_WEIGHTS = ["extra parameter", "int buffer", "bool buffer", "complex parameter", "renamed"]


@pytest.mark.parametrize("how", ODD_WEIGHTS)
def test_save_checkpoint_writes_no_weights_its_reader_refuses(tmp_path: Path, how: str) -> None:
    model = resolve_model(None).model
    if how == "extra parameter":
        model.extra = torch.nn.Parameter(torch.zeros(3))
    elif how == "int buffer":
        model.register_buffer("counts", torch.zeros(2, dtype=torch.int64))
    elif how == "bool buffer":
        model.register_buffer("mask", torch.zeros(2, dtype=torch.bool))
    elif how == "complex parameter":
        model.s_embedder.proj.bias = torch.nn.Parameter(torch.zeros(model.cfg.hidden_size, dtype=torch.complex64))
    else:
        model.local_decoder.renamed = model.local_decoder.enc1
        del model.local_decoder.enc1
    with pytest.raises(UsageError, match="nothing was written"):
        save_checkpoint(tmp_path / "m.safetensors", model)
    assert os.listdir(tmp_path) == []


def test_save_checkpoint_of_a_plain_model_reads_back(tmp_path: Path) -> None:
    loaded = resolve_model(None)
    save_checkpoint(tmp_path / "m.safetensors", loaded.model, {"steps": 8})
    back = load_checkpoint(tmp_path / "m.safetensors")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key


def test_a_callers_failing_objects_are_refused_in_one_line(tmp_path: Path) -> None:
    from collections.abc import Mapping

    class Broken(Mapping):
        def __getitem__(self, key: str) -> int:
            raise ZeroDivisionError

        def __iter__(self):
            raise ZeroDivisionError

        def __len__(self) -> int:
            return 1

    loaded = resolve_model(None)
    with pytest.raises(UsageError, match="cannot be read as a mapping"):
        save_checkpoint(tmp_path / "m.safetensors", loaded.model, Broken())

    class Odd(type(loaded.model)):
        def state_dict(self, *args, **kwargs):  # type: ignore[override]
            raise RuntimeError("own method")

    odd = Odd(loaded.config)
    with pytest.raises(UsageError, match="state_dict failed"):
        save_checkpoint(tmp_path / "m.safetensors", odd)
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dip_export.export.onnx_export import export_onnx

    return export_onnx(resolve_model(None), image_size=(32, 32), output_dir=tmp_path_factory.mktemp("e") / "demo")


@pytest.mark.parametrize(
    ("spec", "folder", "device", "words"),
    [
        ("onnx", None, "cpu", "the export folder must be a path"),
        ("onnx", 3, "cpu", "the export folder must be a path"),
        (3, "EXPORT", "cpu", "a backend is text"),
        ("onnx:fp16", "EXPORT", "cpu", "is a fp32 export; backend onnx:fp16 runs fp16 graphs"),
        ("onnx:int8", "EXPORT", "cpu", "is a fp32 export; backend onnx:int8 runs int8 graphs"),
        ("onnx", "EXPORT", "meta", "unknown device"),
        ("torch", "EXPORT", "cpu", "runs from a checkpoint"),
    ],
)
def test_open_export_reads_its_arguments_as_every_entry(demo_export: Path, spec, folder, device, words: str) -> None:
    folder = str(demo_export) if folder == "EXPORT" else folder
    with pytest.raises(DipError, match=words) as err:
        engines.open_export(spec, folder, device)
    assert "\n" not in str(err.value)


def test_open_export_takes_text_as_every_entry(demo_export: Path) -> None:
    import numpy as np

    engine = engines.open_export("onnx", str(demo_export), "cpu")
    x = torch.zeros(1, 3, 32, 32)
    tokens = engine.backbone(x, torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long))
    assert np.isfinite(np.asarray(tokens)).all()


# ---- every writer declares what it writes: checked against the free space before anything is made

WRITERS = ["npz", "png", "json", "checkpoint"]


def _write(kind: str, path: Path, n: int) -> None:
    import numpy as np

    if kind == "npz":
        io.save_npz(path, np.zeros((n, 8, 8, 3), np.uint8))
    elif kind == "png":
        io.save_png(path, np.random.default_rng(0).integers(0, 256, (n, 8, 3), dtype=np.uint8), "sample-image")
    elif kind == "json":
        io.save_json(path, {"x": "a" * n}, "bench-report")
    else:
        save_checkpoint(path, resolve_model(None).model)


@FEW
@given(kind=st.sampled_from(WRITERS), n=st.integers(1, 2000), free=st.integers(0, 40 << 20))
def test_a_writer_refuses_before_writing_past_the_free_space(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, kind: str, n: int, free: int
) -> None:
    import shutil
    from collections import namedtuple

    folder = tmp_path_factory.mktemp("w")
    path = folder / {"npz": "o.npz", "png": "o.png", "json": "o.json", "checkpoint": "m.safetensors"}[kind]
    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as patched:
        patched.setattr(shutil, "disk_usage", lambda _: usage(1 << 40, 0, free))
        try:
            _write(kind, path, n)
        except DipError as err:
            assert "free" in str(err) and "nothing was written" in str(err)
            assert os.listdir(folder) == []
            return
    assert path.stat().st_size + (16 << 20) <= free  # written: it fit, with the margin kept


@pytest.mark.parametrize("kind", WRITERS)
def test_a_path_holding_a_nul_is_refused_by_every_writer(tmp_path: Path, kind: str) -> None:
    name = {"npz": "o\x00.npz", "png": "o\x00.png", "json": "o\x00.json", "checkpoint": "m\x00.safetensors"}[kind]
    with pytest.raises(UsageError, match="NUL"):
        _write(kind, tmp_path / name, 2)
    with pytest.raises(UsageError, match="NUL"), io.atomic_path(tmp_path / name):
        pass
    assert os.listdir(tmp_path) == []
