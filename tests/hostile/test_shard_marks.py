"""A shard is taken only when it carries this tool's mark under the owner key (over the run's settings digest and
the bytes of its arrays), and is read strictly (`untrusted.read_npz`: members exactly the array's bytes, exactly the
expected members, declared sizes checked before anything is unpacked); anything else is refused in one line naming
it, on the resume pre-flight, at the merge and through dip-sample --resume, and left as it is."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export.distributed import (
    SETTINGS_FILE,
    World,
    check_finished_shards,
    check_settings,
    parts_dir,
    run_settings,
    run_sharded,
    settings_digest,
    shard_label,
)
from dip_export.errors import DipError
from dip_export.generate import SamplePlan
from dip_export.untrusted import ArraySchema, ArraySpec, UntrustedFileError, read_npz
from tests.test_hostile import one_line, sample

N, BATCH, SIZE = 4, 2, 4  # 4 images in 2 shards of one batch each
PLAN = SamplePlan(list(range(N)), [i % 10 for i in range(N)])
RUN = {"cfg": 1.5, "steps": 2}
KINDS = ("forged run string", "changed image byte", "trailing bytes", "extra member", "wrong key")


def _make(part: SamplePlan) -> np.ndarray:
    return (np.arange(len(part) * SIZE * SIZE * 3, dtype=np.int64).reshape(len(part), SIZE, SIZE, 3) % 251).astype(np.uint8)


def _run(out: Path, *, preflight: bool = True) -> np.ndarray | None:
    if preflight:  # as dip-sample --resume calls them, before any work
        check_settings(parts_dir(out), run_settings(RUN, PLAN, BATCH, 1), World())
        check_finished_shards(out, N, BATCH, (SIZE, SIZE, 3))
    return run_sharded(PLAN, out, world=World(), settings=RUN, batch_size=BATCH, shard_batches=1, make_images=_make)


def _npy(array: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _write(path: Path, members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> None:
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", compress) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    path.write_bytes(f.getvalue())


def _mac(contents: dict, key: bytes) -> str:
    text = json.dumps(contents, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def _digest(array: np.ndarray) -> str:
    d = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    d.update(np.ascontiguousarray(array).tobytes())
    return d.hexdigest()


def _tamper(folder: Path, index: int, kind: str, position: int, extra: int) -> None:
    """Shard `index` changed in one way an attacker could: everything public (settings.json) is used."""
    shard = folder / f"shard-{index:06d}.npz"
    members = _members(shard)
    images = np.load(io.BytesIO(members["arr_0.npy"]))
    indices = np.arange(index * BATCH, (index + 1) * BATCH, dtype=np.int64)
    digest = settings_digest(json.loads((folder / SETTINGS_FILE).read_text()))
    if kind == "forged run string":  # other images, with the public run string and a made-up mark
        members["arr_0.npy"] = _npy(np.full_like(images, 255))
        members["run.npy"] = _npy(np.array(shard_label(digest)))
        members["mac.npy"] = _npy(np.array(hashlib.sha256(digest.encode()).hexdigest(), "<U64"))
    elif kind == "changed image byte":
        flat = images.reshape(-1).copy()
        flat[position % flat.size] ^= 1 + position % 255
        members["arr_0.npy"] = _npy(flat.reshape(images.shape))
    elif kind == "trailing bytes":
        members["arr_0.npy"] += b"\0" * extra
    elif kind == "extra member":
        members["other.npy"] = _npy(np.zeros(extra, np.uint8))
    elif kind == "wrong key":  # the right scheme and contents, another user's key
        contents = {"written_by": "dip-export shard v1", "settings": digest, "images": _digest(np.full_like(images, 7)),
                    "indices": _digest(indices)}  # fmt: skip
        members["arr_0.npy"] = _npy(np.full_like(images, 7))
        members["mac.npy"] = _npy(np.array(_mac(contents, bytes(range(32))), "<U64"))
    _write(shard, members)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), index=st.integers(0, 1), position=st.integers(0, 10**6), extra=st.integers(1, 4096),
       preflight=st.booleans())  # fmt: skip
def test_a_tampered_shard_is_refused_naming_it_and_kept(
    tmp_path_factory: pytest.TempPathFactory, kind: str, index: int, position: int, extra: int, preflight: bool
) -> None:
    out = tmp_path_factory.mktemp("marks") / "s.npz"
    first = _run(out)
    folder = parts_dir(out)
    _tamper(folder, index, kind, position, extra)
    before = _contents(folder)
    with pytest.raises(DipError) as caught:  # pre-flight, or (without it) the merge itself
        _run(out, preflight=preflight)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and f"shard-{index:06d}.npz" in message, message
    assert _contents(folder) == before  # nothing deleted, nothing replaced
    (folder / f"shard-{index:06d}.npz").unlink()  # the control: remade by the tool, the run resumes as before
    again = _run(out, preflight=preflight)
    assert first is not None and again is not None and np.array_equal(first, again)


def test_an_untampered_folder_resumes_and_a_shard_moved_to_another_index_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    first, again = _run(out), _run(out)
    assert first is not None and again is not None and np.array_equal(again, first)
    folder = parts_dir(out)
    (folder / "shard-000001.npz").write_bytes((folder / "shard-000000.npz").read_bytes())
    with pytest.raises(DipError, match=r"shard-000001\.npz"):
        _run(out)


def test_a_huge_declared_member_is_refused_before_anything_is_unpacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "s.npz"
    _run(out)
    shard = parts_dir(out) / "shard-000001.npz"
    members = _members(shard)
    members["arr_0.npy"] += b"\0" * 1000
    _write(shard, members, zipfile.ZIP_DEFLATED)
    raw = bytearray(shard.read_bytes())
    central = raw.index(b"PK\x01\x02")  # the arr_0 entry comes first: its declared unpacked size made 2 GB
    struct.pack_into("<I", raw, central + 24, 2_000_000_000)
    struct.pack_into("<I", raw, 22, 2_000_000_000)  # and in its local header
    shard.write_bytes(bytes(raw))
    first = parts_dir(out) / "shard-000000.npz"
    kept = first.read_bytes()
    first.unlink()  # only the huge one left to read
    opened: list[object] = []  # the members unpacked
    real_open = zipfile.ZipFile.open

    def recording_open(self: zipfile.ZipFile, name: object, *args: object, **kwargs: object) -> object:
        opened.append(name)
        return real_open(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    with pytest.raises(DipError, match=r"shard-000001\.npz.*(unpacks to over|declares more than|needs about)"):
        check_finished_shards(out, N, BATCH, (SIZE, SIZE, 3))
    assert opened == []  # refused on the zip's record alone
    first.write_bytes(kept)
    shard.unlink()
    check_finished_shards(out, N, BATCH, (SIZE, SIZE, 3))  # the control: a real shard is unpacked (and taken)
    assert opened


SCHEMA = ArraySchema({"a": ArraySpec("float32", (None,))})


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=0, max_size=20), extra=st.binary(min_size=1, max_size=64),
       compress=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))  # fmt: skip
def test_read_npz_takes_exact_members_only(
    tmp_path_factory: pytest.TempPathFactory, values: list, extra: bytes, compress: int
) -> None:
    folder = tmp_path_factory.mktemp("npz")
    path = folder / "c.npz"
    array = np.array(values, np.float32)
    _write(path, {"a.npy": _npy(array)}, compress)
    assert np.array_equal(read_npz(path, folder=folder, what="cache", check=SCHEMA)["a"], array)  # the control
    _write(path, {"a.npy": _npy(array) + extra}, compress)
    with pytest.raises(UntrustedFileError, match=r"c\.npz: array a of the cache holds bytes past its array"):
        read_npz(path, folder=folder, what="cache", check=SCHEMA)
    _write(path, {"a.npy": _npy(array), "b.npy": _npy(array)}, compress)
    with pytest.raises(UntrustedFileError, match="unexpected member"):
        read_npz(path, folder=folder, what="cache", check=SCHEMA)


ARGS = ["--num-samples", "4", "--batch-size", "2", "--shard-batches", "1", "--steps", "2", "--device", "cpu", "--resume"]


@pytest.mark.parametrize("kind", ["changed image byte", "trailing bytes"])
def test_dip_sample_resume_refuses_a_tampered_shard(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "r.npz"
    code, err = sample(*ARGS, "--out", out)
    assert code == 0, err
    made = np.load(out)["arr_0"]
    folder = parts_dir(out)
    _tamper(folder, 1, kind, 5, 100)
    before = _contents(folder)
    out.unlink()
    code, err = sample(*ARGS, "--out", out)
    one_line(code, err, 1, "shard-000001.npz")
    assert not out.exists() and _contents(folder) == before
    (folder / "shard-000001.npz").unlink()
    code, err = sample(*ARGS, "--out", out)
    assert code == 0, err
    assert np.array_equal(np.load(out)["arr_0"], made)
