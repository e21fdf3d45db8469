"""The int8 calibration cache carries the tool's mark under the owner key (as the yardstick reference and the resume
shards do): the tool's own cache for these settings is reused and the run says so; a cache whose values, arrays or
mark were changed, or that is marked under another key, is refused in one line naming it, never used nor replaced,
before any export; the tool's own cache made for other settings is calibrated again and replaced."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from dip_export import cli
from dip_export.checkpoint import load_checkpoint
from dip_export.errors import ExportError
from dip_export.export import calibration, onnx_export, quantize
from dip_export.export.calibration import CalibrationSettings, cache_path, load_or_collect
from dip_export.ownership import contents_mac
from dip_export.untrusted import UntrustedFileError
from tests.test_hostile import one_line, run

CALIB = CalibrationSettings(samples=2, steps=4, keep_steps=2)
OTHER = CalibrationSettings(samples=1, steps=2, keep_steps=2, seed=99)  # another cache, of the same model and size
SIZE = (32, 32)
UNMARKED = "no valid mark under your owner key"


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path.read_bytes()


def _no_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration, "collect", lambda *a: pytest.fail("calibration ran again"))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory, loaded) -> Path:
    """The tool's own cache for CALIB, written by this test run."""
    folder = tmp_path_factory.mktemp("calib")
    load_or_collect(loaded, SIZE, CALIB, folder)
    return cache_path(loaded, SIZE, CALIB, folder)


# ---------------------------------------------------------------- the mechanism


def test_a_genuine_cache_is_reused_and_said(tmp_path: Path, monkeypatch, loaded, genuine: Path) -> None:
    shutil.copy(genuine, tmp_path)
    _no_calibration(monkeypatch)
    said = io.StringIO()
    batches = load_or_collect(loaded, SIZE, CALIB, tmp_path, Console(file=said, width=400))
    assert [len(batches[r]) for r in ("backbone", "detailer")] == [2, 2]
    np.testing.assert_array_equal(batches["detailer"][1]["x"], _arrays(genuine)["detailer/1/x"])
    assert "using the cached calibration" in said.getvalue() and genuine.name in said.getvalue()


def test_the_tools_own_cache_for_other_settings_is_calibrated_again_and_replaced(tmp_path: Path, loaded) -> None:
    load_or_collect(loaded, SIZE, OTHER, tmp_path)
    theirs, mine = cache_path(loaded, SIZE, OTHER, tmp_path), cache_path(loaded, SIZE, CALIB, tmp_path)
    os.replace(theirs, mine)  # marked, but for another key
    said = io.StringIO()
    load_or_collect(loaded, SIZE, CALIB, tmp_path, Console(file=said, width=400))
    assert "using the cached calibration" not in said.getvalue()
    assert str(_arrays(mine)["key"]) == CALIB.digest(loaded, SIZE)  # replaced by this run's, marked
    load_or_collect(loaded, SIZE, CALIB, tmp_path, Console(file=said, width=400))
    assert "using the cached calibration" in said.getvalue()


FLOATS = ("backbone/0/x", "backbone/1/x", "detailer/0/x", "detailer/1/tokens", "backbone/1/t")
TAMPERING = st.one_of(
    st.tuples(st.just("scale"), st.sampled_from(FLOATS), st.floats(1.001, 400.0) | st.floats(-4.0, 0.999)),
    st.tuples(st.just("label"), st.integers(0, 1), st.integers(1, 5)),  # the tiny model: 5 classes and the null one
    st.tuples(st.just("add"), st.sampled_from(["backbone/2/x", "extra", "detailer/0/y"]), st.just(0)),
    st.tuples(st.just("remove"), st.sampled_from(["backbone/0/x", "detailer/1/tokens", "backbone/count"]), st.just(0)),
    st.tuples(st.just("unmark"), st.sampled_from([("mac",), ("key",), ("key", "mac")]), st.just(0)),
    st.tuples(st.just("foreign"), st.binary(min_size=32, max_size=32), st.booleans()),
    st.tuples(st.just("rekey"), st.text("0123456789abcdef", min_size=64, max_size=64), st.just(0)),
)


def _tampered(original: dict[str, np.ndarray], how: tuple, null_class: int) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays changed as `how` says, and whether only the mark can tell (the shapes still fit, a value changed)."""
    kind, what, amount = how
    arrays = dict(original)
    if kind == "scale":
        arrays[what] = (arrays[what] * amount).astype(np.float32)
        return arrays, bool((arrays[what] != original[what]).any())
    if kind == "label":
        y = arrays[f"backbone/{what}/y"].copy()
        y[0] = (y[0] + amount) % (null_class + 1)  # still a label in range
        arrays[f"backbone/{what}/y"] = y
        return arrays, True
    if kind == "add":
        arrays[what] = np.zeros((1,), np.float32)
        return arrays, False
    if kind == "remove":
        del arrays[what]
        return arrays, False
    if kind == "unmark":
        for name in what:
            del arrays[name]
        return arrays, True
    if kind == "foreign":  # marked under another user's key, over the file as it is or with its values changed
        if amount:
            arrays["detailer/0/x"] = arrays["detailer/0/x"] * np.float32(4)
        key = str(arrays["key"])
        arrays["mac"] = np.array(contents_mac(calibration._marked_contents(key, arrays), what), "<U64")
        return arrays, True
    arrays["key"] = np.array(what, "<U64")  # "rekey": another key under the old mark
    return arrays, what != str(original["key"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(how=TAMPERING)
def test_an_altered_cache_is_refused_never_used_nor_replaced(tmp_path_factory, monkeypatch, loaded, genuine, how) -> None:
    arrays, mark_only = _tampered(_arrays(genuine), how, loaded.config.null_class)
    folder = tmp_path_factory.mktemp("altered")
    path = folder / genuine.name
    raw = _save(path, arrays)
    _no_calibration(monkeypatch)
    for check in (calibration.check_cache, load_or_collect):  # before any export, and where it is read
        with pytest.raises(UntrustedFileError) as refused:
            check(loaded, SIZE, CALIB, folder)
        message = str(refused.value)
        assert message.startswith(str(path)) and "delete it to calibrate again" in message and "\n" not in message
        if mark_only:
            assert UNMARKED in message
    assert path.read_bytes() == raw and os.listdir(folder) == [genuine.name]  # neither used, deleted nor replaced


def test_the_mark_covers_the_kind(tmp_path: Path, monkeypatch, loaded, genuine: Path) -> None:
    """The same arrays marked as another kind of file (a reference's kind) under the user's own key are refused."""
    from dip_export.ownership import owner_key

    arrays = _arrays(genuine)
    contents = {**calibration._marked_contents(str(arrays["key"]), arrays), "written_by": "dip-export/yardstick-reference"}
    arrays["mac"] = np.array(contents_mac(contents, owner_key(create=True) or b""), "<U64")
    _save(tmp_path / genuine.name, arrays)
    _no_calibration(monkeypatch)
    with pytest.raises(UntrustedFileError, match=UNMARKED):
        load_or_collect(loaded, SIZE, CALIB, tmp_path)


# ---------------------------------------------------------------- the surfaces: dip-export and export_int8


STOPPED = "stopped after the calibration"


def _stop(*args: object) -> None:
    """In place of the quantization (tested elsewhere): the run stops, in one line, once the calibration is had."""
    raise ExportError(STOPPED)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, ckpt: Path):
    """`dip-export onnx --precision int8` of the tiny checkpoint, with a small calibration, up to the quantization:
    its engines folder (the fp32 export, the calibration cache)."""
    base = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXPORT_ROOT", base / "engines")
        mp.setattr(quantize, "EXPORT_ROOT", base / "engines")
        mp.setattr(quantize, "CalibrationSettings", lambda: CALIB)
        mp.setattr(quantize, "quantize_submodel", _stop)
        code, err = run(cli.export_main, "onnx", ckpt, "--precision", "int8", "--image-size", "32", "--output-dir", base / "q1")
        assert code == 1 and err.strip().splitlines()[-1] == f"error: {STOPPED}", err  # after the fp32 export's table
        assert "using the cached calibration" not in err  # this run calibrated
    (cache,) = (base / "engines").glob("*-calib/calib-*.npz")
    return base, cache


@pytest.fixture
def engines(made, monkeypatch: pytest.MonkeyPatch):
    base, cache = made
    monkeypatch.setattr(onnx_export, "EXPORT_ROOT", base / "engines")
    monkeypatch.setattr(quantize, "EXPORT_ROOT", base / "engines")
    monkeypatch.setattr(quantize, "CalibrationSettings", lambda: CALIB)
    saved = cache.read_bytes()
    yield base, cache
    cache.write_bytes(saved)


def test_cli_reuses_a_genuine_cache_and_says_so(engines, tmp_path: Path, ckpt: Path, monkeypatch) -> None:
    _, cache = engines
    _no_calibration(monkeypatch)
    monkeypatch.setattr(quantize, "quantize_submodel", _stop)
    code, err = run(cli.export_main, "onnx", ckpt, "--precision", "int8", "--image-size", "32", "--output-dir", tmp_path / "q2")
    said, refused = err.strip().splitlines()
    assert "using the cached calibration" in said and cache.name in said and STOPPED in refused and code == 1


@pytest.mark.parametrize("how", [("scale", "detailer/0/x", 4.0), ("unmark", ("mac",), 0)])
def test_cli_refuses_an_altered_cache_before_any_export(engines, tmp_path: Path, ckpt: Path, monkeypatch, how) -> None:
    _, cache = engines
    arrays, _ = _tampered(_arrays(cache), how, 0)
    raw = _save(cache, arrays)
    _no_calibration(monkeypatch)
    monkeypatch.setattr(quantize, "quantize_submodel", lambda *a: pytest.fail("quantized with an altered cache"))
    code, err = run(cli.export_main, "onnx", ckpt, "--precision", "int8", "--image-size", "32", "--output-dir", tmp_path / "q3")
    one_line(code, err, 1, str(cache), UNMARKED, "delete it to calibrate again")
    assert not (tmp_path / "q3").exists() and cache.read_bytes() == raw


def test_api_reuses_a_genuine_cache_and_refuses_an_altered_one(engines, tmp_path: Path, ckpt: Path, monkeypatch) -> None:
    """export_int8 (what the API and `ensure_int8_export` go through) on the checkpoint the CLI exported: its fp32
    export is current and its calibration cache the one the CLI wrote."""
    _, cache = engines
    loaded = load_checkpoint(ckpt)
    quantized: list[list[dict[str, np.ndarray]]] = []

    class Stop(Exception):
        pass

    def record(source: Path, out: Path, batches: list[dict[str, np.ndarray]], *rest: object) -> None:
        quantized.append(batches)
        raise Stop  # what follows is the quantization, tested elsewhere

    monkeypatch.setattr(quantize, "quantize_submodel", record)
    _no_calibration(monkeypatch)
    said = io.StringIO()
    with pytest.raises(Stop):
        quantize.export_int8(loaded, image_size=SIZE, calibration=CALIB, output_dir=tmp_path / "a1",
                             console=Console(file=said, width=400))  # fmt: skip
    assert "using the cached calibration" in said.getvalue() and cache.name in said.getvalue()
    np.testing.assert_array_equal(quantized[0][0]["x"], _arrays(cache)["backbone/0/x"])
    arrays = _arrays(cache)
    arrays["backbone/0/x"] = arrays["backbone/0/x"] * np.float32(300)
    raw = _save(cache, arrays)
    with pytest.raises(UntrustedFileError, match=UNMARKED):
        quantize.export_int8(loaded, image_size=SIZE, calibration=CALIB, output_dir=tmp_path / "a2", console=Console(file=said))
    assert len(quantized) == 1 and not (tmp_path / "a2").exists() and cache.read_bytes() == raw
