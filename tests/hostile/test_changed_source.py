"""A model's identity is the content of the bytes its weights were read from: a checkpoint changed after it was
read (in place, or replaced by another file under its name) is refused wherever the identity is asked for (an
on-the-fly export's label, a pipeline's content key), never hashed in place of what was read."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dip_export import DiPPipeline
from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint, model_identity
from dip_export.errors import DipError
from dip_export.export.onnx_export import export_onnx, source_info
from dip_export.untrusted import ChangedFileError, sha256_file

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _rewrite_in_place(path: Path, offset: int, keep_times: bool) -> None:
    """One byte of `path` changed where it lies (same inode, same size), its times put back when `keep_times`."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    with path.open("r+b") as f:
        f.write(data)
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _change(path: Path, offset: int, replace: bool, keep_times: bool) -> None:
    """One byte of `path` changed: in place, or in a copy moved in under its name with the times of the one read."""
    if not replace:
        _rewrite_in_place(path, offset, keep_times)
        return
    other = path.with_name("other" + path.suffix)
    shutil.copyfile(path, other)
    _rewrite_in_place(other, offset, keep_times=False)
    stat = path.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    other.replace(path)


@FAST
@given(offset=st.integers(0, 1 << 30), keep_times=st.booleans(), replace=st.booleans())
def test_a_checkpoint_changed_after_it_was_read_is_refused_by_every_identity(
    tmp_path: Path, offset: int, keep_times: bool, replace: bool
) -> None:
    path = tmp_path / "model.safetensors"
    shutil.copyfile(DEMO_CHECKPOINT, path)
    loaded = load_checkpoint(path)
    as_read = sha256_file(path)
    assert loaded.source_sha256() == as_read and source_info(loaded)["sha256"] == as_read
    assert loaded.identity == model_identity(path, "ema", loaded.config)  # unchanged: the file's own content
    _change(path, offset, replace, keep_times)
    for ask in (lambda: loaded.identity, loaded.source_sha256, lambda: source_info(loaded)):
        with pytest.raises(ChangedFileError, match=r"changed after it was read; load it again$"):
            ask()


def test_a_pipeline_whose_checkpoint_was_replaced_after_load_neither_exports_nor_keys_on_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ONNX backend exports on the first call, from the weights read at load: the export would hold the old
    weights; labelled with the new file's content, a later run of the new file would reuse it. It is refused."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mine.safetensors"
    shutil.copyfile(DEMO_CHECKPOINT, path)
    halved = {k: v * 0.5 for k, v in load_file(str(DEMO_CHECKPOINT)).items()}
    pipe = DiPPipeline.load(path, backend="onnx", device="cpu")
    torch_pipe = DiPPipeline.load(path, backend="torch", device="cpu")
    with safe_open(str(DEMO_CHECKPOINT), "pt") as f:
        metadata = f.metadata()
    save_file(halved, str(tmp_path / "new.safetensors"), metadata=metadata)
    (tmp_path / "new.safetensors").replace(path)
    monkeypatch.setattr("torch.onnx.export", lambda *a, **k: pytest.fail("traced a model whose file has changed"))
    with pytest.raises(DipError, match="changed after it was read"):  # before tracing, not after the export
        pipe(classes=[3], seeds=[5], steps=2, sampler="euler")
    with pytest.raises(DipError, match="changed after it was read"):
        export_onnx(torch_pipe.source.loaded, image_size=32, output_dir=tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
    with pytest.raises(DipError, match="changed after it was read"):
        torch_pipe.source.identity  # noqa: B018 (the content key of resume and --backend auto)
    assert sorted((tmp_path / "engines").rglob("*.onnx")) == []  # no export labelled with the new file
    fresh = DiPPipeline.load(path, backend="torch", device="cpu")  # loaded again: the new file, its own identity
    assert fresh.source.identity.startswith(sha256_file(path))


@FAST
@given(offsets=st.lists(st.integers(0, 1 << 20), min_size=1, max_size=4), replace=st.booleans())
def test_a_file_rewritten_keeping_its_size_and_times_is_hashed_anew_in_the_same_process(
    tmp_path: Path, offsets: list[int], replace: bool
) -> None:
    """The hash cache is keyed by the file as it is (inode and change time too): `cp -p` or `touch -r` over a file
    never gives back the hash of the bytes it held before, and a model loaded again has the new content's identity."""
    path = tmp_path / "model.safetensors"
    shutil.copyfile(DEMO_CHECKPOINT, path)
    first = load_checkpoint(path).identity
    for offset in offsets:
        _change(path, offset, replace, keep_times=True)
        assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    changed = path.read_bytes() != DEMO_CHECKPOINT.read_bytes()
    try:
        again = load_checkpoint(path).identity
    except DipError:  # the flipped byte made the file unreadable: nothing to compare
        return
    assert (again != first) == changed
