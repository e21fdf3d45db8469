"""A resume keys the model by its content (sha256) and weights, never by how its path is spelled: the same checkpoint
named relative or absolute, with ./, as a copy elsewhere (another name too) or through a symlink resumes the shards
already made; another content is refused. A settings file recorded under another spelling (as every earlier
version wrote one) still resumes."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.distributed import (
    SETTINGS_FILE,
    World,
    check_finished_shards,
    check_settings,
    parts_dir,
    run_settings,
    run_sharded,
)
from dip_export.errors import UsageError
from dip_export.generate import SamplePlan
from dip_export.pipeline import DiPPipeline
from tests.test_hostile import one_line, run

DEMO = Path(cli.__file__).parent / "demo" / "dip-digits.safetensors"
N, BATCH = 4, 2
PLAN = SamplePlan(list(range(N)), [i % 10 for i in range(N)])
PATHS = st.sampled_from(["m.safetensors", "./m.safetensors", "/abs/m.safetensors", "../x/m.safetensors", "other/m2.pt"])
NAMES = st.sampled_from(["m", "m2", "model", "dip-digits"])


def _identity(source: str, model: str, content: str = "abc:ema") -> dict:
    return {"model": model, "source": source, "weights": "ema", "content": content, "size": [4, 4], "backend": "torch:fp32"}


def _run(out: Path, identity: dict, made: list[int]) -> np.ndarray | None:
    def make(part: SamplePlan) -> np.ndarray:
        made.append(len(part))
        return np.full((len(part), 4, 4, 3), 7, np.uint8)

    check_settings(parts_dir(out), run_settings(identity, PLAN, BATCH, 1), World(), pending=())  # the pre-flight
    check_finished_shards(out, N, BATCH, (4, 4, 3))
    return run_sharded(PLAN, out, world=World(), settings=identity, batch_size=BATCH, shard_batches=1, make_images=make)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=PATHS, then=PATHS, name=NAMES, other_name=NAMES, same_content=st.booleans())
def test_the_path_spelling_is_never_compared(tmp_path_factory, first, then, name, other_name, same_content) -> None:
    out = tmp_path_factory.mktemp("run") / "s.npz"
    made: list[int] = []
    _run(out, _identity(first, name), made)
    shards = {p: p.read_bytes() for p in parts_dir(out).glob("shard-*.npz")}
    (parts_dir(out) / "shard-000001.npz").unlink()  # an interrupted run: one shard to make again
    made.clear()
    again = _identity(then, other_name, "abc:ema" if same_content else "def:ema")
    if not same_content:
        try:
            _run(out, again, made)
        except UsageError as err:
            assert "(content)" in str(err) and made == []
            return
        raise AssertionError("another checkpoint content resumed")
    images = _run(out, again, made)
    assert made == [BATCH] and images is not None and (images == 7).all()  # only the missing shard was made
    assert (parts_dir(out) / "shard-000000.npz").read_bytes() == shards[parts_dir(out) / "shard-000000.npz"]
    assert f'"source": "{first}"' in (parts_dir(out) / SETTINGS_FILE).read_text()  # recorded as first run, kept


@functools.cache
def _first_run(root: Path) -> dict[Path, int]:
    """dip-sample --resume on a copy of the demo checkpoint, run from `root`; the shards it made (and when)."""
    code, err = run(cli.sample_main, "m.safetensors", *ARGS)
    assert code == 0, err
    return {p: p.stat().st_mtime_ns for p in (root / "s.npz.parts").glob("shard-*.npz")}


ARGS = ["--steps", "2", "--num-samples", "2", "--batch-size", "1", "--shard-batches", "1", "--resume", "--out", "s.npz"]
SPELLINGS = st.sampled_from(["./m.safetensors", "ABS", "copy/m.safetensors", "copy/renamed.safetensors", "link.safetensors",
                             "sub/../m.safetensors"])  # fmt: skip


@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spelling=SPELLINGS)
def test_dip_sample_resumes_under_any_spelling_of_the_checkpoint(tmp_path_factory, monkeypatch, spelling) -> None:
    root = tmp_path_factory.getbasetemp() / "cli-resume"
    if not root.exists():
        (root / "copy").mkdir(parents=True)
        (root / "sub").mkdir()
        shutil.copyfile(DEMO, root / "m.safetensors")
        shutil.copyfile(DEMO, root / "copy" / "m.safetensors")
        shutil.copyfile(DEMO, root / "copy" / "renamed.safetensors")
        (root / "link.safetensors").symlink_to("m.safetensors")
    monkeypatch.chdir(root)
    shards = _first_run(root)
    model = str(root / "m.safetensors") if spelling == "ABS" else spelling
    code, err = run(cli.sample_main, model, *ARGS)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in (root / "s.npz.parts").glob("shard-*.npz")} == shards  # reused, not remade
    assert np.load(root / "s.npz")["arr_0"].shape == (2, 32, 32, 3)


def test_another_content_is_refused_by_dip_sample(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(DEMO, "m.safetensors")
    code, err = run(cli.sample_main, "m.safetensors", *ARGS)
    assert code == 0, err
    pipe = DiPPipeline.load("m.safetensors")  # the API names the same content the run recorded
    assert pipe.source.identity in (tmp_path / "s.npz.parts" / SETTINGS_FILE).read_text()
    data = bytearray(Path("m.safetensors").read_bytes())
    data[-4] ^= 1  # the lowest byte of the last weight: another content, as good a checkpoint
    Path("m.safetensors").write_bytes(bytes(data))
    code, err = run(cli.sample_main, "m.safetensors", *ARGS)
    one_line(code, err, 2, "other settings", "(content)")
