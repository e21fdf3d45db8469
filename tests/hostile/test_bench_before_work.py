"""dip-bench refuses before any measurement: the work of every row (the --backend auto measurement included), every
yardstick row's settings, and the tool's own cache locations, before a model is read, an engine made or a
reference computed. Heun makes 2N - 1 evaluations: an even count runs as the odd one below, said, never twice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import DipError
from dip_export.measure import autobackend, yardstick
from dip_export.sampling import SamplerSettings
from dip_export.sampling.loop import sample_counts
from tests.test_hostile import run


def _never(what: str):
    def called(*_args, **_kwargs):
        raise AssertionError(f"{what} ran before the refusal")

    return called


def _refused(code: int, err: str, *words: str, expected: int = 2) -> None:
    last = err.strip().splitlines()[-1]
    assert code == expected and last.startswith("error:") and "Traceback" not in err, err
    for word in words:
        assert word in last, last


def test_auto_is_refused_by_the_work_limit_before_it_measures(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(autobackend, "measure", _never("the --backend auto measurement"))
    code, err = run(cli.bench_main, "--backends", "auto", "--steps", "10000", "--repeats", "1000")
    _refused(code, err, "network evaluations", "more than the limit", expected=2)  # too much work asked: exit 2
    assert not (tmp_path / "engines").exists()


@pytest.mark.parametrize(
    ("nfe", "words"),
    [("2,10001", ["--nfe must be in 1..10000"]), ("0,4", ["--nfe must be in 1..10000"]), ("2,1", ["would never apply"])],
)
def test_every_yardstick_row_is_checked_before_the_reference(monkeypatch, tmp_path, nfe, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(yardstick, "reference_images", _never("the reference"))
    monkeypatch.setattr(yardstick, "_run", _never("a row"))
    code, err = run(cli.bench_main, "--samplers", "euler,heun", "--nfe", nfe, "--batch-size", "1")
    _refused(code, err, *words)
    assert "nfe" not in err.splitlines()[0] or err.count("\n") <= 2  # no row was printed
    assert not (tmp_path / "engines" / "yardstick").exists()


@given(st.lists(st.integers(1, 60), min_size=1, max_size=8, unique=True))
def test_heun_runs_each_count_it_can_make_once(nfes):
    base = SamplerSettings(cfg=1.0)  # (a guidance no 1-step grid reaches is refused: `test_every_yardstick_row...`)
    runs = yardstick.plan_runs(["heun", "euler"], nfes, base)
    heun = [r for r in runs if r.method == "heun"]
    euler = [r for r in runs if r.method == "euler"]
    evals = [sample_counts(r)["paired_evals"] + sample_counts(r)["single_evals"] for r in heun]
    assert sorted(r.steps for r in euler) == sorted(nfes)  # one evaluation a step: every count as asked
    assert len(set(evals)) == len(evals) == len(heun)  # never two rows at one count
    assert set(evals) == {n - (n % 2 == 0 and n > 1) for n in nfes}  # the odd count at or below each asked
    note = yardstick.heun_counts(["heun"], nfes)
    assert (note is None) == all(n == 1 or n % 2 for n in nfes)
    assert yardstick.heun_counts(["euler"], nfes) is None


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize("kind", ["folder", "fifo", "foreign file", "symlink"])
def test_the_auto_cache_is_checked_before_a_model_is_read(monkeypatch, tmp_path, kind):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "engines" / "auto-backend.json"
    cache.parent.mkdir()
    {"folder": cache.mkdir, "fifo": lambda: _fifo(cache), "foreign file": lambda: cache.write_text("{}"),
     "symlink": lambda: cache.symlink_to(tmp_path / "elsewhere.json")}[kind]()  # fmt: skip
    import dip_export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "open_source", _never("the model's read"))
    with pytest.raises(DipError, match=r"auto-backend\.json"):
        DiPPipeline.load(backend="auto")
    code, err = run(cli.sample_main, "--backend", "auto", "--num-samples", "1", "--out", tmp_path / "s.npz")
    assert code != 0 and "auto-backend.json" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert cache.is_symlink() or cache.exists()  # left as it was
    assert not (tmp_path / "s.npz").exists()


def test_the_yardstick_folder_is_checked_before_a_model_is_read(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "engines" / "yardstick").symlink_to(tmp_path / "mine")
    import dip_export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "open_source", _never("the model's read"))
    code, err = run(cli.bench_main, "--samplers", "euler", "--nfe", "2", "--batch-size", "1")
    assert code != 0 and "yardstick reference folder is a symlink" in err and "Traceback" not in err
    assert (tmp_path / "engines" / "yardstick").is_symlink() and not list((tmp_path / "mine").iterdir())
