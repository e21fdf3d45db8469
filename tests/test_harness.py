"""The timing harness and the backend registry: figures from known run times, records that agree with the specs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dip_export.errors import UsageError
from dip_export.measure.harness import (
    RepeatPolicy,
    Timing,
    cpu_flags,
    cpu_threads,
    physical_cores,
    psnr,
    ratio_spread,
    repeat,
)
from dip_export.runtime.backends import BACKENDS, BackendSpec, unavailable_reason
from dip_export.settings import MAX_REPEATS


def test_timing_reports_median_and_relative_iqr():
    timing = Timing((0.10, 0.12, 0.11, 0.30, 0.09), threads=4)
    assert timing.median == pytest.approx(0.11)
    assert (timing.min, timing.max) == (0.09, 0.30)
    assert timing.spread == pytest.approx((0.12 - 0.10) / 0.11)  # quartiles of five runs: 0.10 and 0.12
    assert Timing((0.5,), threads=1).spread == 0.0


def test_repeat_warms_up_times_each_run_and_restores_the_thread_count():
    calls, before = [], torch.get_num_threads()
    timing, last = repeat(lambda: calls.append(torch.get_num_threads()) or len(calls), torch.device("cpu"),
                          warmup=2, repeats=3, threads=1)  # fmt: skip
    assert len(calls) == 5 and set(calls) == {1} and last == 5
    assert len(timing.seconds) == 3 and timing.threads == 1 and all(s >= 0 for s in timing.seconds)
    assert torch.get_num_threads() == before
    with cpu_threads(None) as used:
        assert used == before


def test_psnr_of_a_known_error():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[...] = 10  # mse 100: 10 log10(255^2 / 100) = 28.13 dB
    assert psnr(a, b) == pytest.approx(10 * np.log10(255.0**2 / 100))
    assert psnr(a, a) == float("inf")


def test_every_record_is_consistent_and_specs_follow_it():
    for name, record in BACKENDS.items():
        assert record.name == name and record.default in record.precisions
        assert BackendSpec.parse(name) == BackendSpec(name, record.default)
        assert record.runs_from in ("model", "export")
        assert not record.needs_tensorrt or record.needs_cuda
    assert BackendSpec.parse("trt") == BackendSpec("trt", "fp16")
    with pytest.raises(UsageError, match="no precision 'int8'"):
        BackendSpec.parse("torch:int8")


def test_unavailable_reasons_come_from_the_records():
    cpu = torch.device("cpu")
    assert unavailable_reason(BackendSpec("trt", "fp16"), cpu) == "TensorRT needs a CUDA GPU"
    assert unavailable_reason(BackendSpec("compile", "fp16"), cpu) == "fp16 autocast is not a CPU path"
    assert unavailable_reason(BackendSpec("torch", "fp32"), cpu) is None
    assert [n for n, r in BACKENDS.items() if r.graphable] == ["torch", "compile", "trt"]


def test_repeats_continue_while_the_spread_is_above_the_bound(monkeypatch):
    """Known run times (no clock): the policy stops at the bound, the cap, or the time budget."""
    from dip_export.measure import harness

    def runs(times):
        it = iter(times)
        monkeypatch.setattr(harness, "timed_call", lambda fn, device: (fn(), next(it)))
        timing, _ = repeat(lambda: None, torch.device("cpu"), warmup=0, repeats=policy)
        return timing.seconds

    policy = RepeatPolicy(repeats=3, max_repeats=8, target_spread=0.05, max_seconds=100.0)
    assert runs([1.0] * 10) == (1.0,) * 3  # steady at once: the minimum
    assert len(runs([1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])) == 5  # until the quartiles agree
    assert len(runs([1.0, 2.0] * 10)) == 8  # never steady: the cap
    policy = RepeatPolicy(repeats=2, max_repeats=8, target_spread=0.05, max_seconds=2.5)
    assert len(runs([1.0, 2.0] * 10)) == 2  # the time budget spent on the minimum
    assert len(runs([1.0, 1.2, 1.0, 1.3] * 5)) == 3


@given(
    repeats=st.integers(-3, 2000),
    extra=st.integers(-5, 50),
    spread=st.floats(-1, 2) | st.just(float("nan")),
)
def test_a_repeat_policy_takes_only_what_it_can_honour(repeats, extra, spread):
    ok = 1 <= repeats <= MAX_REPEATS and repeats <= repeats + extra <= MAX_REPEATS and 0 <= spread <= 1
    try:
        RepeatPolicy(repeats, repeats + extra, spread)
    except UsageError:
        assert not ok
    else:
        assert ok


@given(st.floats() | st.integers(-(10**400), 10**400) | st.booleans() | st.none() | st.text(max_size=3))
def test_a_repeat_policy_time_cap_is_a_positive_number_kept_as_a_float(cap):
    ok = type(cap) in (int, float) and cap > 0  # NaN is not > 0; bools, None and text are no number
    try:
        policy = RepeatPolicy(max_seconds=cap)
    except UsageError as err:
        assert not ok and len(str(err)) < 200
    else:
        assert ok and type(policy.max_seconds) is float
        try:
            expected = float(cap)
        except OverflowError:  # an int past float range: no cap
            expected = math.inf
        assert policy.max_seconds == expected


def test_ratio_spread_adds_relative_spreads_in_quadrature():
    a = Timing((0.9, 1.0, 1.1, 1.0, 1.0), threads=1)
    b = Timing((2.0, 2.0, 2.0), threads=1)
    assert ratio_spread(a, b) == pytest.approx(a.spread) and ratio_spread(a, a) == pytest.approx(a.spread * 2**0.5)
    assert a.quartiles == (pytest.approx(1.0), pytest.approx(1.0)) and b.spread == 0.0


def test_physical_cores_and_cpu_flags_are_read_from_the_system():
    import os

    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    flags = cpu_flags()
    assert flags == sorted(flags) and all(f.startswith(("avx", "amx")) or f in ("fma", "f16c") for f in flags)


def test_the_catalog_is_the_registrys_facts_and_the_manifests_precisions():
    from dataclasses import fields

    from dip_export.export.manifest import PRECISIONS
    from dip_export.runtime.catalog import CATALOG, BackendInfo

    assert [info.name for info in CATALOG] == list(BACKENDS)
    for info in CATALOG:
        record = BACKENDS[info.name]
        assert all(getattr(record, f.name) == getattr(info, f.name) for f in fields(BackendInfo))
    assert set(PRECISIONS) == {p for info in CATALOG for p in info.precisions}


@pytest.mark.parametrize(
    ("device", "native", "expected"),
    [
        ("cpu", False, ["torch:fp32", "onnx:fp32", "compile:fp32"]),
        ("cpu", True, ["torch:fp32", "onnx:fp32", "torch:bf16", "compile:bf16"]),
        ("cuda", True, ["torch:fp32", "torch:bf16", "compile:bf16"]),
        ("cuda", False, ["torch:fp32", "torch:fp16", "compile:fp16"]),
    ],
)
def test_auto_candidates_come_from_the_registry(monkeypatch, device, native, expected):
    from dip_export.measure import autobackend

    monkeypatch.setattr(autobackend, "native_bf16", lambda _: native)
    assert [str(s) for s in autobackend.candidates(torch.device(device))] == expected
