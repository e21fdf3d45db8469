"""A torch checkpoint re-zipped with compression holds the same weights: only a zip whose records are all stored
(as torch.save writes them) is memory-mapped; any other is read into memory through torch's zip reader, which
inflates its records. Mapping a compressed record would read its compressed bytes as tensor data (NaN, or finite
garbage that loads silently). Every surface: the loader, dip-sample, the Python API."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.budget import BudgetError, zip_mappable
from dip_export.checkpoint import build_model, load_checkpoint
from dip_export.config import DiPConfig
from dip_export.errors import CheckpointError
from tests.test_hostile import one_line, sample

FEW = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


TINY = DiPConfig(hidden_size=32, num_heads=2, depth=1, patch_size=2, num_classes=3, detailer_width=4, image_size=16)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DiP's weights as torch.save writes them (every record stored)."""
    path = tmp_path_factory.mktemp("zip") / "plain.pt"
    torch.save(build_model(TINY, seed=3).state_dict(), path)
    return path


def _rezip(source: Path, target: Path, compressed: set[str] | None = None) -> Path:
    """`source`'s records in a new zip, those named in `compressed` (all when None) deflated."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for name in src.namelist():
            deflate = compressed is None or name in compressed
            out.writestr(name, src.read(name), zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
    return target


def _names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_only_a_zip_of_stored_records_is_mapped(plain: Path, tmp_path: Path) -> None:
    assert zip_mappable(plain)
    assert not zip_mappable(_rezip(plain, tmp_path / "deflate.pt"))
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert not zip_mappable(legacy)


@FEW
@given(data=st.data())
def test_any_compressed_records_load_the_same_weights(plain: Path, tmp_path: Path, data: st.DataObject) -> None:
    names = _names(plain)
    chosen = data.draw(st.sets(st.sampled_from(names), min_size=1))
    path = _rezip(plain, tmp_path / f"some-{len(chosen)}.pt", chosen)
    assert zip_mappable(path) is False
    original, rezipped = load_checkpoint(plain), load_checkpoint(path)
    _same_weights(original.model, rezipped.model)
    for key, value in torch.load(plain, weights_only=True).items():
        assert torch.equal(rezipped.model.state_dict()[key], value), key


def test_dip_sample_gives_the_same_pixels(plain: Path, tmp_path: Path) -> None:
    path = _rezip(plain, tmp_path / "deflate.pt")
    outs = []
    for source in (plain, path):
        out = tmp_path / f"{source.stem}.npz"
        code, err = sample(source, "--steps", "2", "--num-samples", "2", "--image-size", "16", "--out", out)
        assert code == 0, err
        with np.load(out) as found:
            outs.append({k: found[k] for k in found.files})
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key], outs[1][key])


def test_the_pipeline_gives_the_same_weights_and_images(plain: Path, tmp_path: Path) -> None:
    path = _rezip(plain, tmp_path / "deflate.pt")
    original, rezipped = DiPPipeline.load(plain, device="cpu"), DiPPipeline.load(path, device="cpu")
    assert original.source.loaded is not None and rezipped.source.loaded is not None
    _same_weights(original.source.loaded.model, rezipped.source.loaded.model)
    a = original(classes=[1, 2], seeds=[3, 4], steps=2, image_size=16)
    b = rezipped(classes=[1, 2], seeds=[3, 4], steps=2, image_size=16)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _deflated(plain: Path, out: Path, record: str | None = None, extra: int = 0, added: int = 0) -> Path:
    """`plain` re-zipped with every record deflated; `record` grown by `extra` zero bytes; a record of `added`
    zero bytes that no pickle names put beside them."""
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data + bytes(extra) if name == record else data)
        if added:
            prefix = src.namelist()[0].split("/", 1)[0]
            with dst.open(f"{prefix}/padding", "w", force_zip64=True) as f:
                for _ in range(0, added, 1 << 20):
                    f.write(bytes(min(1 << 20, added)))
    return out


@FEW
@given(data=st.data())
def test_a_compressed_record_larger_than_its_storage_is_refused_unread(
    tmp_path_factory: pytest.TempPathFactory, plain: Path, data: st.DataObject
) -> None:
    record = data.draw(st.sampled_from([n for n in _names(plain) if "/data/" in n]))
    extra = data.draw(st.integers(0, 1 << 16))
    path = _deflated(plain, tmp_path_factory.mktemp("deflated") / "big.pt", record, extra)
    if extra == 0:  # re-zipped as it was: read (into memory, not mapped) and equal
        loaded = load_checkpoint(path)
        assert loaded.config is not None
        return
    with zipfile.ZipFile(path) as z:
        held = z.getinfo(record).file_size
    with pytest.raises(BudgetError) as err:
        load_checkpoint(path)
    assert str(err.value) == (
        f"{path}: a compressed tensor record inflates to {held} bytes where its storage needs {held - extra} "
        "(torch.save writes each storage's bytes exactly); refusing to load it"
    )


def test_a_large_compressed_record_no_pickle_names_is_refused(tmp_path: Path, plain: Path) -> None:
    from dip_export.budget import MAX_PICKLE_ARGUMENT

    small = _deflated(plain, tmp_path / "small.pt", added=1 << 20)  # a small one torch never reads: harmless
    assert load_checkpoint(small).config is not None
    path = _deflated(plain, tmp_path / "bomb.pt", added=MAX_PICKLE_ARGUMENT + (1 << 20))
    assert path.stat().st_size < small.stat().st_size + (1 << 20)  # deflated, it adds little on disk
    with pytest.raises(BudgetError, match="a compressed record that holds no tensor inflates to"):
        load_checkpoint(path)
    code, err = sample(path, "--steps", "2", "--num-samples", "1", "--image-size", "32", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "a compressed record that holds no tensor")
    assert not (tmp_path / "o.npz").exists()
    with pytest.raises(BudgetError, match="holds no tensor"):
        DiPPipeline.load(path, device="cpu")


KEYS = st.text(st.characters(codec="ascii", exclude_characters="\0"), min_size=1, max_size=30)
OTHER_KEYS = KEYS.filter(lambda k: "s_embedder" not in k and not k.startswith(("denoiser.", "ema_denoiser.")))  # no DiP


def _saved(path: Path, keys: list[str], deflated: bool) -> Path:
    """A dict of small tensors under `keys`, as torch.save writes it, then (when `deflated`) re-zipped compressed."""
    stored = path.with_suffix(".stored.pt")
    torch.save({k: torch.full((4, i + 1), float(i)) for i, k in enumerate(keys)}, stored)
    return _rezip(stored, path) if deflated else stored


@FEW
@given(keys=st.lists(OTHER_KEYS, min_size=1, max_size=5, unique=True), deflated=st.booleans())
def test_a_compressed_zip_naming_no_dip_is_refused_before_torch_reads_it(
    tmp_path_factory: pytest.TempPathFactory, keys: list[str], deflated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever its keys, a zip whose pickle names no `s_embedder` holds no DiP weights: the message is the same
    whether it is stored or compressed, and a compressed one (which torch would inflate whole) is never given to torch."""
    path = _saved(tmp_path_factory.mktemp("keys") / "c.pt", keys, deflated)
    with monkeypatch.context() as patched, pytest.raises(CheckpointError) as err:
        if deflated:
            patched.setattr(torch, "load", _never)
        load_checkpoint(path)
    assert str(err.value) == f"{path}: no DiP weights found (no key s_embedder.proj.weight)"


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("torch.load was called")


@FEW
@given(key=KEYS.map(lambda k: f"{k[:10]}s_embedder{k[10:]}"))
def test_a_compressed_zip_naming_s_embedder_is_read_by_torch(
    tmp_path_factory: pytest.TempPathFactory, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any text holding `s_embedder` (a key, a prefixed key, a module name of a whole model) leaves the file to torch."""
    path = _saved(tmp_path_factory.mktemp("keys") / "c.pt", [key], deflated=True)
    calls: list[Path] = []
    real = torch.load
    with monkeypatch.context() as patched, pytest.raises(CheckpointError):  # not a DiP all the same: no weights
        patched.setattr(torch, "load", lambda f, **kw: calls.append(f) or real(f, **kw))
        load_checkpoint(path)
    assert calls == [path]


def test_a_large_compressed_record_of_no_dip_is_never_inflated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small file whose one tensor is a large deflated record, under a key that is no DiP's: refused on every
    surface before the record is inflated."""
    stored = tmp_path / "big.stored.pt"
    torch.save({"other.weight": torch.zeros(16 << 20)}, stored)  # 64 MiB of zeros
    path = _rezip(stored, tmp_path / "big.pt")
    stored.unlink()
    assert path.stat().st_size < 1 << 20
    monkeypatch.setattr(torch, "load", _never)
    with pytest.raises(CheckpointError, match="no DiP weights found"):
        DiPPipeline.load(path, device="cpu")
    code, err = sample(path, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "no DiP weights found")
    assert not (tmp_path / "o.npz").exists()
