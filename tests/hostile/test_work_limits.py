"""Work budget: the product of dip-bench's limits is checked before any timing or reference run."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export.errors import UsageError
from dip_export.settings import choice_list


def _bench(argv, monkeypatch, capsys):
    from dip_export.cli import bench_main

    monkeypatch.setattr(sys, "argv", ["dip-bench", *argv])
    with pytest.raises(SystemExit) as exit_:
        bench_main()
    return exit_.value.code, capsys.readouterr().err


def test_repeats_times_steps_is_refused_before_timing(monkeypatch, capsys):
    import dip_export.measure.bench as bench

    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("timing started"))
    code, err = _bench(["--repeats", "1000", "--steps", "10000", "--backends", "torch"], monkeypatch, capsys)
    assert code == 2 and "network evaluations" in err


@pytest.mark.parametrize("samplers", [",", " , ", "euler,,nope"])
def test_empty_or_unknown_sampler_list_is_refused_before_the_reference(monkeypatch, capsys, samplers):
    import dip_export.measure.yardstick as yardstick

    monkeypatch.setattr(yardstick, "measure", lambda *a, **k: pytest.fail("measuring started"))
    code, err = _bench(["--samplers", samplers, "--nfe", "1"], monkeypatch, capsys)
    assert code == 2 and "--samplers" in err


@given(st.lists(st.sampled_from(["euler", "heun", "ab2"]), min_size=1, max_size=6))
def test_choice_list_keeps_order_and_refuses_repeats(names):
    if len(set(names)) == len(names):
        assert choice_list(",".join(names), "--samplers", ("euler", "heun", "ab2")) == names
    else:
        with pytest.raises(UsageError, match="twice; name each once"):
            choice_list(",".join(names), "--samplers", ("euler", "heun", "ab2"))


@pytest.mark.parametrize("args", [["--samplers", "euler,euler", "--nfe", "2"], ["--samplers", "euler", "--nfe", "2,2"]])
def test_bench_refuses_a_repeated_solver_or_count_before_any_work(args, monkeypatch, capsys):
    import dip_export.measure.yardstick as yardstick

    monkeypatch.setattr(yardstick, "measure", lambda *a, **k: pytest.fail("measuring started"))
    code, err = _bench(args, monkeypatch, capsys)
    assert code == 2 and "twice; name each once" in err


@given(st.text(alphabet=", ", max_size=5))
def test_choice_list_refuses_empty(text):
    with pytest.raises(UsageError):
        choice_list(text, "--samplers", ("euler",))
