"""Options a run would ignore or contradict are refused, in one line and before any work, from one table of rules.

The rules (`settings.SAMPLE_RULES`, `settings.BENCH_RULES`) are data; the settings objects every surface builds
(`app.SampleRequest` and `app.BenchRequest` from the CLI, `DiPPipeline.__call__` / `plan` from Python) check them
when they are built. An option counts as given when its value is not None (a flag: not False), so the options the
rules name have None as their default on every surface.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.app import BenchRequest, ModelRequest, SampleRequest
from dip_export.errors import UsageError
from dip_export.pipeline import DiPPipeline
from dip_export.settings import BENCH_RULES, SAMPLE_RULES, OptionRule
from tests.test_hostile import one_line, run

# A value for each name the rules use, as the settings object takes it (None / False everywhere else).
SAMPLE_VALUES: dict[str, dict[str, Any]] = {
    "--classes": {"classes": "1"}, "--seeds": {"seeds": "0"}, "--num-samples": {"num_samples": 2}, "--seed": {"seed": 5},
    "--class-file": {"class_file": Path("classes.txt")}, "--resume": {"resume": True}, "--shard-batches": {"shard_batches": 2},
    "torchrun": {},  # a condition of the run: WORLD_SIZE > 1
}  # fmt: skip
TORCHRUN_MEETING = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}  # what torchrun sets beside WORLD_SIZE
BENCH_VALUES: dict[str, dict[str, Any]] = {
    "--backends": {"backends": "torch"}, "--variants": {"variants": True}, "--samplers": {"samplers": "euler"},
    "--nfe": {"nfe": "2"}, "--plot": {"plot": Path("p.png")}, "--headline": {"headline": True},
}  # fmt: skip
BENCH_SAMPLING = {"--steps": ("steps", 2), "--sampler": ("sampler", "ab2"), "--cache-interval": ("cache_interval", 2),
                  "--token-forecast": ("token_forecast", "linear"), "--cfg": ("cfg", 2.0), "--shift": ("shift", 1.5)}  # fmt: skip


def _build_sample(names: set[str]) -> SampleRequest:
    kwargs: dict[str, Any] = {}
    for name in names:
        kwargs.update(SAMPLE_VALUES[name])
    env = {"WORLD_SIZE": "2" if "torchrun" in names else "1", **TORCHRUN_MEETING}
    with mock.patch.dict(os.environ, env):
        return SampleRequest(ModelRequest(), Path("o.npz"), **kwargs)


def _build_bench(names: set[str]) -> BenchRequest:
    kwargs: dict[str, Any] = {}
    sampling: dict[str, Any] = {key: None for key, _ in BENCH_SAMPLING.values()}  # as the CLI passes them: None = not given
    for name in names:
        if name in BENCH_SAMPLING:
            key, value = BENCH_SAMPLING[name]
            sampling[key] = value
        else:
            kwargs.update(BENCH_VALUES[name])
    return BenchRequest(ModelRequest(), sampling, **kwargs)


def _of_the_request(rules: tuple[OptionRule, ...]) -> tuple[OptionRule, ...]:
    """The rules a request checks when it is built: not those naming the run's device or backends (`device cpu`,
    `backend onnx`), which are checked once these are known (tests/hostile/test_options_apply.py)."""
    return tuple(r for r in rules if not any(n.startswith(("device ", "backend ")) for n in (*r.needs, *r.excludes)))


SURFACES = [(_of_the_request(SAMPLE_RULES), SAMPLE_VALUES.keys(), _build_sample),
            (_of_the_request(BENCH_RULES), [*BENCH_VALUES, *BENCH_SAMPLING], _build_bench)]  # fmt: skip


def _broken(rule: OptionRule, names: set[str]) -> bool:
    """What a rule means, written out independently of OptionRule.broken_by."""
    if rule.option not in names:
        return False
    return bool(rule.needs and not names & set(rule.needs)) or bool(names & set(rule.excludes))


def test_every_name_a_rule_uses_has_a_surface() -> None:
    for rules, names, _ in SURFACES:
        for rule in rules:
            assert {rule.option, *rule.needs, *rule.excludes} <= set(names), rule
            assert rule.needs or rule.excludes, rule


@pytest.mark.parametrize(("table", "index"), [(t, i) for t, (rules, _, _) in enumerate(SURFACES) for i in range(len(rules))])
def test_each_rule_refuses_its_violation_and_accepts_its_use(table: int, index: int) -> None:
    rules, _, build = SURFACES[table]
    rule = rules[index]
    bad = {rule.option, rule.excludes[0]} if rule.excludes else {rule.option}
    with pytest.raises(UsageError) as refused:
        build(bad)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{rule.option} ")
    assert (rule.excludes[0] if rule.excludes else rule.needs[0]) in message
    good = {rule.option, rule.needs[0]} if rule.needs else {rule.option}
    build(good)  # accepted: nothing in the table forbids the rule's own use
    build(set())  # nothing given: the defaults


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.data())
def test_an_object_is_refused_exactly_when_its_options_break_a_rule(data: st.DataObject) -> None:
    rules, names, build = SURFACES[data.draw(st.sampled_from([0, 1]))]
    chosen = data.draw(st.sets(st.sampled_from(sorted(names))))
    first = next((rule for rule in rules if _broken(rule, chosen)), None)
    if first is None:
        build(chosen)
        return
    with pytest.raises(UsageError) as refused:
        build(chosen)
    assert str(refused.value).startswith(f"{first.option} ") and "\n" not in str(refused.value)


# ---------------------------------------------------------------- the CLI: one line, exit 2, nothing done


@pytest.fixture
def nothing_loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(DiPPipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--classes", "1", "--seeds", "0", "--seed", "5"], "--seeds does not take --seed"),
     (["--seeds", "0,1", "--seed", "0"], "--seeds does not take --seed"),  # the default's value, typed: still given
     (["--classes", "1", "--seeds", "0", "--shard-batches", "7"], "--shard-batches goes only with --resume or torchrun"),
     (["--num-samples", "2", "--shard-batches", "4"], "--shard-batches goes only with --resume"),
     (["--classes", "1", "--num-samples", "2"], "--num-samples does not take --classes"),
     (["--class-file", "c.txt"], "--class-file goes only with --num-samples")],
)  # fmt: skip
def test_dip_sample_refuses_an_option_it_would_ignore(nothing_loaded: None, tmp_path: Path, args: list[str],
                                                      words: str) -> None:  # fmt: skip
    code, err = run(cli.sample_main, *args, "--steps", "2", "--device", "cpu", "--out", tmp_path / "a.npz")
    one_line(code, err, 2, words)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--backends", "torch", "--nfe", "5"], "--nfe goes only with --samplers"),
     (["--samplers", "euler", "--nfe", "2", "--steps", "5"], "--samplers does not take --steps"),
     (["--samplers", "euler", "--nfe", "2", "--sampler", "ab2"], "--samplers does not take --sampler"),
     (["--samplers", "euler", "--nfe", "2", "--sampler", "ab2", "--steps", "5"], "--samplers does not take --sampler, --steps")],
)  # fmt: skip
def test_dip_bench_refuses_an_option_it_would_ignore(nothing_loaded: None, tmp_path: Path, args: list[str],
                                                     words: str) -> None:  # fmt: skip
    code, err = run(cli.bench_main, *args, "--batch-size", "1", "--warmup", "0", "--repeats", "1", "--device", "cpu",
                    "--json", tmp_path / "b.json")  # fmt: skip
    one_line(code, err, 2, words)
    assert list(tmp_path.iterdir()) == []


def test_shard_batches_is_taken_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in TORCHRUN_MEETING.items():
        monkeypatch.setenv(name, value)
    assert SampleRequest(ModelRequest(), Path("o.npz"), num_samples=4, shard_batches=3).batches_per_shard == 3
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(UsageError, match="--shard-batches goes only with --resume or torchrun"):
        SampleRequest(ModelRequest(), Path("o.npz"), num_samples=4, shard_batches=3)
    assert SampleRequest(ModelRequest(), Path("o.npz"), num_samples=4, shard_batches=3, resume=True).batches_per_shard == 3


def test_python_bench_request_refuses_like_the_cli() -> None:
    with pytest.raises(UsageError, match="--nfe goes only with --samplers"):
        BenchRequest(ModelRequest(), {}, nfe="5")
    with pytest.raises(UsageError, match="--samplers does not take --steps"):
        BenchRequest(ModelRequest(), {"steps": 5}, samplers="euler")
    BenchRequest(ModelRequest(), {"steps": None, "cfg": 2.0}, samplers="euler", nfe="2")  # the yardstick uses --cfg


# ---------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def pipe() -> DiPPipeline:
    return DiPPipeline.load(device="cpu", batch_size=4)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"classes": [1], "seeds": [0], "seed": 5}, "--seeds does not take --seed"),
     ({"seeds": [0], "seed": 0}, "--seeds does not take --seed"),
     ({"classes": [1], "num_samples": 2}, "--num-samples does not take --classes"),
     ({"seeds": [3], "num_samples": 1, "seed": 3}, "--num-samples does not take --seeds")],
)  # fmt: skip
def test_the_api_refuses_what_it_would_ignore_before_sampling(pipe: DiPPipeline, monkeypatch: pytest.MonkeyPatch,
                                                              kwargs: dict[str, Any], words: str) -> None:  # fmt: skip
    monkeypatch.setattr(pipe, "generate", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(UsageError, match=words):
        pipe(steps=2, **kwargs)
    with pytest.raises(UsageError, match=words):
        pipe.plan(**kwargs)


def test_seed_is_the_first_seed_where_it_is_taken(pipe: DiPPipeline) -> None:
    assert pipe.plan([1, 2], seed=7).seeds == [7, 8]  # classes without seeds
    assert pipe.plan(num_samples=2, seed=7).seeds == [7, 8]
    assert pipe.plan(num_samples=2).seeds == [0, 1]  # not given: 0
    np.testing.assert_array_equal(pipe(classes=[1], seed=5, steps=1), pipe(classes=[1], seeds=[5], steps=1))
