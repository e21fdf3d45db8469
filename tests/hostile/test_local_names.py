"""Hub: a name that looks like a file or one of the tool's folders is local; no request leaves the machine.

The rule is property-tested on `is_local_name`; two surfaces (dip-sample, DiPPipeline.load) are run
against a local fake Hub endpoint that records every request.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export.hub import CHECKPOINT_SUFFIXES, is_local_name, looks_like_hub_name

WORD = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True)
# a repo id part as the Hub takes it: starts and ends with a letter or digit ('_' may end it), no '--'
HUB_WORD = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,9}[A-Za-z0-9_])?", fullmatch=True).filter(lambda w: "--" not in w)
FILE_SUFFIXES = (".onnx", ".pkl", ".pickle", ".tar", ".zip", ".gz", ".json", ".npz", ".npy", ".plan", ".engine", ".h5")
SUFFIX = st.sampled_from(CHECKPOINT_SUFFIXES + FILE_SUFFIXES)


@given(WORD, WORD, SUFFIX, st.sampled_from(["", ".1", ".tar", ".bak"]))
def test_two_part_file_names_are_local(org, stem, suffix, more):
    name = f"{org}-nonexistent/{stem}{suffix}{more if suffix in CHECKPOINT_SUFFIXES else ''}"
    assert is_local_name(name) and not looks_like_hub_name(name)


@given(WORD)
def test_the_tool_folder_is_local(name):
    assert not looks_like_hub_name(f"engines/{name}")


@given(HUB_WORD, HUB_WORD)
def test_plain_repo_names_stay_hub_names(org, name):
    assert looks_like_hub_name(f"{org}-nonexistent/{name}")
    assert looks_like_hub_name(f"{org}-nonexistent/{name}/model.onnx")  # org/name/FILE names a file in a repo


@given(HUB_WORD, st.sampled_from(["name-", "name.", "na--me", "na..me", ".name", "-name"]))
def test_names_the_hub_would_refuse_are_not_sent(org, name):
    assert not looks_like_hub_name(f"{org}-nonexistent/{name}")


NAMES = ["nodir/x.onnx", "nodir/x.pth.tar", "nodir/x.safetensors.1", "engines/dip-digits-32x32-fp32", "nodir/x.pkl"]


@pytest.mark.parametrize("name", NAMES)
def test_api_sends_no_request(fake_hub, name, tmp_path, monkeypatch):
    from dip_export import DiPPipeline
    from dip_export.errors import DipError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DipError):
        DiPPipeline.load(name)
    assert fake_hub == []


@pytest.mark.parametrize("name", NAMES[:2])
def test_cli_sends_no_request(fake_hub, name, tmp_path, monkeypatch, capsys):
    import sys

    from dip_export.cli import sample_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["dip-sample", name, "--steps", "1", "--out", "o.npz"])
    with pytest.raises(SystemExit) as exit_:
        sample_main()
    assert exit_.value.code == 1
    assert fake_hub == []
    assert "no such checkpoint file" in capsys.readouterr().err


def test_fake_hub_sees_a_real_hub_name(fake_hub, tmp_path, monkeypatch):
    """The recorder works: a true org/name is requested (and fails at the fake)."""
    from dip_export import DiPPipeline
    from dip_export.errors import DipError

    with pytest.raises(DipError):
        DiPPipeline.load("someorg-nonexistent/somemodel")
    assert any(path.startswith("/api/models/someorg-nonexistent/") for _, path, _ in fake_hub)


def test_a_path_object_is_local_by_its_type_and_never_asks_the_hub(fake_hub, tmp_path, monkeypatch) -> None:
    from pathlib import Path

    from dip_export import DiPPipeline
    from dip_export.errors import DipError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DipError):
        DiPPipeline.load(Path("org/name"))
    assert fake_hub == []


def test_preset_with_an_export_folder_is_refused(export, tmp_path) -> None:
    from dip_export import DiPPipeline
    from dip_export.errors import UsageError

    with pytest.raises(UsageError, match="--preset"):
        DiPPipeline.load(export, preset="dip-s-16")


def test_a_caller_path_like_is_local_by_its_type_too(fake_hub, tmp_path, monkeypatch) -> None:
    import os

    from dip_export import DiPPipeline
    from dip_export.errors import DipError

    class Named(os.PathLike):
        def __fspath__(self):
            return "org/name"

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DipError):
        DiPPipeline.load(Named())
    assert fake_hub == []
