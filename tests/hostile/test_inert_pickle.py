"""A checkpoint read without trust changes no object it did not create (the inert pickle reader).

Each file here is a torch zip whose data.pkl is written opcode by opcode: it names a global the reader
allows (or a placeholder, or what a call returns) and then asks to change it (BUILD with a state dict or
slot state, SETITEM(S), APPEND(S), ADDITEMS). Every such file is refused in one line, and every allowed
global's attributes are what they were before.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli, inert_pickle
from dip_export.checkpoint import load_checkpoint
from dip_export.errors import CheckpointError
from tests.test_hostile import one_line, run

ALLOWED = sorted(inert_pickle._allowed())


def text(s: str) -> bytes:
    data = s.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def glob(key: str) -> bytes:
    module, name = key.rsplit(".", 1)
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


ONE = pickle.BININT1 + b"\x01"
CHANGES = {  # what is asked of the object on top of the stack
    "build dict": pickle.EMPTY_DICT + text("tolist") + ONE + pickle.SETITEM + pickle.BUILD,
    "build slots": pickle.NONE + pickle.EMPTY_DICT + text("most_common") + glob("_codecs.encode") + pickle.SETITEM
    + pickle.TUPLE2 + pickle.BUILD,
    "setitem": text("k") + ONE + pickle.SETITEM,
    "setitems": pickle.MARK + text("k") + ONE + pickle.SETITEMS,
    "append": ONE + pickle.APPEND,
    "appends": pickle.MARK + ONE + pickle.APPENDS,
    "additems": pickle.MARK + ONE + pickle.ADDITEMS,
}  # fmt: skip
TARGETS = {  # how the object to change gets on the stack: a global, a placeholder, what a call returns
    **{f"global {key}": glob(key) for key in ALLOWED},
    "placeholder": glob("evil.module.Payload"),
    "layout from a call": glob("torch.serialization._get_layout") + text("torch.strided") + pickle.TUPLE1 + pickle.REDUCE,
    "encode result": glob("_codecs.encode") + text("a") + text("latin1") + pickle.TUPLE2 + pickle.REDUCE,
}


def data_pkl(target: bytes, change: bytes) -> bytes:
    """{'a': <target, changed>, 'z': foo.Bar()}: the placeholder sends the load to the inert reader."""
    return (pickle.PROTO + b"\x04" + pickle.EMPTY_DICT + pickle.MARK + text("a") + target + change
            + text("z") + glob("foo.Bar") + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.SETITEMS + pickle.STOP)  # fmt: skip


_BASE: list[bytes] = []


def torch_zip(path: Path, pkl: bytes) -> Path:
    """A torch.save zip with its data.pkl replaced."""
    if not _BASE:
        buf = io.BytesIO()
        torch.save({}, buf)
        _BASE.append(buf.getvalue())
    source = zipfile.ZipFile(io.BytesIO(_BASE[0]))
    with zipfile.ZipFile(path, "w") as out:
        for name in source.namelist():
            out.writestr(name, pkl if name.endswith("/data.pkl") else source.read(name))
    return path


def snapshot() -> dict[int, tuple[Any, dict[str, Any] | None]]:
    objects = [*inert_pickle._allowed().values(), *inert_pickle._placeholders.values(), torch.strided]
    return {id(o): (o, dict(vars(o)) if hasattr(o, "__dict__") else None) for o in objects}


def assert_unchanged(before: dict[int, tuple[Any, dict[str, Any] | None]]) -> None:
    for obj, attrs in before.values():
        now = dict(vars(obj)) if hasattr(obj, "__dict__") else None
        assert (now is None) == (attrs is None), obj
        if attrs is not None and now is not None:
            assert now.keys() == attrs.keys(), (obj, now.keys() ^ attrs.keys())
            assert all(now[k] is attrs[k] for k in attrs), obj
    fresh = set(vars(inert_pickle._placeholder("fresh.Placeholder")))
    assert all(set(vars(cls)) == fresh for cls in inert_pickle._placeholders.values())  # no placeholder class changed
    assert len(torch.UntypedStorage(2).tolist()) == 2
    assert collections.Counter("aab").most_common(1) == [("a", 2)]


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(TARGETS)), st.sampled_from(sorted(CHANGES)))
def test_no_global_is_changed_and_the_file_is_refused(tmp_path: Path, target: str, change: str) -> None:
    path = torch_zip(tmp_path / "hostile.pt", data_pkl(TARGETS[target], CHANGES[change]))
    before = snapshot()
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert message.startswith(f"{path}:") and "\n" not in message
    assert "tolist" not in message and "most_common" not in message  # nothing of the file is echoed
    assert_unchanged(before)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_allowed_global_is_refused_for_every_change(tmp_path: Path, change: str) -> None:
    before = snapshot()
    for key in ALLOWED:
        path = torch_zip(tmp_path / "hostile.pt", data_pkl(glob(key), CHANGES[change]))
        with pytest.raises(CheckpointError, match=r"did not create|truncated|code it names|not a"):
            load_checkpoint(path)
    assert_unchanged(before)


@pytest.mark.parametrize("target", ["global torch.storage.UntypedStorage", "global collections.Counter", "placeholder"])
def test_the_reported_class_patches_are_refused_as_such(tmp_path: Path, target: str) -> None:
    path = torch_zip(tmp_path / "hostile.pt", data_pkl(TARGETS[target], CHANGES["build slots"]))
    with pytest.raises(CheckpointError, match="set the state of an object it did not create"):
        load_checkpoint(path)
    assert_unchanged(snapshot())


def test_api_and_cli_refuse_in_one_line_and_change_nothing(tmp_path: Path) -> None:
    before = snapshot()
    patch = data_pkl(TARGETS["global torch.storage.UntypedStorage"], CHANGES["build slots"])
    path = torch_zip(tmp_path / "monkeypatch.pt", patch)
    with pytest.raises(CheckpointError, match="did not create") as refused:
        DiPPipeline.load(path)
    assert "\n" not in str(refused.value)
    assert_unchanged(before)
    counter = torch_zip(tmp_path / "counter.pt", data_pkl(TARGETS["global collections.Counter"], CHANGES["build slots"]))
    code, err = run(cli.sample_main, counter, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, str(counter), "did not create")
    assert not (tmp_path / "o.npz").exists()
    assert_unchanged(before)


class _Config(argparse.Namespace):
    pass


def test_objects_the_file_makes_still_get_their_state(tmp_path: Path, golden: Any) -> None:
    """What legitimately changes: a state dict's _metadata (BUILD on an OrderedDict the load made), placeholders'
    state (a training config, functools.partial), the lists and dicts the file builds."""
    state = collections.OrderedDict((f"ema_denoiser.{k}", v) for k, v in golden.state.items())
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": _Config(lr=1e-4, sizes=[1, 2]),
                "callbacks": [functools.partial(print, 1)], "seen": {1, 2}}, path)  # fmt: skip
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # the inert reader is the one that reads it
    before = snapshot()
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in golden.state.items())
    found = torch.load(path, weights_only=False, pickle_module=inert_pickle)
    assert found["state_dict"]._metadata == {"": {"version": 1}}
    assert found["hyper_parameters"].state == {"lr": 1e-4, "sizes": [1, 2]}
    assert found["seen"] == {1, 2}  # protocol 2's __builtin__.set is the allowed builtins.set
    assert_unchanged(before)
