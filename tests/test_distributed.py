"""Sharded sampling: torchrun with two CPU workers gives the single-process bytes; runs resume."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dip_export.cli import sample_app
from dip_export.distributed import World, parts_dir, shard_ranges
from dip_export.errors import UsageError

runner = CliRunner()
SINGLE = ["--num-samples", "10", "--seed", "5", "--steps", "3", "--batch-size", "2", "--device", "cpu"]
ARGS = [*SINGLE, "--shard-batches", "2"]  # sharded runs (--resume, torchrun): --shard-batches goes only with them


def _single(tmp_path: Path) -> np.ndarray:
    out = tmp_path / "single.npz"
    result = runner.invoke(sample_app, [*SINGLE, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return np.load(out)["arr_0"]


def test_shards_cover_every_index_once():
    ranges = shard_ranges(10, 4)
    assert ranges == [(0, 4), (4, 8), (8, 10)]


def test_resume_skips_finished_shards_and_gives_the_same_bytes(tmp_path, monkeypatch):
    expected = _single(tmp_path)
    out = tmp_path / "r.npz"
    result = runner.invoke(sample_app, [*ARGS, "--resume", "--out", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out)["arr_0"], expected)
    shards = sorted(parts_dir(out).glob("shard-*.npz"))
    assert len(shards) == 3
    shards[1].unlink()  # as if killed while writing shard 1
    out.unlink()
    calls = []
    import dip_export.generate as gen

    real = gen.sample

    def counting(*args, **kwargs):
        calls.append(args[1].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "sample", counting)
    result = runner.invoke(sample_app, [*ARGS, "--resume", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert calls == [2, 2]  # only the missing shard's two batches
    np.testing.assert_array_equal(np.load(out)["arr_0"], expected)


def test_other_settings_are_refused_not_mixed(tmp_path):
    out = tmp_path / "m.npz"
    assert runner.invoke(sample_app, [*ARGS, "--resume", "--out", str(out)]).exit_code == 0
    result = runner.invoke(sample_app, [*ARGS, "--resume", "--cfg", "2.0", "--out", str(out)])
    assert result.exit_code == 2 and "other settings (sampler)" in result.output


def test_class_file(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(str(9 - i % 10) for i in range(10)))
    out = tmp_path / "c.npz"
    result = runner.invoke(sample_app, [*SINGLE, "--class-file", str(classes), "--out", str(out)])
    assert result.exit_code == 0, result.output
    short = tmp_path / "short.txt"
    short.write_text("1\n2\n")
    result = runner.invoke(sample_app, [*SINGLE, "--class-file", str(short), "--out", str(out)])
    assert result.exit_code == 2 and "2 classes for 10 samples" in result.output


def test_world_from_env(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # torchrun sets where the group meets beside the ranks
    monkeypatch.setenv("MASTER_PORT", "29500")
    world = World.from_env()
    assert (world.rank, world.size, world.local_rank, world.is_main) == (3, 4, 1, False)


BIN = Path(sys.executable).parent


@pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="no torchrun beside this python")
def test_torchrun_two_cpu_workers_match_single_process(tmp_path):
    expected = _single(tmp_path)
    torchrun, dip_sample = str(BIN / "torchrun"), str(BIN / "dip-sample")
    out = tmp_path / "dist.npz"
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", dip_sample, *ARGS, "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(np.load(out)["arr_0"], expected)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), blank=st.integers(0, 3), extra=st.integers(0, 10**5))
def test_the_class_file_is_read_only_as_far_as_the_samples_need(tmp_path_factory, n, blank, extra):
    from dip_export.distributed import read_class_file
    from dip_export.untrusted import read_lines

    path = tmp_path_factory.mktemp("cf") / "c.txt"
    wanted = [(i * 7) % 10 for i in range(n)]
    path.write_bytes(b"".join(b"%d\r\n" % c for c in wanted) + b"\n" * blank + b"\xff not a class\n" * extra)
    assert read_class_file(path, 10, n) == wanted  # lines past the n-th are never read
    lines = read_lines(path, what="class file", max_lines=n)
    assert [number for number, _ in lines] == list(range(1, n + 1))
    if extra:
        with pytest.raises(UsageError, match=f"line {blank + n + 1}: the class file is not UTF-8"):
            read_class_file(path, 10, n + 1)
