"""Resume never mixes samples: each shard carries its run's settings digest and the tool's mark, and a shard
folder whose settings are gone, or a shard made by hand or under other settings, is refused (never deleted)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export.distributed import (
    SETTINGS_FILE,
    World,
    check_finished_shards,
    check_settings,
    parts_dir,
    run_settings,
    run_sharded,
)
from dip_export.errors import DipError
from dip_export.generate import SamplePlan
from tests.test_hostile import one_line, sample

N, BATCH, SIZE = 4, 2, 4  # 4 images in 2 shards of one batch each
PLAN = SamplePlan(list(range(N)), [i % 10 for i in range(N)])
SETTINGS = st.fixed_dictionaries({"cfg": st.sampled_from([1.5, 4.0]), "steps": st.sampled_from([2, 3])})
TAMPER = ("nothing", "settings removed", "a shard removed", "settings and a shard removed", "a hand-made shard",
          "an unmarked shard", "a shard of another run", "everything removed but the settings")  # fmt: skip


def _tag(run: dict) -> int:
    """The pixel value a run's images hold: different settings, different images."""
    return int(10 * run["cfg"] + run["steps"])


def _run(out: Path, run: dict) -> np.ndarray | None:
    def make(part: SamplePlan) -> np.ndarray:
        return np.full((len(part), SIZE, SIZE, 3), _tag(run), np.uint8)

    check_settings(parts_dir(out), run_settings(run, PLAN, BATCH, 1), World())  # as dip-sample --resume calls them
    check_finished_shards(out, N, BATCH, (SIZE, SIZE, 3))
    return run_sharded(PLAN, out, world=World(), settings=run, batch_size=BATCH, shard_batches=1, make_images=make)


def _savez(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _tamper(folder: Path, how: str, other: Path) -> None:
    shard = folder / "shard-000001.npz"
    if "settings" in how and "but" not in how:
        (folder / SETTINGS_FILE).unlink()
    if "a shard removed" in how or "and a shard" in how or "everything" in how:
        shard.unlink()
    if "everything" in how:
        (folder / "shard-000000.npz").unlink()
    if how == "a hand-made shard":
        _savez(shard, arr_0=np.full((2, SIZE, SIZE, 3), 255, np.uint8), indices=np.arange(2, 4))
    if how == "an unmarked shard":  # what an older version (or a hand) writes: the arrays without the run's mark
        with np.load(shard) as data:
            _savez(shard, arr_0=data["arr_0"], indices=data["indices"])
    if how == "a shard of another run":
        shutil.copy(other / "shard-000001.npz", shard)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=SETTINGS, second=SETTINGS, how=st.sampled_from(TAMPER))
def test_a_resumed_run_holds_only_its_own_samples_or_is_refused(
    tmp_path_factory: pytest.TempPathFactory, first: dict, second: dict, how: str
) -> None:
    root = tmp_path_factory.mktemp("resume")
    out, other = root / "s.npz", root / "other.npz"
    _run(out, first)
    _run(other, {"cfg": 9.0, "steps": 9})  # another run's shards, to copy from
    folder = parts_dir(out)
    _tamper(folder, how, parts_dir(other))
    before = _contents(folder)
    resumable = how in ("nothing", "a shard removed", "everything removed but the settings") and first == second
    try:
        images = _run(out, second)
    except DipError as err:
        assert len(str(err).splitlines()) == 1 and str(folder) in str(err)
        assert _contents(folder) == before  # nothing deleted, nothing replaced
        assert not resumable, err
        return
    assert resumable, how
    assert images is not None and (images == _tag(second)).all()  # every image made under this run's settings


ARGS = ["--num-samples", "4", "--batch-size", "2", "--shard-batches", "1", "--device", "cpu", "--resume"]


def test_the_cli_refuses_the_reported_mix(tmp_path: Path) -> None:
    out = tmp_path / "mx.npz"
    code, err = sample(*ARGS, "--steps", "2", "--out", out)
    assert code == 0, err
    folder = parts_dir(out)
    (folder / "shard-000001.npz").unlink()
    (folder / SETTINGS_FILE).unlink()
    out.unlink()
    code, err = sample(*ARGS, "--steps", "3", "--cfg", "4", "--out", out)
    one_line(code, err, 2, "no settings.json", str(folder))
    assert not out.exists() and (folder / "shard-000000.npz").is_file() and not (folder / SETTINGS_FILE).exists()


def test_the_cli_refuses_a_hand_made_shard(tmp_path: Path) -> None:
    out = tmp_path / "h.npz"
    code, err = sample(*ARGS, "--steps", "2", "--out", out)
    assert code == 0, err
    shard = parts_dir(out) / "shard-000001.npz"
    with np.load(shard) as data:
        shape = data["arr_0"].shape
    _savez(shard, arr_0=np.full(shape, 255, np.uint8), indices=np.arange(2, 4))
    before = shard.read_bytes()
    out.unlink()
    code, err = sample(*ARGS, "--steps", "2", "--out", out)
    one_line(code, err, 1, "shard-000001.npz", "lacks the array run")  # no mark of a run of this tool
    assert not out.exists() and shard.read_bytes() == before
    shard.unlink()  # the control: remade by the tool, the run resumes
    code, err = sample(*ARGS, "--steps", "2", "--out", out)
    assert code == 0, err
    assert not (np.load(out)["arr_0"] == 255).all(axis=(1, 2, 3)).any()
