"""A checkpoint is refused with the tool's own one-line reason, and `--weights` names what the file must hold.

Reasons: torch's reader fails in many ways (miniz texts, enforce failures, pickle errors); each maps to
one reason of the tool's (`checkpoint.load_failure`), never the library's text. Weights: a training
checkpoint gives the weights asked for (EMA by default, `--weights raw` / weights="raw" for the raw
ones) or is refused; a file with one set of weights is read as it is by default and refuses "raw".
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import DEMO_CHECKPOINT, load_checkpoint, pick_weights
from dip_export.errors import CheckpointError, DipError
from tests.test_hostile import one_line, run

LIBRARY_WORDS = ("PytorchStreamReader", "miniz", "enforce fail", "inline_container", "weights_only", "Traceback")


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def damaged_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the reason the refusal must give)."""
    good = _saved({"w": torch.zeros(3)})
    records = {n: zipfile.ZipFile(io.BytesIO(good)).read(n) for n in zipfile.ZipFile(io.BytesIO(good)).namelist()}
    return {
        "nopkl.pt": (_zip({"archive/version": b"3\n"}), "not a torch checkpoint zip (no data.pkl)"),
        "badzip.pt": (good[: len(good) // 2], "truncated or damaged zip archive"),
        "norecord.pt": (_zip({n: d for n, d in records.items() if "/data/" not in n}), "a tensor record it names is missing"),
        "flat.pt": (_zip({"data.pkl": b"\x80\x02}."}), "not a torch checkpoint zip"),
        "empty.pt": (b"", "not a PyTorch checkpoint (it is an empty file)"),
        "cut.pkl": (b"\x80\x02}q\x00(X\x01\x00\x00\x00a", "truncated"),
        "text.pt": (b'{"a": 1}', "a text or JSON file"),
    }


@pytest.mark.parametrize("name", sorted(damaged_files()))
def test_damaged_files_get_the_tools_reason(tmp_path: Path, name: str) -> None:
    data, reason = damaged_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message
    assert not any(word in message for word in LIBRARY_WORDS), message


@pytest.mark.parametrize("name", ["nopkl.pt", "empty.pt", "badzip.pt"])
def test_api_and_cli_give_the_reason_in_one_line(tmp_path: Path, name: str) -> None:
    data, reason = damaged_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"^{path}: .*{reason.split(' (')[0]}"):
        DiPPipeline.load(path)
    code, err = run(cli.sample_main, path, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), reason)
    assert not any(word in err for word in LIBRARY_WORDS), err


_GOOD_ZIP = _saved({"state_dict": {"a": torch.arange(6.0)}, "epoch": 1})


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(_GOOD_ZIP)), st.lists(st.tuples(st.integers(0, len(_GOOD_ZIP) - 1), st.integers(0, 255)), max_size=3))
def test_any_cut_or_changed_byte_is_one_line_of_the_tools_text(tmp_path: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(_GOOD_ZIP[:cut])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    try:
        load_checkpoint(path)
    except DipError as err:
        message = str(err)
        assert "\n" not in message and message.startswith(str(path)), message
        assert not any(word in message for word in LIBRARY_WORDS), message
        assert len(message) < len(str(path)) + 200, message


# ------------------------------------------------------------------ which weights


def _layout(state: dict[str, torch.Tensor], layout: str) -> dict[str, Any]:
    ema = {f"ema_denoiser.{k}": v for k, v in state.items()}
    raw = {f"denoiser.{k}": v + 1 for k, v in state.items()}  # raw weights told apart by +1
    return {"both": {"state_dict": {**ema, **raw}}, "ema only": {"state_dict": ema}, "raw only": {"state_dict": raw},
            "plain": dict(state), "plain model.": {f"model.{k}": v for k, v in state.items()}}[layout]  # fmt: skip


EXPECTED = {  # (layout, weights) -> offset of the weights read, or the refusal's words
    ("both", "ema"): 0, ("both", "raw"): 1, ("ema only", "ema"): 0, ("ema only", "raw"): "--weights ema",
    ("raw only", "ema"): "--weights raw", ("raw only", "raw"): 1, ("plain", "ema"): 0, ("plain", "raw"): "one set of weights",
    ("plain model.", "ema"): 0, ("plain model.", "raw"): "one set of weights",
}  # fmt: skip


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(sorted(EXPECTED)))
def test_the_weights_read_are_the_ones_asked_for(case: tuple[str, str]) -> None:
    state = {"s_embedder.proj.weight": torch.zeros(2, 2), "blocks.0.x": torch.ones(3)}
    layout, weights = case
    expected = EXPECTED[case]
    if isinstance(expected, str):
        with pytest.raises(CheckpointError, match=expected.replace(".", r"\.")):
            pick_weights(_layout(state, layout), weights)
        return
    picked = pick_weights(_layout(state, layout), weights)
    assert picked.keys() == state.keys()
    assert all(torch.equal(picked[k], v + expected) for k, v in state.items())


def test_raw_only_lightning_file_through_the_api_and_cli(tmp_path: Path, golden: Any) -> None:
    path = tmp_path / "rawonly.ckpt"
    torch.save({"state_dict": {f"denoiser.{k}": v for k, v in golden.state.items()}}, path)
    with pytest.raises(CheckpointError, match=f"^{path}: .*--weights raw"):
        DiPPipeline.load(path)
    pipe = DiPPipeline.load(path, weights="raw")
    model = pipe.source.loaded.model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in golden.state.items())
    code, err = run(cli.sample_main, path, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(path), "--weights raw")
    assert not (tmp_path / "o.npz").exists()


def test_weights_raw_on_a_file_with_one_set_is_refused(tmp_path: Path, golden: Any) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in golden.state.items()}, str(plain))
    assert DiPPipeline.load(plain) is not None  # the default reads the only weights there are
    with pytest.raises(CheckpointError, match=f"^{plain}: .*one set of weights"):
        DiPPipeline.load(plain, weights="raw")
    code, err = run(cli.sample_main, "--weights", "raw", "--classes", "1", "--seeds", "0", "--steps", "2",
                    "--out", tmp_path / "o.npz")  # fmt: skip
    one_line(code, err, 1, str(DEMO_CHECKPOINT), "one set of weights")  # the bundled demo model too
    assert not (tmp_path / "o.npz").exists()


def _odd_weight(kind: str) -> torch.Tensor:
    if kind == "nested":
        return torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    if kind == "jagged":
        return torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)], layout=torch.jagged)
    if kind == "sparse":
        return torch.zeros(4, 4).to_sparse()
    return torch.zeros(4, 4, dtype=torch.complex64)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["nested", "jagged", "sparse", "complex"])
def test_a_weight_that_is_no_dense_real_tensor_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    """A nested tensor says it is strided, on the CPU, floating point: its shape then raised torch's own error."""
    from safetensors.torch import load_file

    state = load_file(str(DEMO_CHECKPOINT))
    state["s_embedder.proj.weight"] = _odd_weight(kind)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"s_embedder\.proj\.weight is not a (dense real floating-point|plain) tensor"):
        DiPPipeline.load(path)
    code, err = run(cli.sample_main, path, "--steps", "1", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "s_embedder.proj.weight is not a")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["zz", "blocks.0.extra", "s_embedder.proj.weight"]),
    st.one_of(st.integers(), st.text(max_size=5), st.just({"w": torch.zeros(3)}), st.just([1.0, 2.0]), st.none()),
)
def test_an_entry_that_is_no_tensor_is_refused_by_name_not_dropped(tmp_path: Path, key: str, value: Any) -> None:
    from safetensors.torch import load_file

    state = dict(load_file(str(DEMO_CHECKPOINT)))
    state[key] = value
    path = tmp_path / "extra.pt"
    path.write_bytes(_saved(state))
    with pytest.raises(CheckpointError, match=f"entry {key} among its weights is not a tensor"):
        DiPPipeline.load(path)
    code, err = run(cli.sample_main, path, "--num-samples", "1", "--steps", "2", "--out", tmp_path / "s.npz")
    one_line(code, err, 1, f"entry {key} among its weights is not a tensor")
    assert not (tmp_path / "s.npz").exists()


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=4).filter(lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b"..")),
       suffix=st.sampled_from([".safetensors", ".pt"]))  # fmt: skip
def test_a_checkpoint_named_in_bytes_that_are_no_utf8_is_one_line(tmp_path: Path, raw: bytes, suffix: str) -> None:
    import os

    name = os.fsdecode(raw + b"\xff" + suffix.encode())  # a lone surrogate stands for the byte that is no UTF-8
    path = tmp_path / name
    path.write_bytes(DEMO_CHECKPOINT.read_bytes() if suffix == ".safetensors" else b"\x80\x02")
    with pytest.raises(CheckpointError, match="the file's name is not UTF-8 text; rename the file"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not UTF-8 text"):
        DiPPipeline.load(path, device="cpu")
    code, err = run(cli.sample_main, path, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "the file's name is not UTF-8 text")
    assert not (tmp_path / "o.npz").exists()
