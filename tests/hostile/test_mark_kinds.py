"""A JSON or safetensors output replaces only a file carrying this tool's mark for the same kind.

A bench report is never written over the --backend auto cache (an input of every auto run), and the
cache is never written over a bench report; a file of the old form (the bare `dip-export` mark) is
not any kind's. Refused in one line, before any measurement. The cached decision's reason is made by
the tool from the numbers, never the file's own text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from dip_export import cli
from dip_export.errors import DipError, UsageError
from dip_export.io import atomic_path, save_json
from dip_export.measure import autobackend
from dip_export.ownership import JSON_KINDS, MARK, MARK_KEY, SAFETENSORS_KINDS, check_replaceable_output, is_ours, mark
from dip_export.runtime.backends import BackendSpec
from dip_export.runtime.torch_engine import TorchEngine
from tests.test_hostile import one_line, run

TMP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MARKED = sorted(JSON_KINDS) + sorted(SAFETENSORS_KINDS)
EXISTING = [*MARKED, "old-form", "other-tool"]  # what an existing file carries: a kind's mark, the bare mark, another


def _value(existing: str) -> str:
    return {"old-form": MARK, "other-tool": "someone else"}.get(existing) or mark(existing)


def _make(path: Path, existing: str, fmt: str) -> None:
    if fmt == "json":
        path.write_text(json.dumps({MARK_KEY: _value(existing), "rows": []}))
    else:
        save_file({"w": torch.zeros(1)}, str(path), metadata={MARK_KEY: _value(existing)})


@TMP
@given(writer=st.sampled_from(MARKED), existing=st.sampled_from(EXISTING))
def test_a_file_is_replaced_only_by_a_writer_of_its_own_kind(tmp_path: Path, writer: str, existing: str) -> None:
    fmt = "json" if writer in JSON_KINDS else "safetensors"
    path = tmp_path / f"out.{fmt}"
    _make(path, existing, fmt)
    before = path.read_bytes()
    assert is_ours(path, writer) == (existing == writer)
    if existing == writer:
        check_replaceable_output(path, writer)
        if fmt == "json":
            save_json(path, {"new": 1}, writer)
            assert json.loads(path.read_text()) == {MARK_KEY: mark(writer), "new": 1}
        return
    with pytest.raises(UsageError, match=f"{path} exists and is not a .* this tool wrote"):
        check_replaceable_output(path, writer)
    if fmt == "json":
        with pytest.raises(UsageError, match="refusing to replace"):
            save_json(path, {"new": 1}, writer)
    with pytest.raises(UsageError, match="refusing to replace"), atomic_path(path, writer) as tmp:
        tmp.write_bytes(b"never used")
    assert path.read_bytes() == before


@TMP
@given(kind=st.sampled_from(sorted(JSON_KINDS)), data=st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))
def test_each_json_writer_puts_its_own_kind_s_mark(tmp_path: Path, kind: str, data: dict[str, int]) -> None:
    path = tmp_path / "o.json"
    path.unlink(missing_ok=True)  # one folder for every example
    if any(ch == "\x00" or "\ud800" <= ch <= "\udfff" for key in data for ch in key):  # what the reader refuses
        with pytest.raises(DipError, match=r"^cannot write .*: a text in it holds a NUL character or a lone surrogate$"):
            save_json(path, data, kind)
        assert not path.exists()
        return
    save_json(path, data, kind)
    assert json.loads(path.read_text())[MARK_KEY] == mark(kind)
    assert [k for k in MARKED if is_ours(path, k)] == [kind]


def test_no_unnamed_kind_is_written() -> None:
    with pytest.raises(ValueError):
        mark("json")
    with pytest.raises(UsageError, match="no JSON output kind 'json'"):
        save_json(Path("never.json"), {}, "json")
    assert not Path("never.json").exists()


# ---------------------------------------------------------------- the surfaces: dip-bench --json, --backend auto


@pytest.fixture
def no_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    import dip_export.measure.bench

    def refuse(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(dip_export.measure.bench, "run_bench", refuse)


BENCH = ["--steps", "1", "--backends", "torch", "--repeats", "1", "--warmup", "0", "--max-repeats", "1"]


@pytest.mark.parametrize("existing", ["auto-backend-cache", "old-form"])
def test_dip_bench_json_never_replaces_the_auto_cache_or_an_old_file(tmp_path: Path, no_timing, existing: str) -> None:
    target = tmp_path / "engines" / autobackend.CACHE_FILE
    target.parent.mkdir()
    if existing == "old-form":
        _make(target, existing, "json")
    else:
        save_json(target, {"k": {"backend": "torch:fp32", "ms": {"torch:fp32": 1.0}}}, autobackend.CACHE_KIND)
    before = target.read_bytes()
    code, err = run(cli.bench_main, *BENCH, "--json", target)
    one_line(code, err, 2, str(target), "refusing to replace")
    assert target.read_bytes() == before


def _loaded():
    from dip_export.checkpoint import resolve_model

    return resolve_model()


@pytest.mark.parametrize("existing", ["bench-report", "old-form"])
def test_the_auto_backend_run_never_measures_over_a_bench_report(tmp_path: Path, existing: str) -> None:
    path = tmp_path / autobackend.CACHE_FILE
    if existing == "old-form":
        _make(path, existing, "json")
    else:
        save_json(path, {"results": []}, "bench-report")
    before = path.read_bytes()
    calls: list[BackendSpec] = []

    def make(spec: BackendSpec):
        calls.append(spec)
        raise AssertionError("measuring started")

    with pytest.raises(DipError, match="is not a --backend auto cache this tool wrote"):
        autobackend.choose_backend(_loaded(), "demo", (32, 32), 1, torch.device("cpu"), make, tmp_path)
    assert calls == [] and path.read_bytes() == before


def test_the_api_auto_backend_refuses_a_bench_report_in_the_cache_s_place(tmp_path: Path, monkeypatch) -> None:
    from dip_export.pipeline import DiPPipeline

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "engines" / autobackend.CACHE_FILE
    path.parent.mkdir()
    save_json(tmp_path / "report.json", {"results": []}, "bench-report")  # the writer never puts it there itself
    (tmp_path / "report.json").replace(path)  # a user's move does
    before = path.read_bytes()
    with pytest.raises(DipError, match=f"{autobackend.CACHE_FILE} is not a --backend auto cache"):
        DiPPipeline.load(backend="auto", device="cpu", batch_size=1)  # checked at load, before the model is read
    assert path.read_bytes() == before


def test_a_cached_reason_is_made_by_the_tool_never_read_from_the_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(autobackend, "steady", lambda ms: True)
    loaded = _loaded()
    cpu = torch.device("cpu")

    def make(spec: BackendSpec):
        return TorchEngine(loaded.model, cpu)

    monkeypatch.setattr(autobackend, "candidates", lambda device: [BackendSpec("torch", "fp32")])
    autobackend.choose_backend(loaded, "demo", (32, 32), 1, cpu, make, tmp_path)
    path = tmp_path / autobackend.CACHE_FILE
    data = json.loads(path.read_text())
    key = next(k for k in data if k != MARK_KEY)
    data[key]["reason"] = "\x1b[31m[bold]pwn" + "R" * 600
    data[key]["ms"] = {"torch:fp32": 4.0, "torch:fp32 again": 4.0}
    path.write_text(json.dumps(data))  # edited: its mark no longer holds, so it is measured again
    assert not autobackend.choose_backend(loaded, "demo", (32, 32), 1, cpu, make, tmp_path).cached
    data[key] = autobackend._marked_entry(key, {k: v for k, v in data[key].items() if k != "mac"})  # marked anew
    path.write_text(json.dumps(data))  # as if this tool had written it: even then its own text is never shown
    decision = autobackend.choose_backend(loaded, "demo", (32, 32), 1, cpu, make, tmp_path)
    assert decision.cached and str(decision.spec) == "torch:fp32"
    assert decision.reason == "1.0x eager when measured"
    for bad in ({"torch:fp32": 0.0}, {"\x1b[31mname": 1.0}, {"torch:fp32": -1.0}, {"torch:fp32": True}):
        data[key] = autobackend._marked_entry(key, {**{k: v for k, v in data[key].items() if k != "mac"}, "ms": bad})
        path.write_text(json.dumps(data))
        again = autobackend.choose_backend(loaded, "demo", (32, 32), 1, cpu, make, tmp_path)
        assert not again.cached and "pwn" not in again.reason and "\x1b" not in again.reason
