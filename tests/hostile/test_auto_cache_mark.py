"""The --backend auto cache: an entry is used only with a valid mark under the owner key over its key and content.

Anyone can write `engines/auto-backend.json` with the cache's kind; an entry this user's tool did not write (by
hand, another user, an older version, or one edited in any field) is measured again and replaced, never taken as
this machine's decision. Measuring is a fake here (`autobackend.measure`): no timing, no engine.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dip_export import DiPPipeline
from dip_export.checkpoint import LoadedModel, build_model
from dip_export.cli import sample_app
from dip_export.config import DiPConfig
from dip_export.measure import autobackend
from dip_export.measure.autobackend import CACHE_FILE, cache_key, choose_backend
from dip_export.ownership import mac_problem

CPU = torch.device("cpu")
FAKE_MS = {"torch:fp32": 10.0, "onnx:fp32": 20.0, "torch:fp32 again": 10.0}  # eager wins, and steadily: cached
FORGED = {"backend": "onnx:fp32", "ms": {"torch:fp32": 100.0, "onnx:fp32": 1.0}}  # the finding's "100x eager"


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every measurement made (by its model id): the fake's timings make eager fp32 the steady winner."""
    calls: list[str] = []

    def fake(make: Any, specs: Any, loaded: Any, size: Any, batch: int, device: Any) -> dict[str, float]:
        calls.append(f"batch {batch}")
        return dict(FAKE_MS)

    monkeypatch.setattr(autobackend, "measure", fake)
    return calls


def _entry_is_marked(path: Path, key: str) -> bool:
    entry = json.loads(path.read_text())[key]
    return mac_problem(autobackend._marked_contents(key, entry), entry["mac"]) is None


def _forge(path: Path, key: str, entry: dict[str, Any]) -> None:
    data = json.loads(path.read_text()) if path.exists() else {"written_by": "dip-export/auto-backend-cache"}
    data[key] = entry
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- the Python API


def test_a_forged_entry_is_measured_again_and_replaced_api(tmp_path: Path, monkeypatch, measured) -> None:
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "engines" / CACHE_FILE
    cache.parent.mkdir()
    pipe = DiPPipeline.load(backend="auto", batch_size=1)
    key = cache_key(pipe.source.identity, pipe.image_size, 1, pipe.device)
    _forge(cache, key, FORGED)  # the cache's own kind, the right key, no mark
    pipe(num_samples=1, steps=2)
    assert measured == ["batch 1"] and str(pipe.spec) == "torch:fp32"
    assert "cached decision" not in pipe.reason and "100.0x" not in pipe.reason
    assert json.loads(cache.read_text())[key]["backend"] == "torch:fp32" and _entry_is_marked(cache, key)  # replaced

    again = DiPPipeline.load(backend="auto", batch_size=1)  # the tool's own entry now: used as it is
    again(num_samples=1, steps=2)
    assert measured == ["batch 1"] and str(again.spec) == "torch:fp32"
    assert again.reason.startswith("torch:fp32: cached decision, from an earlier run (1.0x eager when measured)")


# ---------------------------------------------------------------- the command line


def _sample(tmp_path: Path) -> str:
    args = ["--backend", "auto", "--batch-size", "1", "--num-samples", "1", "--steps", "2", "--out", str(tmp_path / "s.npz")]
    result = CliRunner().invoke(sample_app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_forged_entry_is_measured_again_and_replaced_cli(tmp_path: Path, monkeypatch, measured) -> None:
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "engines" / CACHE_FILE
    first = _sample(tmp_path)
    assert measured == ["batch 1"] and "cached decision" not in first
    (key,) = [k for k in json.loads(cache.read_text()) if k != "written_by"]  # the key dip-sample itself uses
    assert _entry_is_marked(cache, key)
    assert "cached decision, from an earlier run" in _sample(tmp_path) and measured == ["batch 1"]  # genuine: reused

    _forge(cache, key, FORGED)
    forged = _sample(tmp_path)
    assert measured == ["batch 1", "batch 1"]
    assert "cached decision" not in forged and "100.0x" not in forged and "onnx" not in forged
    assert json.loads(cache.read_text())[key]["backend"] == "torch:fp32" and _entry_is_marked(cache, key)


# ---------------------------------------------------------------- the mechanism, over tampered fields

_LOADED: list[LoadedModel] = []


def _loaded() -> LoadedModel:
    """A tiny model, never run (measuring is the fake): only its config is read."""
    if not _LOADED:
        config = DiPConfig(image_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=4)
        _LOADED.append(LoadedModel(build_model(config), config, name="tiny", source="test"))
    return _LOADED[0]


def _tamper(entry: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(entry))
    if field == "backend":
        out["backend"] = value
    elif field == "ms":
        name, ms = value
        out["ms"][name] = ms
    elif field == "mac":
        if value is None:
            del out["mac"]
        else:
            out["mac"] = value
    elif field == "extra":
        out[value] = 1
    return out


def _tampering() -> st.SearchStrategy[tuple[str, Any]]:
    names = st.sampled_from(["torch:fp32", "onnx:fp32", "torch:fp32 again"])
    ms = st.floats(0.001, 1e6, allow_nan=False).filter(lambda v: v not in FAKE_MS.values())
    hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
    return st.one_of(
        st.tuples(st.just("backend"), st.sampled_from(["onnx:fp32", "torch:bf16", "compile:bf16"])),
        st.tuples(st.just("ms"), st.tuples(names, ms)),
        st.tuples(st.just("mac"), st.one_of(st.none(), hexes, st.text(max_size=80))),
        st.tuples(st.just("extra"), st.sampled_from(["note", "reason2"])),
        st.tuples(st.just("key"), st.integers(2, 9)),  # the entry of batch 1 placed under another batch's key
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(_tampering())
def test_a_tampered_entry_is_never_used(tampering: tuple[str, Any]) -> None:
    field, value = tampering
    calls: list[int] = []

    def fake(make: Any, specs: Any, loaded: Any, size: Any, batch: int, device: Any) -> dict[str, float]:
        calls.append(batch)
        return dict(FAKE_MS)

    old, autobackend.measure = autobackend.measure, fake  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root, loaded = Path(tmp), _loaded()
            cache = root / CACHE_FILE
            choose_backend(loaded, "tiny", (8, 8), 1, CPU, make=lambda s: pytest.fail("an engine was made"), root=root)
            key = cache_key("tiny", (8, 8), 1, CPU)
            genuine = json.loads(cache.read_text())[key]
            batch = value if field == "key" else 1
            where = cache_key("tiny", (8, 8), batch, CPU)
            _forge(cache, where, genuine if field == "key" else _tamper(genuine, field, value))
            calls.clear()
            decision = choose_backend(loaded, "tiny", (8, 8), batch, CPU, make=lambda s: pytest.fail("made"), root=root)
            assert calls == [batch] and not decision.cached and str(decision.spec) == "torch:fp32"
            assert _entry_is_marked(cache, where)  # measured again, and the entry replaced by a marked one
            reused = choose_backend(loaded, "tiny", (8, 8), batch, CPU, make=lambda s: pytest.fail("made"), root=root)
            assert reused.cached and calls == [batch]  # the replacement is the tool's own: used from now on
    finally:
        autobackend.measure = old  # type: ignore[assignment]


def test_an_untouched_entry_is_used(tmp_path: Path, measured) -> None:
    loaded = _loaded()
    first = choose_backend(loaded, "tiny", (8, 8), 1, CPU, make=lambda s: pytest.fail("made"), root=tmp_path)
    again = choose_backend(loaded, "tiny", (8, 8), 1, CPU, make=lambda s: pytest.fail("made"), root=tmp_path)
    assert not first.cached and again.cached and again.spec == first.spec and measured == ["batch 1"]
    assert again.ms == FAKE_MS
