"""`auto` is a backend taken alone: `auto:PRECISION` is refused as such (never as an unknown backend), by
`BackendSpec.parse` for every surface: dip-sample, dip-bench --backends and DiPPipeline.load."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import UsageError
from dip_export.runtime.backends import BACKENDS, BackendSpec
from tests.test_hostile import one_line, run

SAID = "backend auto takes no precision"


@given(st.one_of(st.sampled_from(["fp32", "fp16", "int8", "bf16"]), st.text(min_size=1, max_size=12)))
def test_auto_with_any_precision_is_refused_as_auto(precision):
    with pytest.raises(UsageError, match=SAID):
        BackendSpec.parse(f"auto:{precision}")


@given(st.sampled_from(sorted(BACKENDS)))
def test_the_named_backends_still_parse(name):
    assert BackendSpec.parse(name).name == name


@pytest.mark.parametrize("text", ["auto:fp32", "auto:int8"])
def test_the_cli_and_the_api_say_auto_takes_no_precision(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, "--backend", text, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, SAID)
    code, err = run(cli.bench_main, "--backends", f"torch,{text}", "--steps", "1")
    one_line(code, err, 2, SAID)
    with pytest.raises(UsageError, match=SAID):
        DiPPipeline.load(backend=text, device="cpu")
    assert not (tmp_path / "o.npz").exists()
