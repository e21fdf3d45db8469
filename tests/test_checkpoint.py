import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dip_export.checkpoint import infer_config, load_checkpoint, resolve_model, save_checkpoint
from dip_export.config import get_preset
from dip_export.errors import CheckpointError, UsageError
from tests.conftest import lightning_checkpoint


def _same_weights(model, state):
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_config_is_inferred_from_shapes(golden):
    assert infer_config(golden.state) == golden.config.__class__(**{**golden.config.to_dict(), "image_size": 256})


def test_lightning_checkpoint_prefers_ema_and_can_pick_raw(tmp_path, golden):
    path = lightning_checkpoint(tmp_path / "last.ckpt", golden.state, raw_offset=1.0)
    ema = load_checkpoint(path)
    assert _same_weights(ema.model, golden.state)
    raw = load_checkpoint(path, weights="raw")
    assert torch.equal(raw.model.state_dict()["s_embedder.proj.bias"], golden.state["s_embedder.proj.bias"] + 1)


def test_raw_only_checkpoint_needs_weights_raw(tmp_path, golden):
    path = tmp_path / "raw.ckpt"
    torch.save({"state_dict": {f"denoiser.{k}": v for k, v in golden.state.items()}}, path)
    with pytest.raises(CheckpointError, match="--weights raw"):
        load_checkpoint(path)  # the default (EMA) never falls back to the raw weights
    assert _same_weights(load_checkpoint(path, weights="raw").model, golden.state)


@pytest.mark.parametrize("prefix", ["", "model.", "module."])
def test_bare_state_dict_with_or_without_prefix(tmp_path, golden, prefix):
    path = tmp_path / "bare.pt"
    torch.save({prefix + k: v for k, v in golden.state.items()}, path)
    assert _same_weights(load_checkpoint(path).model, golden.state)


def test_plain_safetensors_and_own_format_round_trip(tmp_path, golden, golden_model):
    plain = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in golden.state.items()}, str(plain))
    assert _same_weights(load_checkpoint(plain).model, golden.state)
    own = tmp_path / "own.safetensors"
    save_checkpoint(own, golden_model, sampling={"steps": 7, "cfg": 2.0})
    loaded = load_checkpoint(own)
    assert loaded.config == golden_model.cfg and loaded.sampling == {"steps": 7, "cfg": 2.0}
    assert _same_weights(loaded.model, golden.state)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, golden):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as f:
        pickle.dump({"state_dict": golden.state, "hook": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(tmp_path, golden):
    good = lightning_checkpoint(tmp_path / "good.ckpt", golden.state)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)
    st = tmp_path / "bad.safetensors"
    st.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(st)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.ckpt")
    lists = tmp_path / "list.pt"
    torch.save([1, 2, 3], lists)
    with pytest.raises(CheckpointError, match="dict of tensors"):
        load_checkpoint(lists)


def test_wrong_architecture_lists_the_problems(tmp_path, golden):
    state = dict(golden.state)
    del state["blocks.1.mlp.w2.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing: blocks\.1\.mlp\.w2\.weight; unexpected: extra\.weight"):
        load_checkpoint(path)
    bare = tmp_path / "golden.pt"
    torch.save(golden.state, bare)
    with pytest.raises(CheckpointError, match=r"config does not match the weights: hidden_size 384 \(weights: 96\)"):
        load_checkpoint(bare, config=get_preset("dip-s-16"))


def test_unknown_preset(tmp_path):
    with pytest.raises(UsageError, match="unknown preset"):
        resolve_model(None, preset="dip-zz")


def test_a_pickle_with_objects_loads_with_and_without_trust(tmp_path, golden):
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": golden.state, "hparams": Path("x")}, path)
    assert _same_weights(load_checkpoint(path).model, golden.state)  # the Path stays an inert placeholder
    assert _same_weights(load_checkpoint(path, trust=True).model, golden.state)


@pytest.mark.parametrize(
    ("name", "model", "sampling", "words"),
    [
        ("m.safetensors", "golden", {"cfg": float("nan")}, "not JSON values"),
        ("m.safetensors", "golden", {"steps": "ten"}, "sampling defaults refused"),
        ("m.safetensors", "golden", {"steps": object()}, "not JSON values"),
        ("m.safetensors", "golden", [("steps", 4)], "must be a mapping"),
        ("m.pt", "golden", {}, "name the file .safetensors"),
        ("m.safetensors", None, {}, "writes a DiP model"),
        ("m.safetensors", torch.nn.Linear(2, 2), {}, "writes a DiP model"),
    ],
)
def test_save_checkpoint_writes_only_what_the_reader_takes(tmp_path, golden_model, name, model, sampling, words):
    with pytest.raises(UsageError, match=words):
        save_checkpoint(tmp_path / name, golden_model if model == "golden" else model, sampling)
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(tmp_path / "ok.safetensors", golden_model, {"steps": 7, "cfg": 2.0})
    assert load_checkpoint(tmp_path / "ok.safetensors").sampling == {"steps": 7, "cfg": 2.0}
