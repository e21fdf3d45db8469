"""dip-export schedule names its own option when --nfe is out of range (the solver's settings call it steps)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dip_export import cli
from tests.test_hostile import RUN_SETTINGS, one_line, run


@RUN_SETTINGS
@given(nfe=st.one_of(st.integers(-(10**6), 0), st.integers(10_001, 10**9)))
def test_an_nfe_out_of_range_is_refused_naming_it(tmp_path_factory, nfe: int) -> None:
    out = tmp_path_factory.mktemp("s") / "s.safetensors"
    code, err = run(cli.export_main, "schedule", "--sampler", "ab2", "--nfe", str(nfe), "--cfg", "1.5", "--output", out)
    one_line(code, err, 2, f"--nfe must be in 1..10000, got {nfe}")
    assert not out.exists()
