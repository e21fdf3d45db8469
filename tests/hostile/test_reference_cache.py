"""The yardstick's converged reference is used from its cache only when this tool wrote it for exactly this key.

A cached reference carries a mark under the owner key (ownership.contents_mac) over its key, the bytes of its
arrays, its steps and self-check; its images must be its x rounded. A hand-made, foreign (another user's key),
tampered (one byte, images that are not x, the key of other settings) file is never used: the tool's own file
for another key is computed again and replaced, any other file is refused in one line and left as it is. The
key is the model's numbers: raw and EMA weights of one checkpoint never share a reference.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.checkpoint import LoadedModel, resolve_model
from dip_export.generate import make_plan
from dip_export.measure import yardstick
from dip_export.model import DiP
from dip_export.ownership import KEY_ENV, contents_mac, owner_key
from dip_export.runtime.backends import BackendSpec, make_torch_engine
from dip_export.sampling import SamplerSettings
from dip_export.untrusted import UntrustedFileError

SECRET = "SECRET_TEXT_7f3a"  # planted in tampered files; never in a message
Y = yardstick.Yardstick(num_samples=2, batch=2)
CPU = torch.device("cpu")

_calls = [0]  # backbone evaluations of any DiP since the last reset
_backbone = DiP.backbone


def _counted(self: DiP, *args: torch.Tensor) -> torch.Tensor:
    _calls[0] += 1
    return _backbone(self, *args)


@pytest.fixture(autouse=True, scope="module")
def small() -> object:
    """A short reference and release run, every backbone evaluation counted (engines bind it when made)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yardstick, "REFERENCE_STEPS", 8)
        mp.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 10.0)
        mp.setattr(yardstick, "RELEASE_STEPS", 4)
        mp.setattr(DiP, "backbone", _counted)
        yield


@pytest.fixture(scope="module")
def demo() -> LoadedModel:
    return resolve_model(None, None)


def reference(loaded: LoadedModel, cfg: float = 1.5) -> yardstick.ReferenceImages:
    """The yardstick's Python entry, on the settings `measure` would use for Y."""
    plan = make_plan(loaded.config.num_classes, num_samples=Y.num_samples, seed=Y.seed)
    y = yardstick.Yardstick(Y.num_samples, Y.seed, cfg, Y.shift, Y.batch, Y.height, Y.width)
    return yardstick.reference_images(loaded, plan, y, SamplerSettings(cfg=cfg, shift=Y.shift))


@contextlib.contextmanager
def cache_at(folder: Path):
    old = yardstick.CACHE
    yardstick.CACHE = folder
    try:
        yield folder
    finally:
        yardstick.CACHE = old


@pytest.fixture(scope="module")
def made(demo, tmp_path_factory) -> dict[str, object]:
    """Computed once, fresh: the reference at guidance 1.5 (its file), the file of guidance 3.0, and the file
    another user's tool wrote (the same reference under another owner key)."""
    root = tmp_path_factory.mktemp("made")
    with cache_at(root / "a"):
        truth = reference(demo)
        (good,) = (root / "a").iterdir()
        other = reference(demo, cfg=3.0)
        (other_file,) = set((root / "a").iterdir()) - {good}
    old = os.environ[KEY_ENV]
    os.environ[KEY_ENV] = str(root / "another-user.key")
    try:
        with cache_at(root / "b"):
            reference(demo)
            (foreign,) = (root / "b").iterdir()
    finally:
        os.environ[KEY_ENV] = old
    assert foreign.name == good.name and foreign.read_bytes() != good.read_bytes()  # same key, another mark
    assert not np.array_equal(other.images, truth.images)
    return {"truth": truth, "good": good, "other": other_file, "foreign": foreign}


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k].copy() for k in data.files}


def savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def remarked(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`arrays` with a valid mark under this user's key: a file this tool could have written."""
    contents = yardstick._marked_contents(str(arrays["key"]), arrays["images"], arrays["x"], int(arrays["steps"]),
                                          float(arrays["self_check_db"]))  # fmt: skip
    return {**arrays, "mac": np.array(contents_mac(contents, owner_key(create=True) or b""), "<U64")}


REFUSED = ("hand-made", "old-layout", "foreign", "one-byte", "not-x", "key-relabelled", "white")
RECOMPUTED = ("key-swapped", "not-x-marked")


def plant(kind: str, made: dict[str, object], path: Path, where: int) -> None:
    """Put a cache file of `kind` at `path` (`where`: which element one-byte changes)."""
    good: Path = made["good"]  # type: ignore[assignment]
    truth: yardstick.ReferenceImages = made["truth"]  # type: ignore[assignment]
    arrays = arrays_of(good)
    if kind == "hand-made":  # the right arrays and key, a mark made up
        savez(path, {**arrays, "mac": np.array(f"{where:064x}"[-64:], "<U64")})
    elif kind == "old-layout":  # what earlier versions wrote: no mark, a label of any text
        savez(path, {"images": truth.images, "x": truth.x, "label": np.array(SECRET + "\x1b[31m" * 100)})
    elif kind == "foreign":  # the tool's file under another user's key
        shutil.copy(made["foreign"], path)  # type: ignore[arg-type]
    elif kind == "one-byte":
        name = ("images", "x")[where % 2]
        flat = arrays[name].reshape(-1).view(np.uint8)
        flat[where % flat.size] ^= 1 << (where % 7)
        savez(path, arrays)
    elif kind == "not-x":
        savez(path, {**arrays, "images": 255 - arrays["images"]})
    elif kind == "white":  # the images all white, the original x and mark
        savez(path, {**arrays, "images": np.full_like(arrays["images"], 255)})
    elif kind == "key-relabelled":  # the other settings' file claiming this key, its mark kept
        savez(path, {**arrays_of(made["other"]), "key": arrays["key"]})  # type: ignore[arg-type]
    elif kind == "key-swapped":  # the tool's own valid file of other settings under this name
        shutil.copy(made["other"], path)  # type: ignore[arg-type]
    elif kind == "not-x-marked":  # the tool's mark, but images that are not its x rounded
        savez(path, remarked({**arrays, "images": 255 - arrays["images"]}))
    else:
        raise AssertionError(kind)


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(REFUSED + RECOMPUTED), where=st.integers(0, 2**20))
@example(kind="one-byte", where=0).via("the first byte of the images")
@example(kind="one-byte", where=1).via("the first byte of x")
@example(kind="hand-made", where=7).via("every kind at least once")
@example(kind="old-layout", where=7).via("every kind at least once")
@example(kind="foreign", where=7).via("every kind at least once")
@example(kind="not-x", where=7).via("every kind at least once")
@example(kind="key-relabelled", where=7).via("every kind at least once")
@example(kind="white", where=7).via("every kind at least once")
@example(kind="key-swapped", where=7).via("every kind at least once")
@example(kind="not-x-marked", where=7).via("every kind at least once")
def test_a_reference_not_written_for_this_key_is_never_used(made, demo, tmp_path, kind, where) -> None:
    truth: yardstick.ReferenceImages = made["truth"]  # type: ignore[assignment]
    folder = tmp_path / f"ys-{kind}-{where}"
    folder.mkdir()
    path = folder / made["good"].name  # type: ignore[union-attr]
    plant(kind, made, path, where)
    raw = path.read_bytes()
    _calls[0] = 0
    with cache_at(folder):
        if kind in REFUSED:
            with pytest.raises(UntrustedFileError) as caught:
                reference(demo)
            message = str(caught.value)
            assert message.startswith(str(path)) and "\n" not in message and SECRET not in message
            assert "delete it to compute the reference again" in message
            assert path.read_bytes() == raw and _calls[0] == 0  # refused before any work, left as it was
            return
        got = reference(demo)  # the tool's own file for another key: computed again
        assert _calls[0] > 0
        assert np.array_equal(got.images, truth.images) and np.array_equal(got.x, truth.x) and got.label == truth.label
        assert path.read_bytes() != raw  # replaced by the right one, which is used from now on
        _calls[0] = 0
        again = reference(demo)
    assert _calls[0] == 0 and np.array_equal(again.images, truth.images) and again.label == truth.label


def test_a_valid_reference_is_reused_without_a_model_call(made, demo, tmp_path) -> None:
    truth: yardstick.ReferenceImages = made["truth"]  # type: ignore[assignment]
    shutil.copy(made["good"], tmp_path)  # type: ignore[arg-type]
    _calls[0] = 0
    with cache_at(tmp_path):
        got = reference(demo)
        assert _calls[0] == 0 and np.array_equal(got.x, truth.x) and got.label == truth.label
        assert got.label.startswith("ab3 8 (half the steps: ") and got.label.endswith(" dB)")
        net = make_torch_engine(BackendSpec("torch", "fp32"), demo, CPU)
        report = yardstick.measure(net, demo, Y, ["euler"], [2])
    assert _calls[0] == 2 + yardstick.RELEASE_STEPS  # the solver's run and the release's: the reference was read
    assert report["settings"]["reference"] == truth.label


def test_the_cache_folder_and_file_are_never_followed_through_a_symlink(made, demo, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(made["good"], elsewhere)  # type: ignore[arg-type]
    os.symlink(elsewhere, tmp_path / "ys")
    _calls[0] = 0
    with cache_at(tmp_path / "ys"), pytest.raises(UntrustedFileError, match="reference folder is a symlink"):
        reference(demo)
    (tmp_path / "ys").unlink()
    (tmp_path / "ys").mkdir()
    os.symlink(elsewhere / made["good"].name, tmp_path / "ys" / made["good"].name)  # type: ignore[union-attr]
    with cache_at(tmp_path / "ys"), pytest.raises(UntrustedFileError, match="symlink"):
        reference(demo)
    assert _calls[0] == 0


def test_raw_and_ema_weights_never_share_a_reference(demo, tmp_path) -> None:
    """One training checkpoint, two weight sets: each gets its own reference (the key is the model's numbers)."""
    state = demo.model.state_dict()
    noisy = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    ckpt = tmp_path / "both.ckpt"
    torch.save({"state_dict": {**{f"ema_denoiser.{k}": v for k, v in state.items()},
                               **{f"denoiser.{k}": v for k, v in noisy.items()}}}, ckpt)  # fmt: skip
    ema, raw = resolve_model(ckpt, weights="ema"), resolve_model(ckpt, weights="raw")
    with cache_at(tmp_path / "ys"):
        first, second = reference(ema), reference(raw)
        assert len(list((tmp_path / "ys").iterdir())) == 2
        _calls[0] = 0
        assert np.array_equal(reference(ema).x, first.x) and np.array_equal(reference(raw).x, second.x)
    assert _calls[0] == 0 and not np.array_equal(first.x, second.x)
    assert yardstick.model_identity(ema) != yardstick.model_identity(raw)


# ---------------------------------------------------------------- the command: dip-bench --samplers


def bench(cwd: Path, *extra: str) -> tuple[int, str, int]:
    """`dip-bench --samplers euler --nfe 2 --batch-size 1` in `cwd` (engines/yardstick/ below it): exit code, what
    it printed, backbone evaluations."""
    err = io.StringIO()
    argv = ["dip-bench", "--samplers", "euler", "--nfe", "2", "--batch-size", "1", "--device", "cpu", *extra]
    old_cwd, old_argv = os.getcwd(), sys.argv
    _calls[0] = 0
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            sys.argv = argv
            try:
                cli.bench_main()
                code = 0
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
    return code, err.getvalue(), _calls[0]


def psnr_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if "nfe" in line and "dB" in line]
    return line.split("dB")[0]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, str, int]:
    """The command in a new folder: the reference computed and cached; its file, PSNR line, evaluations."""
    folder = tmp_path_factory.mktemp("fresh")
    code, text, calls = bench(folder)
    assert code == 0, text
    (path,) = (folder / "engines" / "yardstick").iterdir()
    return path, psnr_line(text), calls


def test_the_solver_rows_print_plainly(fresh) -> None:
    _, line, _ = fresh
    assert line.startswith("euler ") and "\\" not in line  # the tool's own layout: no space shown escaped


def test_the_command_reuses_its_own_reference(fresh, tmp_path) -> None:
    path, line, calls = fresh
    (tmp_path / "engines" / "yardstick").mkdir(parents=True)
    shutil.copy(path, tmp_path / "engines" / "yardstick")
    code, text, again = bench(tmp_path)
    assert code == 0 and psnr_line(text) == line
    assert again == 2 + yardstick.RELEASE_STEPS < calls  # only the solver's and the release's runs


@pytest.mark.parametrize("kind", ["white", "hand-made", "key-swapped"])
def test_the_command_never_prints_a_psnr_against_a_planted_reference(fresh, tmp_path, kind) -> None:
    path, line, _ = fresh
    planted = tmp_path / "engines" / "yardstick" / path.name
    planted.parent.mkdir(parents=True)
    arrays = arrays_of(path)
    if kind == "white":  # the report's case: white images, the original x
        savez(planted, {**arrays, "images": np.full_like(arrays["images"], 255)})
    elif kind == "hand-made":
        savez(planted, {"images": arrays["images"], "x": arrays["x"], "label": np.array(SECRET)})
    else:  # the tool's own file of another guidance, under this name
        other = tmp_path / "other"
        other.mkdir()
        code, _, _ = bench(other, "--cfg", "3.0")
        assert code == 0
        (source,) = (other / "engines" / "yardstick").iterdir()
        shutil.copy(source, planted)
    raw = planted.read_bytes()
    code, text, _ = bench(tmp_path)
    if kind == "key-swapped":
        assert code == 0 and psnr_line(text) == line  # computed again: the PSNR of a fresh reference
        assert planted.read_bytes() != raw
        return
    lines = text.strip().splitlines()
    assert code != 0 and "Traceback" not in text and SECRET not in text
    assert lines[-1].startswith("error:") and f"engines/yardstick/{path.name}" in lines[-1]
    assert "delete it to compute the reference again" in lines[-1]
    assert not [x for x in lines if "nfe" in x and "dB" in x]  # no PSNR printed
    assert planted.read_bytes() == raw
