"""The timing harness and the backend registry: figures from known run times, records that agree with the specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dip_export.errors import UsageError
from dip_export.measure.harness import Timing, cpu_threads, psnr, repeat
from dip_export.runtime.backends import BACKENDS, BackendSpec, unavailable_reason


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
