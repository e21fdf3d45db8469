"""A backend and precision this machine cannot run is refused from the arguments, before any file is read or
export made: ONNX Runtime's CPU provider has no bf16 kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dip_export import DiPPipeline, cli
from dip_export.errors import DipError
from dip_export.runtime.backends import BackendSpec, unavailable_reason
from tests.test_hostile import one_line, run


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8"])
def test_onnx_on_the_cpu_refuses_bf16_only(precision: str) -> None:
    reason = unavailable_reason(BackendSpec.parse(f"onnx:{precision}"), torch.device("cpu"))
    assert (reason is not None and "bf16 kernels" in reason) == (precision == "bf16")


def test_cli_and_api_refuse_onnx_bf16_on_the_cpu_before_any_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, "--backend", "onnx:bf16", "--device", "cpu", "--classes", "1", "--seeds", "0",
                    "--steps", "2", "--out", tmp_path / "x.npz")  # fmt: skip
    one_line(code, err, code, "no bf16 kernels")
    assert code != 0
    with pytest.raises(DipError, match="no bf16 kernels"):
        DiPPipeline.load(backend="onnx:bf16", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no engines/, no output
