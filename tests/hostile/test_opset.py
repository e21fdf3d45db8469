"""The opset of an export is the one asked for, read off its graphs; the exporter's libraries stay quiet.

`--opset` takes 18..20 (the exporter writes 18 and cannot convert the backbone down to 17). Whatever range is
accepted, every graph of an export is checked to import exactly the opset asked for (`check_opset`): a
conversion the exporter could not do, which its libraries only log, is refused in one line and nothing is
written; the manifest records what the graphs hold (test_export_identity checks it on an on-the-fly export).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import ExportError, UsageError
from dip_export.export import onnx_export
from dip_export.export.onnx_export import export_onnx
from dip_export.settings import BuildSettings
from tests.test_hostile import SIZE, one_line, run

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(opset=st.integers(-5, 40))
def test_build_settings_take_exactly_the_reachable_opsets(opset: int) -> None:
    if 18 <= opset <= 20:
        assert BuildSettings(opset=opset).opset == opset
    else:
        with pytest.raises(UsageError, match=r"--opset must be in 18\.\.20"):
            BuildSettings(opset=opset)


@FAST
@given(opset=st.one_of(st.integers(-5, 17), st.integers(21, 40), st.just(True), st.just(18.0)))
def test_the_python_api_refuses_an_opset_out_of_range_before_tracing(monkeypatch, tmp_path: Path, loaded, opset) -> None:
    monkeypatch.setattr(onnx_export, "export_submodel", lambda *a, **k: pytest.fail("an export started"))
    with pytest.raises(UsageError, match=r"--opset must be (in 18\.\.20|an integer)"):
        export_onnx(loaded, precision="fp32", image_size=SIZE, opset=opset, output_dir=tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_dip_export_onnx_opset_17_is_refused_before_any_work(tmp_path: Path) -> None:
    code, err = run(cli.export_main, "onnx", "--opset", "17", "--output-dir", tmp_path / "e")
    one_line(code, err, 2, "--opset", "18..20")
    assert not (tmp_path / "e").exists()


def test_an_opset_the_graphs_do_not_hold_is_refused_quietly(tmp_path: Path, monkeypatch, loaded, capfd) -> None:
    """With 17 let through, the exporter leaves the backbone at 18 and logs a traceback: the run says one line."""
    monkeypatch.setattr(onnx_export, "OPSETS", range(17, 21))
    with pytest.raises(ExportError) as caught:
        export_onnx(loaded, precision="fp32", image_size=SIZE, opset=17, output_dir=tmp_path / "e")
    text = str(caught.value)
    assert "\n" not in text and text.startswith("--opset 17 is not reachable for this model") and "17..20" in text
    assert not (tmp_path / "e").exists()
    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out and "Failed to convert" not in printed.err + printed.out
