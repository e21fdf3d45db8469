"""`--weights` given is a request that must apply: with a preset (random weights) or an export folder (weights
already chosen) it is refused, `ema` as well as `raw`; left out, nothing is asked and the run goes ahead.

`open_source`/`resolve_model` tell a given choice (a string) from none (None); run through dip-sample, dip-export
onnx, dip-bench and DiPPipeline.load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import resolve_model
from dip_export.config import PRESETS
from dip_export.errors import UsageError
from tests.test_hostile import one_line, run

SAID = "--weights and --trust-checkpoint go with a checkpoint file"


@settings(max_examples=20, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.sampled_from(["ema", "raw"]))
def test_a_given_choice_of_weights_is_refused_with_a_preset(preset, weights):
    with pytest.raises(UsageError, match=SAID):
        resolve_model(preset=preset, weights=weights)


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_every_surface_refuses_given_weights_with_a_preset(tmp_path, monkeypatch, weights):
    monkeypatch.chdir(tmp_path)
    preset = ["--preset", "dip-s-16", "--weights", weights, "--image-size", "32"]
    code, err = run(cli.sample_main, *preset, "--num-samples", "1", "--steps", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, SAID)
    code, err = run(cli.export_main, "onnx", *preset, "--output-dir", tmp_path / "e")
    one_line(code, err, 2, SAID)
    code, err = run(cli.bench_main, *preset, "--steps", "1")
    one_line(code, err, 2, SAID)
    with pytest.raises(UsageError, match=SAID):
        DiPPipeline.load(preset="dip-s-16", weights=weights, image_size=32, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_left_out_a_preset_loads(tmp_path):
    assert DiPPipeline.load(preset="dip-s-16", image_size=32, device="cpu").source.name == "dip-s-16"


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_given_weights_with_an_export_folder_are_refused(pristine: Path, tmp_path: Path, weights: str) -> None:
    with pytest.raises(UsageError, match="is an export folder: --weights and --trust-checkpoint go with"):
        DiPPipeline.load(pristine, weights=weights)
    code, err = run(cli.sample_main, pristine, "--weights", weights, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "is an export folder: --weights")
    assert DiPPipeline.load(pristine).source.export_dir is not None  # left out: the export is read
