"""The memory and work budget: estimated and refused before any allocation."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dip_export.checkpoint
from dip_export import DiPPipeline, cli
from dip_export.budget import BudgetError, RunShape, check_run, memory_limit, pickle_declared_bytes, run_bytes
from dip_export.checkpoint import load_checkpoint
from dip_export.config import get_preset
from dip_export.errors import UsageError
from tests.test_hostile import one_line, run

XL = get_preset("dip-xl-16")
sides = st.integers(1, 256).map(lambda k: 16 * k)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(1, 4096), sides, sides, st.integers(1, 10_000))
def test_estimate_grows_with_every_factor(batch: int, h: int, w: int, samples: int) -> None:
    base = run_bytes(XL, RunShape(batch, h, w, samples))
    assert base > batch * h * w * 3  # at least the images of one batch
    for bigger in (RunShape(batch + 1, h, w, samples), RunShape(batch, h + 16, w, samples), RunShape(batch, h, w, samples + 1)):
        assert run_bytes(XL, bigger) > base


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(1, 1 << 40))
def test_limit_env_caps_the_memory(monkeypatch_limit: int) -> None:
    import os

    old = os.environ.get("DIP_MEMORY_LIMIT")
    os.environ["DIP_MEMORY_LIMIT"] = str(monkeypatch_limit)
    try:
        assert memory_limit() <= monkeypatch_limit
    finally:
        os.environ.pop("DIP_MEMORY_LIMIT") if old is None else os.environ.__setitem__("DIP_MEMORY_LIMIT", old)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 1 << 40), st.sampled_from(["", "K", "M", "G"]), st.sampled_from([" ", "\t", "\n", "  "]),
       st.sampled_from(["before", "after"]))  # fmt: skip
def test_a_limit_with_whitespace_is_refused_not_trimmed(
    monkeypatch: pytest.MonkeyPatch, number: int, unit: str, space: str, where: str
) -> None:
    text = f"{number}{unit}"
    monkeypatch.setenv("DIP_MEMORY_LIMIT", text)
    memory_limit()  # as given: taken
    monkeypatch.setenv("DIP_MEMORY_LIMIT", space + text if where == "before" else text + space)
    with pytest.raises(UsageError, match="DIP_MEMORY_LIMIT must be bytes"):
        memory_limit()


def test_each_limit_alone_holds_but_the_product_is_refused() -> None:
    check_run(XL, RunShape(1, 256, 256))  # the release model at its size fits any machine that runs tests
    with pytest.raises(BudgetError, match=r"batch 4096 at 2048x2048 needs about .* GiB, more than the"):
        check_run(XL, RunShape(4096, 2048, 2048))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.integers(1, 1 << 36), st.integers(1, 4096), sides, st.sampled_from(["torch", "onnx"]), st.booleans())
def test_a_refusal_blames_the_sizes_asked_for_only_where_the_model_alone_fits(
    limit: int, batch: int, side: int, backend: str, export: bool
) -> None:
    """Exit 2 (a bad argument) where the model's own part of the need fits and the sizes asked for do not; exit 1
    where the model alone does not fit, whatever was asked (as for any file that holds too much)."""
    import os

    from dip_export.budget import EXPORT_FIXED_BYTES, RunBudgetError, weight_bytes

    os.environ["DIP_MEMORY_LIMIT"] = str(limit)
    try:
        check_run(XL, RunShape(batch, side, side), torch.device("cpu"), backend=backend, export=export)
    except BudgetError as err:
        fixed = weight_bytes(XL) + (EXPORT_FIXED_BYTES if export and backend == "onnx" else 0)
        assert isinstance(err, RunBudgetError) == (fixed <= limit), (fixed, limit, str(err))
        assert err.exit_code == (2 if fixed <= limit else 1) and isinstance(err, UsageError) == (fixed <= limit)
    else:
        assert run_bytes(XL, RunShape(batch, side, side), backend) <= limit
    finally:
        del os.environ["DIP_MEMORY_LIMIT"]


# ---------------------------------------------------------------- surfaces


def test_api_load_refuses_a_run_too_large_before_any_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DiPPipeline, "engine", lambda *a, **k: pytest.fail("an engine was made"))
    with pytest.raises(BudgetError, match="2048x2048"):
        DiPPipeline.load(preset="dip-s-16", batch_size=4096, image_size=2048, num_samples=4096, device="cpu")


def test_api_call_refuses_before_sampling(monkeypatch: pytest.MonkeyPatch, no_sampling) -> None:
    pipe = DiPPipeline.load(device="cpu")
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "4M")
    with pytest.raises(BudgetError, match="keeping 2000 images"):
        pipe(num_samples=2000, steps=2, batch_size=1)


@pytest.mark.parametrize("given", ["classes", "seeds", "both"])
def test_api_call_refuses_a_long_class_or_seed_list_before_building_the_plan(
    monkeypatch: pytest.MonkeyPatch, no_sampling, given: str
) -> None:
    pipe = DiPPipeline.load(device="cpu")
    monkeypatch.setattr(DiPPipeline, "plan", lambda *a, **k: pytest.fail("the plan was built before the budget"))
    monkeypatch.setenv("DIP_MEMORY_LIMIT", "4M")
    n = 3000
    args = {"classes": {"classes": [1] * n}, "seeds": {"seeds": range(n)},
            "both": {"classes": [1] * n, "seeds": list(range(n))}}[given]  # fmt: skip
    with pytest.raises(BudgetError, match=f"keeping {n} images"):
        pipe(**args, steps=2, batch_size=1)


def test_cli_sample_refuses_with_one_line(tmp_path: Path, no_sampling) -> None:
    code, err = run(cli.sample_main, "--preset", "dip-s-16", "--batch-size", "4096", "--image-size", "2048",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 2, "needs about", "GiB")
    assert not (tmp_path / "o.npz").exists()


MANY = ",".join(str(n) for n in range(5000, 10_001))  # each within the step bound, their total beyond the budget
NFE_CASES = [("0", 2, "must be in 1..10000"), ("10,0", 2, "must be in 1..10000"),
             ("50000000", 2, "must be in 1..10000"), (MANY, 2, "network evaluations")]  # fmt: skip


@pytest.mark.parametrize(("nfe", "code", "words"), NFE_CASES)
def test_cli_nfe_is_bounded_before_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nfe: str, code: int,
                                             words: str) -> None:  # fmt: skip
    import dip_export.app

    monkeypatch.setattr(dip_export.app, "make_engine", lambda *a, **k: pytest.fail("an engine was made"))
    got, err = run(cli.bench_main, "--samplers", "euler", "--nfe", nfe, "--backends", "torch", "--device", "cpu")
    one_line(got, err, code, words)


def _legacy_pickle(path: Path, numel: int) -> Path:
    """A few hundred bytes in torch's legacy format whose storage declares `numel` doubles (allowed globals only)."""

    class Declaring(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            return ("storage", torch.DoubleStorage, "0", "cpu", numel) if obj == "S" else None

    buf = io.BytesIO()
    for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}):  # fmt: skip
        pickle.dump(part, buf, protocol=2)
    Declaring(buf, protocol=2).dump({"w": "S"})
    pickle.dump(["0"], buf, protocol=2)
    path.write_bytes(buf.getvalue())
    return path


def test_pickle_declaring_a_huge_tensor_is_refused_before_torch_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _legacy_pickle(tmp_path / "small.pt", 1 << 28)
    assert path.stat().st_size < 400
    with path.open("rb") as f:
        assert pickle_declared_bytes(f) == 8 << 28
    monkeypatch.setattr(dip_export.checkpoint.torch, "load", lambda *a, **k: pytest.fail("torch.load ran"))
    with pytest.raises(BudgetError, match=r"declares 2\.0 GiB of tensors"):
        load_checkpoint(path)


def test_cli_refuses_the_declaring_pickle_in_one_line(tmp_path: Path) -> None:
    path = _legacy_pickle(tmp_path / "small.pt", 1 << 28)
    code, err = run(cli.sample_main, path, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "declares")


def test_real_checkpoints_declare_what_they_hold(tmp_path: Path, golden) -> None:
    import zipfile

    path = tmp_path / "m.pt"
    torch.save(golden.state, path)
    with zipfile.ZipFile(path) as z, z.open(next(n for n in z.namelist() if n.endswith("data.pkl"))) as f:
        declared = pickle_declared_bytes(io.BytesIO(f.read()))
    assert declared == sum(t.numel() * t.element_size() for t in golden.state.values())
    load_checkpoint(path)


def test_export_declaring_more_weights_than_it_holds_is_refused(tmp_path: Path, export: Path) -> None:
    import onnx

    from dip_export.export.manifest import read_manifest

    graph = export / "backbone.onnx"
    model = onnx.load(str(graph))
    tensor = next(t for t in model.graph.initializer if t.raw_data)
    tensor.dims[:] = [1 << 20, 1 << 20]  # 4 TiB of float32, with the few bytes it had
    onnx.save_model(model, str(graph))
    with pytest.raises(Exception, match="declares"):
        read_manifest(export)


class _Buffer:
    """Pickles as a call of an allowed global that allocates by size alone: bytearray(n) or bytes(n)."""

    def __init__(self, kind: type, n: int) -> None:
        self.kind, self.n = kind, n

    def __reduce__(self):
        return (self.kind, (self.n,))


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from([bytearray, bytes]), n=st.integers(1, 1 << 40), protocol=st.sampled_from([2, 4]))
def test_a_buffer_a_pickle_allocates_by_size_counts_as_declared(kind: type, n: int, protocol: int) -> None:
    data = pickle.dumps({"state_dict": {}, "x": _Buffer(kind, n)}, protocol=protocol)
    assert pickle_declared_bytes(io.BytesIO(data)) == n


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from([b"bytearray", b"bytes"]), n=st.integers(1, 1 << 40), form=st.sampled_from(["inst", "obj"]))
def test_a_buffer_built_by_protocol_0_or_1_opcodes_counts_as_declared(kind: bytes, n: int, form: str) -> None:
    call = b"(I%d\nibuiltins\n%s\n" % (n, kind) if form == "inst" else b"(cbuiltins\n%s\nI%d\no" % (kind, n)
    data = b"(dp0\nVx\n" + call + b"s."  # {"x": bytearray(n)} by INST / OBJ
    assert pickle_declared_bytes(io.BytesIO(data)) == n


def test_every_data_pkl_of_a_zip_checkpoint_is_scanned_not_a_decoy(tmp_path: Path) -> None:
    import zipfile

    from dip_export.budget import check_checkpoint_tensors

    path = tmp_path / "decoy.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/xdata.pkl", pickle.dumps({}))  # sorts first, names end in data.pkl
        archive.writestr("archive/data.pkl", pickle.dumps({"x": _Buffer(bytearray, 1 << 40)}, protocol=2))
    with pytest.raises(BudgetError):
        check_checkpoint_tensors(path)


def test_a_checkpoint_allocating_a_huge_buffer_is_refused_before_torch_reads_it(
    tmp_path: Path, golden, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "buffer.pt"
    torch.save({"state_dict": golden.state, "x": _Buffer(bytearray, 3 * 10**9)}, path)
    monkeypatch.setattr(dip_export.checkpoint.torch, "load", lambda *a, **k: pytest.fail("torch.load ran"))
    with pytest.raises(BudgetError, match="declares"):
        load_checkpoint(path)


UNITS = {"": 1, "bytes": 1, "KiB": 2**10, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "MiB": 2**20, "GiB": 2**30,
         "PiB": 2**50}  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.floats(1, 1e30), st.booleans())
def test_counts_and_sizes_read_in_a_unit_that_reads(n: float, as_bytes: bool) -> None:
    """'1.4 M parameters', '2.8 GiB', '266 PiB': a short figure that reads back to the number (no '0.0 G', no
    twelve-digit GiB)."""
    from dip_export.budget import count_text, gib

    text = gib(n) if as_bytes else count_text(n)
    number, _, unit = text.partition(" ")
    value = float(number) * UNITS[unit]
    assert len(number) <= 9 and float(number) > 0
    assert abs(value - n) <= max(0.06 * n, 2**20 if as_bytes else 0.51)
