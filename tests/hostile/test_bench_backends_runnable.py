"""`dip-bench --backends` naming only backends this device cannot run (TensorRT on a CPU, ONNX Runtime's bf16 on a
CPU), for the table or the yardstick: refused in one line before any work, as dip-sample refuses such a backend.
A list with one that runs keeps the others as rows skipped with their reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dip_export import cli
from dip_export.runtime.backends import BackendSpec, unavailable_reason
from tests.test_hostile import one_line, run

CPU_ONLY = ["trt:fp16", "trt:int8", "trt", "onnx:bf16", "trt:fp16,trt:int8", "trt,onnx:bf16"]


@pytest.mark.parametrize("backends", CPU_ONLY)
@pytest.mark.parametrize("samplers", [False, True])
def test_only_backends_this_device_cannot_run_are_refused_before_work(tmp_path: Path, monkeypatch, backends, samplers) -> None:
    monkeypatch.chdir(tmp_path)
    import torch

    for name in backends.split(","):  # the premise: none of them runs on this CPU
        assert unavailable_reason(BackendSpec.parse(name), torch.device("cpu"), from_model=True) is not None
    if samplers and "," in backends:
        return  # --samplers measures on one backend: several are refused for that first
    args = ["--samplers", "euler"] if samplers else ["--steps", "1"]
    started = time.perf_counter()
    code, err = run(cli.bench_main, "--device", "cpu", "--image-size", "32", "--backends", backends, *args)
    one_line(code, err, 2, "--backends: none named runs on cpu", backends.split(",")[0].split(":")[0])
    assert time.perf_counter() - started < 10
    assert not (tmp_path / "engines").exists()
