"""One reader for .npz files the tool did not write in this run (read_npz), and the caches that go through it."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export.distributed import check_finished_shards, parts_dir
from dip_export.errors import DipError
from dip_export.export import calibration
from dip_export.export.calibration import CalibrationSettings, load_or_collect
from dip_export.measure import autobackend, yardstick
from dip_export.untrusted import ArraySchema, ArraySpec, UntrustedFileError, read_npz

SCHEMA = ArraySchema({"a": ArraySpec("float32", (None, 3)), "n": ArraySpec("int64", ())})
SECRET = "SECRET_TEXT_7f3a"  # planted in tampered files; never in a message
ONE_HEADER = {"descr": "<i8", "fortran_order": False, "shape": ()}


def valid(rows: int = 2) -> dict[str, np.ndarray]:
    return {"a": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3), "n": np.array(rows)}


def npy_bytes(header: dict, data: bytes = b"") -> bytes:
    """An .npy member with any header, written by hand (numpy would refuse to write a lying one)."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, header)
    return f.getvalue() + data


def zipped(members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", compress) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return f.getvalue()


def savez(arrays: dict[str, np.ndarray]) -> bytes:
    f = io.BytesIO()
    np.savez(f, **arrays)  # type: ignore[arg-type]
    return f.getvalue()


def refused(folder: Path, raw: bytes, *words: str, schema: ArraySchema = SCHEMA) -> str:
    path = folder / "c.npz"
    path.write_bytes(raw)
    with pytest.raises(UntrustedFileError) as caught:
        read_npz(path, folder=folder, what="cache", check=schema)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message and SECRET not in message
    for word in words:
        assert word in message, message
    return message


# ---------------------------------------------------------------- the mechanism


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 6), st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=18, max_size=18),
       st.booleans())  # fmt: skip
def test_a_valid_file_reads_back_equal(rows: int, values: list[float], compressed: bool) -> None:
    arrays = {"a": np.array(values[: rows * 3], np.float32).reshape(rows, 3), "n": np.array(rows)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.npz"
        (np.savez_compressed if compressed else np.savez)(path, **arrays)  # type: ignore[operator]
        back = read_npz(path, folder=Path(tmp), what="cache", check=SCHEMA)
    assert set(back) == {"a", "n"}
    np.testing.assert_array_equal(back["a"], arrays["a"])
    assert back["a"].dtype == np.float32 and int(back["n"]) == rows


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(["float64", "float16", "int32", "uint8", "<U3", ">f4", "complex64"]), st.integers(0, 4))
def test_a_wrong_dtype_is_refused(dtype: str, rows: int) -> None:
    arrays = valid(rows)
    arrays["a"] = np.zeros((rows, 3), dtype)
    with tempfile.TemporaryDirectory() as tmp:
        refused(Path(tmp), savez(arrays), "array a", "float32")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=4).filter(lambda s: len(s) != 2 or s[1] != 3))
def test_a_wrong_shape_is_refused(shape: list[int]) -> None:
    arrays = valid()
    arrays["a"] = np.zeros(shape, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        refused(Path(tmp), savez(arrays), "array a", "shape (any, 3)")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.text(alphabet="abcxyz_/0123", min_size=1, max_size=12).filter(lambda s: s not in ("a", "n")))
def test_an_extra_member_is_refused_without_naming_it(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        refused(Path(tmp), savez({**valid(), SECRET + name: np.zeros(1)}), "unexpected member")
        a = io.BytesIO()
        np.save(a, valid()["a"])
        refused(Path(tmp), zipped({"a.npy": a.getvalue(), SECRET + name: b"x"}), "unexpected member")


@pytest.mark.parametrize("missing", ["a", "n"])
def test_a_missing_member_is_named(tmp_path: Path, missing: str) -> None:
    arrays = valid()
    del arrays[missing]
    refused(tmp_path, savez(arrays), f"lacks the array {missing}")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 5), st.data(), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_and_infinity_are_refused(rows: int, data: st.DataObject, bad: float) -> None:
    arrays = valid(rows)
    arrays["a"].flat[data.draw(st.integers(0, rows * 3 - 1))] = bad
    with tempfile.TemporaryDirectory() as tmp:
        refused(Path(tmp), savez(arrays), "array a", "NaN or infinite")


def test_object_arrays_and_pickles_are_refused_unread(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
            return (print, (SECRET,))  # would run on unpickling

    schema = ArraySchema({"a": ArraySpec("float32", (None, 3)), "n": ArraySpec("int64", ())})
    for payload in (np.array([Boom()], dtype=object), np.array([[1.0, 2.0, SECRET]], dtype=object)):
        refused(tmp_path, savez({"a": payload, "n": np.array(1)}), "array a", "Python objects", schema=schema)
    record = np.zeros(2, dtype=[("f", "f4"), ("o", "O")])
    refused(tmp_path, savez({"a": record, "n": np.array(1)}), "Python objects")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(40, 62), st.booleans())
def test_a_huge_declared_shape_in_a_tiny_file_is_refused_before_allocating(power: int, deflate: bool) -> None:
    """Declared sizes up to 2**62 bytes: reading such an array would allocate all of it first."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (2 ** (power - 2) // 3 or 1, 3)}
    members = {"a.npy": npy_bytes(header, bytes(64)), "n.npy": npy_bytes(ONE_HEADER, b"\1" + bytes(7))}
    with tempfile.TemporaryDirectory() as tmp:
        raw = zipped(members, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
        assert len(raw) < 4096
        refused(Path(tmp), raw, "declares more than")


def test_a_zip_bomb_member_is_refused_by_its_declared_size(tmp_path: Path) -> None:
    header = {"descr": "<f4", "fortran_order": False, "shape": (2**22, 3)}  # 48 MiB of zeros, deflated to ~50 KB
    raw = zipped({"a.npy": npy_bytes(header, bytes(2**22 * 12)), "n.npy": npy_bytes(ONE_HEADER, bytes(8))}, zipfile.ZIP_DEFLATED)
    path = tmp_path / "c.npz"
    path.write_bytes(raw)
    with pytest.raises(UntrustedFileError, match="declares more than 1 MiB"):
        read_npz(path, folder=tmp_path, what="cache", check=SCHEMA, max_bytes=1 << 20)


def test_a_header_that_promises_more_than_the_member_holds_is_truncated(tmp_path: Path) -> None:
    header = {"descr": "<f4", "fortran_order": False, "shape": (1000, 3)}
    raw = zipped({"a.npy": npy_bytes(header, bytes(12)), "n.npy": npy_bytes(ONE_HEADER, bytes(8))})
    refused(tmp_path, raw, "array a", "truncated")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_bytes_that_are_not_a_zip_are_one_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        refused(Path(tmp), (SECRET.encode() + raw) if not raw.startswith(b"PK") else raw, "cache")


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.data())
def test_a_truncated_zip_is_one_error(data: st.DataObject) -> None:
    raw = savez(valid(3))
    cut = data.draw(st.integers(0, len(raw) - 1))
    with tempfile.TemporaryDirectory() as tmp:
        refused(Path(tmp), raw[:cut], "cache")


def test_a_symlink_out_of_the_folder_and_other_kinds_are_refused_unopened(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    (tmp_path / "outside.npz").write_bytes(savez(valid()))
    os.symlink(tmp_path / "outside.npz", folder / "c.npz")
    with pytest.raises(UntrustedFileError, match="symlink"):
        read_npz(folder / "c.npz", folder=folder, what="cache", check=SCHEMA)
    with pytest.raises(UntrustedFileError, match="outside"):
        read_npz(tmp_path / "outside.npz", folder=folder, what="cache", check=SCHEMA)
    (folder / "c.npz").unlink()
    os.mkfifo(folder / "c.npz")  # opening it for reading would wait for a writer forever
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        read_npz(folder / "c.npz", folder=folder, what="cache", check=SCHEMA)
    (folder / "c.npz").unlink()
    (folder / "c.npz").mkdir()
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        read_npz(folder / "c.npz", folder=folder, what="cache", check=SCHEMA)


def test_too_many_members_and_a_too_large_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(savez(valid()))
    with pytest.raises(UntrustedFileError, match="more than 1 members"):
        read_npz(path, folder=tmp_path, what="cache", check=SCHEMA, max_members=1)
    with pytest.raises(UntrustedFileError, match="larger than"):
        read_npz(path, folder=tmp_path, what="cache", check=SCHEMA, max_bytes=100)


def test_header_only_reads_check_every_member_but_load_only_the_named(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    arrays = valid()
    arrays["a"][0, 0] = np.nan  # only found when read
    path.write_bytes(savez(arrays))
    assert set(read_npz(path, folder=tmp_path, what="cache", check=SCHEMA, load=("n",))) == {"n"}
    with pytest.raises(UntrustedFileError, match="NaN"):
        read_npz(path, folder=tmp_path, what="cache", check=SCHEMA)


# ---------------------------------------------------------------- surfaces: the calibration cache

CALIB = CalibrationSettings(samples=3, steps=6, keep_steps=4)
SIZE = (32, 64)


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory: pytest.TempPathFactory, loaded) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    load_or_collect(loaded, SIZE, CALIB, folder)
    (path,) = folder.iterdir()
    return path


def _calib_tampered(arrays: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    arrays = dict(arrays)
    if how == "dtype":
        arrays["detailer/1/x"] = arrays["detailer/1/x"].astype(np.float64)
    elif how == "shape":
        arrays["detailer/0/tokens"] = arrays["detailer/0/tokens"][:, :4]
    elif how == "nan":
        arrays["backbone/2/t"] = arrays["backbone/2/t"].copy()
        arrays["backbone/2/t"][0] = np.nan
    elif how == "extra":
        arrays[SECRET] = np.zeros(1)
    elif how == "missing":
        del arrays["backbone/3/y"]
    elif how == "count":
        arrays["detailer/count"] = np.array(10**12)
    elif how == "label":
        arrays["backbone/0/y"] = arrays["backbone/0/y"] + 10_000
    elif how == "rows":
        arrays["backbone/1/t"] = arrays["backbone/1/t"][:1]
    return arrays


@pytest.mark.parametrize("how", ["dtype", "shape", "nan", "extra", "missing", "count", "label", "rows", "truncated"])
def test_a_tampered_calibration_cache_is_refused_and_kept(tmp_path, monkeypatch, loaded, calib_file, how) -> None:
    path = tmp_path / calib_file.name
    if how == "truncated":
        raw = calib_file.read_bytes()[:-100]
    else:
        with np.load(calib_file) as data:  # the tool's own file, written by this test run
            raw = savez(_calib_tampered({k: data[k] for k in data.files}, how))
    path.write_bytes(raw)
    monkeypatch.setattr(calibration, "collect", lambda *a: pytest.fail("calibration ran again"))
    with pytest.raises(UntrustedFileError) as caught:
        load_or_collect(loaded, SIZE, CALIB, tmp_path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "delete it to calibrate again" in message
    assert "\n" not in message and SECRET not in message
    assert path.read_bytes() == raw  # neither deleted nor replaced


def test_a_calibration_cache_that_links_elsewhere_or_is_a_fifo_is_refused(tmp_path, monkeypatch, loaded, calib_file) -> None:
    monkeypatch.setattr(calibration, "collect", lambda *a: pytest.fail("calibration ran again"))
    os.symlink(calib_file, tmp_path / calib_file.name)  # a valid cache, but somewhere else
    with pytest.raises(UntrustedFileError, match="symlink"):
        load_or_collect(loaded, SIZE, CALIB, tmp_path)
    assert (tmp_path / calib_file.name).is_symlink()
    (tmp_path / calib_file.name).unlink()
    os.mkfifo(tmp_path / calib_file.name)
    with pytest.raises(UntrustedFileError, match="not a regular file"):
        load_or_collect(loaded, SIZE, CALIB, tmp_path)


def test_a_valid_calibration_cache_is_reused(tmp_path, monkeypatch, loaded, calib_file) -> None:
    shutil.copy(calib_file, tmp_path)
    monkeypatch.setattr(calibration, "collect", lambda *a: pytest.fail("calibration ran again"))
    batches = load_or_collect(loaded, SIZE, CALIB, tmp_path)
    assert [len(batches[r]) for r in ("backbone", "detailer")] == [4, 4]
    assert batches["detailer"][0]["tokens"].shape == (6, 8, 96)


# ---------------------------------------------------------------- surfaces: the yardstick reference

YARDSTICK = yardstick.Yardstick(num_samples=2, batch=2)


@pytest.fixture(scope="module")
def demo():
    from dip_export.checkpoint import resolve_model
    from dip_export.runtime.backends import BackendSpec, make_torch_engine

    loaded = resolve_model(None, None)
    return make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu")), loaded


def _reference(demo) -> yardstick.ReferenceImages:
    """The reference `yardstick.measure` reads first, on the settings it would use."""
    from dip_export.generate import make_plan
    from dip_export.sampling import SamplerSettings

    _, loaded = demo
    plan = make_plan(loaded.config.num_classes, num_samples=YARDSTICK.num_samples, seed=YARDSTICK.seed)
    return yardstick.reference_images(loaded, plan, YARDSTICK, SamplerSettings(cfg=YARDSTICK.cfg, shift=YARDSTICK.shift))


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory, demo) -> Path:
    folder = tmp_path_factory.mktemp("ys")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yardstick, "REFERENCE_STEPS", 8)
        mp.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 10.0)
        mp.setattr(yardstick, "CACHE", folder)
        _reference(demo)
    (path,) = folder.iterdir()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(yardstick, "REFERENCE_STEPS", 8)
    monkeypatch.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 10.0)
    monkeypatch.setattr(yardstick, "CACHE", tmp_path / "ys")
    (tmp_path / "ys").mkdir()
    monkeypatch.setattr(yardstick.ref_solver, "converged", lambda *a, **k: pytest.fail("the reference was recomputed"))
    return tmp_path / "ys"


@pytest.mark.parametrize("how", ["images_shape", "x_inf", "label_pickle", "extra", "missing", "not_a_zip"])
def test_a_tampered_yardstick_reference_is_refused_and_kept(cache, demo, reference_file, how) -> None:
    with np.load(reference_file) as data:  # the tool's own file, written by this test run
        arrays = {k: data[k] for k in data.files}
    if how == "images_shape":
        arrays["images"] = arrays["images"][:, :16]
    elif how == "x_inf":
        arrays["x"] = arrays["x"].copy()
        arrays["x"][1, 0, 0, 0] = np.inf
    elif how == "label_pickle":
        arrays["label"] = np.array([SECRET, 1], dtype=object)
    elif how == "extra":
        arrays[SECRET] = np.zeros(3)
    elif how == "missing":
        del arrays["x"]
    raw = SECRET.encode() * 10 if how == "not_a_zip" else savez(arrays)
    path = cache / reference_file.name
    path.write_bytes(raw)
    with pytest.raises(UntrustedFileError) as caught:
        yardstick.measure(*demo, YARDSTICK, ["euler"], [2])
    message = str(caught.value)
    assert message.startswith(str(path)) and "delete it to compute the reference again" in message
    assert "\n" not in message and SECRET not in message
    assert path.read_bytes() == raw


def test_a_valid_yardstick_reference_is_reused_and_a_linked_one_refused(cache, demo, reference_file) -> None:
    shutil.copy(reference_file, cache)
    assert _reference(demo).label.startswith("ab3 ")
    (cache / reference_file.name).unlink()
    os.symlink(reference_file, cache / reference_file.name)
    with pytest.raises(UntrustedFileError, match="symlink"):
        yardstick.measure(*demo, YARDSTICK, ["euler"], [2])


# ---------------------------------------------------------------- surfaces: resumed shards


def test_a_shard_with_a_huge_declared_shape_or_linked_elsewhere_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "o.npz"
    folder = parts_dir(out)
    folder.mkdir()
    header = {"descr": "|u1", "fortran_order": False, "shape": (2, 2**40, 32, 3)}
    (folder / "shard-000000.npz").write_bytes(zipped({
        "arr_0.npy": npy_bytes(header, bytes(64)),
        "indices.npy": npy_bytes({"descr": "<i8", "fortran_order": False, "shape": (2,)}, bytes(8) + b"\1" + bytes(7)),
    }))  # fmt: skip
    with pytest.raises(DipError, match=r"shard-000000\.npz.*delete it and rerun"):
        check_finished_shards(out, 2, 2, (32, 32, 3))
    (folder / "shard-000000.npz").unlink()
    (tmp_path / "elsewhere.npz").write_bytes(savez({"arr_0": np.zeros((2, 32, 32, 3), np.uint8), "indices": np.arange(2)}))
    os.symlink(tmp_path / "elsewhere.npz", folder / "shard-000000.npz")
    with pytest.raises(DipError, match="symlink"):
        check_finished_shards(out, 2, 2, (32, 32, 3))


# ---------------------------------------------------------------- surfaces: the --backend auto cache


def _within(seconds: float, call: Callable[[], None], unblock: Path) -> BaseException | None:
    """Run `call` in a thread; a call still running after `seconds` fails the test (a writer unblocks it)."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as err:  # handed to the test thread
            caught.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(unblock, os.O_WRONLY | os.O_NONBLOCK)  # releases a reader blocked on opening the FIFO
        os.close(fd)
        thread.join(5)
        pytest.fail(f"still running after {seconds} s: blocked on the FIFO")
    return caught[0] if caught else None


def test_a_fifo_as_the_auto_backend_cache_is_refused_before_measuring(tmp_path: Path, loaded) -> None:
    fifo = tmp_path / autobackend.CACHE_FILE
    os.mkfifo(fifo)
    err = _within(30, lambda: autobackend.choose_backend(
        loaded, "id", (32, 32), 1, torch.device("cpu"), make=lambda spec: pytest.fail("measuring started"), root=tmp_path,
    ), fifo)  # fmt: skip
    assert isinstance(err, DipError) and "is a FIFO" in str(err) and str(fifo) in str(err)
    assert "\n" not in str(err)
    assert _within(30, lambda: autobackend._read_cache(fifo) and None, fifo) is None  # the reader alone: no wait
    assert fifo.exists() and not fifo.is_file()  # left as it was


def test_a_symlink_as_the_auto_backend_cache_is_refused_before_measuring(tmp_path: Path, loaded) -> None:
    (tmp_path / "other.json").write_text("{}")
    os.symlink(tmp_path / "other.json", tmp_path / autobackend.CACHE_FILE)
    with pytest.raises(DipError, match="is a symlink"):
        autobackend.choose_backend(loaded, "id", (32, 32), 1, torch.device("cpu"),
                                   make=lambda spec: pytest.fail("measuring started"), root=tmp_path)  # fmt: skip


@settings(max_examples=8, deadline=None)
@given(st.integers(4, 48).map(lambda mib: mib << 20), st.sampled_from(["uint8", "float32", "int64"]))
def test_a_zeroed_array_packed_far_below_its_size_is_refused_before_reading(tmp_path_factory, nbytes, dtype):
    from numpy.lib import format as npy

    folder = tmp_path_factory.mktemp("bomb")
    n = nbytes // np.dtype(dtype).itemsize
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n,)})
    path = folder / "c.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("a.npy", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        chunk = bytes(1 << 20)
        for _ in range(n * np.dtype(dtype).itemsize >> 20):
            member.write(chunk)
    schema = ArraySchema({"a": ArraySpec(dtype, (None,))})
    with pytest.raises(UntrustedFileError, match="unpacks to over"):
        read_npz(path, folder=folder, what="cache", check=schema)
