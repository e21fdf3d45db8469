"""Options that only a checkpoint file can use are refused where they could not apply, not dropped.

`--weights` and `--trust-checkpoint` say what to take from a training checkpoint and whether its pickle
may run code: a preset (random weights) and a .safetensors file (no code) leave nothing for them to act
on. The old option name `--batch` and its new name are never both taken. A Hub checkpoint is named
after its repo, so two repos' `model.safetensors` get two exports.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from dip_export import cli
from dip_export.checkpoint import DEMO_CHECKPOINT, resolve_model
from dip_export.cli import _old_name
from dip_export.errors import CheckpointError, UsageError
from dip_export.pipeline import hub_model_name
from tests.test_hostile import one_line, run

SOURCES = ("preset", "demo", "safetensors file", "pickle file")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | None]:
    root = tmp_path_factory.mktemp("sources")
    shutil.copy(DEMO_CHECKPOINT, root / "digits.safetensors")
    torch.save(load_file(str(DEMO_CHECKPOINT)), root / "digits.pt")  # one set of weights, in a pickle
    return {"preset": None, "demo": None, "safetensors file": root / "digits.safetensors", "pickle file": root / "digits.pt"}


def expected(source: str, weights: str, trust: bool) -> type[Exception] | None:
    """The rule, written out: what each option needs of the source."""
    if source == "preset":
        return UsageError  # random weights: any choice of weights given (ema too), or trust, applies to nothing
    if source in ("demo", "safetensors file") and trust:
        return UsageError  # no code to trust
    return CheckpointError if weights == "raw" else None  # one set of weights: "raw" names none of them


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(SOURCES), weights=st.sampled_from(["ema", "raw"]), trust=st.booleans())
def test_checkpoint_options_need_a_checkpoint_they_apply_to(
    files: dict[str, Path | None], source: str, weights: str, trust: bool
) -> None:
    preset = "dip-s-16" if source == "preset" else None
    refused = expected(source, weights, trust)
    if refused is None:
        loaded = resolve_model(files[source], preset, weights=weights, trust=trust)
        assert loaded.config.hidden_size > 0
    else:
        with pytest.raises(refused) as err:
            resolve_model(files[source], preset, weights=weights, trust=trust)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args",
    [
        ("--preset", "dip-s-16", "--image-size", "32", "--weights", "raw"),
        ("--preset", "dip-s-16", "--image-size", "32", "--trust-checkpoint"),
        ("--trust-checkpoint",),
    ],
)
def test_sample_refuses_checkpoint_options_without_a_checkpoint(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = tmp_path / "a.npz"
    code, err = run(cli.sample_main, *args, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", out)
    one_line(code, err, 2, "--trust-checkpoint")
    assert not out.exists()


def test_export_and_bench_refuse_them_too(tmp_path: Path) -> None:
    code, err = run(cli.export_main, "onnx", "--trust-checkpoint", "--output-dir", tmp_path / "e")
    one_line(code, err, 2, ".safetensors file holds no code")
    assert not (tmp_path / "e").exists()
    code, err = run(cli.bench_main, "--preset", "dip-s-16", "--image-size", "32", "--weights", "raw", "--backends", "torch")
    one_line(code, err, 2, "--preset dip-s-16")


@given(new=st.none() | st.integers(1, 64), old=st.none() | st.integers(1, 64))
def test_an_option_and_its_old_name_are_never_both_taken(new: int | None, old: int | None) -> None:
    if new is not None and old is not None:
        with pytest.raises(UsageError, match="old name of --batch-size"):
            _old_name(new, old, "--batch-size")
    else:
        assert _old_name(new, old, "--batch-size") == (new if old is None else old)


def test_both_names_on_the_command_line_are_refused(tmp_path: Path) -> None:
    code, err = run(cli.bench_main, "--backends", "torch", "--steps", "1", "--batch-size", "1", "--batch", "3",
                    "--json", tmp_path / "r.json")  # fmt: skip
    one_line(code, err, 2, "--batch is the old name of --batch-size")
    assert not (tmp_path / "r.json").exists()
    code, err = run(cli.export_main, "trt", "--batch-profile", "1,2,4", "--batch", "1,1,1")
    one_line(code, err, 2, "--batch is the old name of --batch-profile")


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
repos = st.tuples(names, names).filter(lambda r: "--" not in r[1] and ".." not in r[1])  # the Hub's repo-name rule
file_parts = st.lists(st.from_regex(r"[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,12}", fullmatch=True), max_size=3)
revisions = st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,12}", fullmatch=True)
references = st.tuples(repos, file_parts, revisions).map(lambda r: ("/".join([*r[0], *r[1]]), r[2]))


@given(one=references, two=references)
def test_hub_names_are_one_folder_name_per_file_and_revision(one: tuple[str, str | None], two: tuple[str, str | None]) -> None:
    a, b = hub_model_name(*one), hub_model_name(*two)
    assert "/" not in a and (a == b) == (one == two)  # two checkpoints never share their exports


def test_two_hub_repos_with_model_safetensors_get_two_exports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    for repo in ("evo3/one", "evo4/other"):
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        blob = hashlib.sha256(repo.encode()).hexdigest()
        (folder / "blobs").mkdir()
        shutil.copy(DEMO_CHECKPOINT, folder / "blobs" / blob)
        (folder / "snapshots" / commit).mkdir(parents=True)
        (folder / "snapshots" / commit / "model.safetensors").symlink_to(f"../../blobs/{blob}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # what a load reads now (hub_settings)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for repo in ("evo3/one", "evo4/other"):
        code, err = run(cli.export_main, "onnx", repo, "--image-size", "32")
        assert code == 0, err
    assert (tmp_path / "engines" / "evo3--one-32x32-fp32" / "manifest.json").is_file()
    assert (tmp_path / "engines" / "evo4--other-32x32-fp32" / "manifest.json").is_file()
