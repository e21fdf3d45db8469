"""A config's image_size is whole patches: a file that records another is refused in one line naming the file.

The rule lives in `DiPConfig` (every stored or given config is built through it); it is property-tested there and run
through two surfaces (dip-sample, DiPPipeline.load) and the export command with a safetensors file that records 36 px
for patch 8.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from dip_export import DiPPipeline
from dip_export.cli import export_app, sample_app
from dip_export.config import DiPConfig
from dip_export.errors import CheckpointError, UsageError

DEMO = Path(__file__).resolve().parents[2] / "dip_export" / "demo" / "dip-digits.safetensors"


@given(st.sampled_from([2, 4, 8, 16, 32]), st.integers(1, 4096))
def test_image_size_is_taken_exactly_when_it_is_whole_patches(patch, side):
    config = dict(hidden_size=64, num_heads=4, depth=1, patch_size=patch, image_size=side)
    if side % patch == 0:
        assert DiPConfig(**config).image_size == side
    else:
        with pytest.raises(UsageError, match=f"image_size {side} is not a multiple of the patch size {patch}"):
            DiPConfig(**config)


def _recording(tmp_path: Path, side: int) -> Path:
    with safe_open(str(DEMO), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        meta = dict(f.metadata())
    meta["dip_config"] = json.dumps({**json.loads(meta["dip_config"]), "image_size": side})
    path = tmp_path / f"m{side}.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("side", [36, 4])
def test_a_file_recording_part_patches_is_refused_naming_it(tmp_path, monkeypatch, side):
    monkeypatch.chdir(tmp_path)
    path = _recording(tmp_path, side)
    line = f"error: {path}: bad stored config dip_config (image_size {side} is not a multiple of the patch size 8)"
    result = CliRunner().invoke(sample_app, [str(path), "--num-samples", "1", "--steps", "2", "--out", "x.npz"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == line
    result = CliRunner().invoke(export_app, ["onnx", str(path), "--output-dir", "e"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == line
    with pytest.raises(CheckpointError, match="bad stored config dip_config"):
        DiPPipeline.load(str(path))
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "e").exists()


def test_a_file_recording_whole_patches_still_loads(tmp_path):
    assert DiPPipeline.load(str(_recording(tmp_path, 48))).source.config.image_size == 48


def test_an_export_whose_manifest_records_part_patches_is_refused_naming_it(pristine: Path, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    manifest = folder / "manifest.json"
    data = json.loads(manifest.read_text())
    data["config"]["image_size"] = data["config"]["patch_size"] * 2 + 4
    manifest.write_text(json.dumps(data))
    with pytest.raises(Exception, match=r"manifest\.json: invalid manifest \(image_size \d+ is not a multiple of the patch"):
        DiPPipeline.load(folder)
    result = CliRunner().invoke(sample_app, [str(folder), "--num-samples", "1", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 1 and "invalid manifest (image_size" in result.output.strip().splitlines()[-1]
