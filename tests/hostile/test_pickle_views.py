"""Tensors of a pickle checkpoint are views of storages: each storage counts once, however many tensors view it
(tied weights, one flat buffer), and each tensor is bounded by its shape, not its storage, before any work on it.
A view that repeats its storage's elements (`torch.zeros(1).expand(n)`: 4 bytes on disk, n elements of work) is
refused by the scan before torch reads the file; a tensor the file gives attributes (which could replace its
methods, `t.float`, `t.is_floating_point`) is refused by the reader. Every surface: dip-sample, dip-bench, the
Python API."""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.budget import BadView, BudgetError, check_checkpoint_tensors, pickle_declared, pickle_declared_bytes
from dip_export.checkpoint import load_checkpoint, select_state_dict
from dip_export.errors import CheckpointError
from tests.hostile.measured import measured_load
from tests.test_hostile import one_line, run, sample

HUGE = 1 << 29  # elements of the expanded view: 2 GiB of float32 by its shape, 4 bytes of storage
REPEATS = "repeats elements of its storage"
ATTRIBUTES = ("sets attributes on a tensor", "not a plain tensor")
FIXED = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


class Weird:
    """A class of the file's own: a weights-only load refuses it, the inert reader makes it a placeholder."""


def _data_pkl(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


def _sample_args(golden, out: Path) -> list[str | Path]:
    return ["--steps", "2", "--num-samples", "1", "--image-size", golden.size, "--out", out]


# ------------------------------------------------------------------ a view's shape, not its storage


@pytest.mark.parametrize("name", ["junk", "s_embedder.proj.bias"])
def test_an_expanded_view_is_refused_by_the_scan_on_every_surface(
    tmp_path: Path, golden, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "expand.pt"
    torch.save({**golden.state, name: torch.zeros(1).expand(HUGE)}, path)
    assert path.stat().st_size < HUGE // 16  # the view is 2 GiB by its shape; the file holds its 4-byte storage
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "1G")
    with pytest.raises(BudgetError, match=REPEATS) as raised:
        check_checkpoint_tensors(path)
    assert str(raised.value).startswith(f"{path}: ")
    code, err = sample(path, *_sample_args(golden, tmp_path / "o.npz"))
    one_line(code, err, 1, str(path), REPEATS)
    code, err = run(cli.bench_main, path, "--backends", "torch", "--steps", "1", "--warmup", "0", "--repeats", "1")
    one_line(code, err, 1, REPEATS)
    with pytest.raises(BudgetError, match=REPEATS):
        DiPPipeline.load(path, device="cpu")
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("surface", ["cli", "api"])
def test_the_refusal_allocates_nothing_of_the_views_size(tmp_path: Path, golden, surface: str) -> None:
    path = tmp_path / "expand.pt"
    torch.save({**golden.state, "s_embedder.proj.bias": torch.zeros(1).expand(HUGE)}, path)
    args = [path, *_sample_args(golden, tmp_path / "o.npz")] if surface == "cli" else [path]
    lines, done = measured_load(surface, args)
    assert lines.get("exit", lines.get("refused")) in ("1", "BudgetError"), done.stdout + done.stderr
    assert int(lines["grew"]) < 200 << 10, lines  # KiB: the view alone would be 2 GiB (a bool mask of it 512 MiB)
    if surface == "cli":
        assert len(done.stderr.strip().splitlines()) == 1 and REPEATS in done.stderr, done.stderr


@FIXED
@given(numel=st.integers(1, 12), data=st.data())
def test_the_scan_refuses_exactly_the_views_that_repeat_elements(numel: int, data: st.DataObject) -> None:
    """Any view torch itself makes of a storage (as_strided within it, zero strides and overlaps included)."""
    dims = data.draw(st.integers(1, 3))
    size = data.draw(st.lists(st.integers(0, 4), min_size=dims, max_size=dims))
    stride = data.draw(st.lists(st.integers(0, 4), min_size=dims, max_size=dims))
    extent = sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if 0 not in size else 0
    offset = data.draw(st.integers(0, max(numel - 1 - extent, 0)))
    elements = torch.Size(size).numel()
    if elements and offset + extent >= numel:
        return  # torch refuses to make it
    view = torch.arange(numel, dtype=torch.float32).as_strided(size, stride, offset)
    repeats = elements > 0 and (elements > numel or any(s == 0 for n, s in zip(size, stride, strict=True) if n > 1))
    overlapping = elements > 0 and len({int(i) for i in view.flatten()}) < elements
    stream = io.BytesIO(_data_pkl({"w": view}))
    if repeats:
        with pytest.raises(BadView, match=r"repeats elements|more than the"):
            pickle_declared(stream)
    else:
        found = pickle_declared(stream)
        assert found.views == elements * 4 and found.bytes == numel * 4
        assert overlapping or elements <= numel


def test_a_view_past_its_storage_is_refused(tmp_path: Path, golden) -> None:
    class Past(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if obj == "S" else None

    class Rebuilt:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, ("S", 2, (3,), (1,), False, {}))

    buf = io.BytesIO()
    Past(buf, protocol=2).dump({"w": Rebuilt()})
    with pytest.raises(BadView, match="reaches past the end of its storage"):
        pickle_declared(io.BytesIO(buf.getvalue()))


# ------------------------------------------------------------------ views sharing one storage


def _flat(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor a view of one flat buffer (as a flat-parameter optimiser keeps them)."""
    flat, views, at = torch.cat([v.flatten() for v in state.values()]), {}, 0
    for k, v in state.items():
        views[k] = flat[at : at + v.numel()].view(v.shape)
        at += v.numel()
    return views


def test_a_checkpoint_of_views_of_one_buffer_loads_and_samples(tmp_path: Path, golden) -> None:
    path = tmp_path / "views.pt"
    torch.save(_flat(golden.state), path)
    check_checkpoint_tensors(path)
    loaded = load_checkpoint(path)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, golden.state[k]), k
    code, err = sample(path, *_sample_args(golden, tmp_path / "o.npz"))
    assert code == 0, err
    assert (tmp_path / "o.npz").is_file()
    DiPPipeline.load(path, device="cpu")


def test_tied_weights_load(tmp_path: Path, golden) -> None:
    state = dict(golden.state)
    key = next(k for k in state if k.endswith("q_norm.weight"))
    other = next(k for k in state if k.endswith("k_norm.weight") and state[k].shape == state[key].shape)
    state[other] = state[key]  # one tensor under two names
    path = tmp_path / "tied.pt"
    torch.save(state, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.model.state_dict()[other], golden.state[key])


@FIXED
@given(views=st.integers(1, 300), elements=st.integers(1, 1 << 16), whole=st.booleans())
def test_each_storage_counts_once_however_many_tensors_view_it(tmp_path: Path, views: int, elements: int, whole: bool) -> None:
    buffer = torch.zeros(elements)
    step = max(elements // views, 1)
    state = {f"v{i}": buffer if whole else buffer[(i * step) % elements :] for i in range(views)}
    path = tmp_path / "shared.pt"
    torch.save(state, path)
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert pickle_declared_bytes(io.BytesIO(data)) == elements * 4
    tensors = {id(v): v for v in state.values()}  # one tensor under many names is pickled once
    assert pickle_declared(io.BytesIO(data)).views == sum(v.numel() * 4 for v in tensors.values())
    check_checkpoint_tensors(path)  # not refused as declaring more than it holds


# ------------------------------------------------------------------ tensors carry no attributes


def _dressed(golden, path: Path, name: str, value: object, long: bool = False) -> Path:
    state = dict(golden.state)
    tensor = state["s_embedder.proj.bias"].clone()
    tensor = tensor.long() if long else tensor
    setattr(tensor, name, value)
    state["s_embedder.proj.bias"] = tensor
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("name", "value", "long"),
    [("float", Weird, False), ("is_floating_point", Weird, True), ("is_floating_point", True, True), ("float", 1, False)],
)
def test_a_tensor_with_attributes_is_refused_on_every_surface(
    tmp_path: Path, golden, name: str, value: object, long: bool
) -> None:
    path = _dressed(golden, tmp_path / "spoof.pt", name, value, long)
    code, err = sample(path, *_sample_args(golden, tmp_path / "o.npz"))
    one_line(code, err, 1, str(path))
    assert any(words in err for words in ATTRIBUTES), err
    code, err = run(cli.bench_main, path, "--backends", "torch", "--steps", "1", "--warmup", "0", "--repeats", "1")
    one_line(code, err, 1, str(path))
    with pytest.raises(CheckpointError, match="|".join(ATTRIBUTES)):
        DiPPipeline.load(path, device="cpu")
    assert not (tmp_path / "o.npz").exists()


NAMES = st.sampled_from(["float", "is_floating_point", "to", "numel", "dim", "size", "isfinite", "clone", "detach"]) | (
    st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).map(lambda n: f"a_{n}")
)
VALUES = st.integers() | st.booleans() | st.text(max_size=8) | st.just(Weird) | st.none() | st.floats(allow_nan=False)


@FIXED
@given(name=NAMES, value=VALUES, long=st.booleans())
def test_any_attribute_on_any_weight_is_refused(tmp_path: Path, golden, name: str, value: object, long: bool) -> None:
    try:
        path = _dressed(golden, tmp_path / "a.pt", name, value, long)
    except Exception:  # an attribute torch.save itself calls (size, stride): no such file can be written
        assume(False)
    with pytest.raises(CheckpointError, match="|".join(ATTRIBUTES)) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path}: ") and len(str(raised.value).splitlines()) == 1


def test_a_weight_of_a_tensor_subclass_or_with_attributes_is_refused_in_memory(golden) -> None:
    class Sub(torch.Tensor):
        pass

    for make in (lambda v: v.as_subclass(Sub), lambda v: setattr(v, "is_floating_point", lambda: True) or v):
        state = dict(golden.state)
        state["s_embedder.proj.bias"] = make(state["s_embedder.proj.bias"].clone().long())
        with pytest.raises(CheckpointError, match="not a plain tensor"):
            select_state_dict(state)


class _Built:
    """A tensor pickled with a state that BUILD would set on it after it is rebuilt."""

    def __init__(self, tensor: torch.Tensor, state: dict[str, object]) -> None:
        self.tensor, self.state = tensor, state

    def __reduce__(self):
        t = self.tensor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage: what torch.save writes for a tensor's storage
            storage = t.storage()
        return (torch._utils._rebuild_tensor_v2, (storage, 0, tuple(t.shape), t.stride(), False, {}), self.state)


@pytest.mark.parametrize("state", [{"float": Weird}, {"is_floating_point": True}])
def test_a_build_that_sets_attributes_on_a_tensor_is_refused(tmp_path: Path, golden, state: dict[str, object]) -> None:
    from dip_export import inert_pickle

    path = tmp_path / "built.pt"
    torch.save({**golden.state, "s_embedder.proj.bias": _Built(golden.state["s_embedder.proj.bias"].long(), state)}, path)
    with pytest.raises(inert_pickle.Refused, match="sets attributes on a tensor"):
        torch.load(path, weights_only=False, pickle_module=inert_pickle)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path}: ") and len(str(raised.value).splitlines()) == 1
