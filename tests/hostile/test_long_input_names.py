"""An input whose name is as long as the file system takes is read (or refused for what it is), never refused for
a name the tool derives beside it: a killed swap's journal (`.NAME.swap.json`) and temporaries that cannot exist
beside such a name are none."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import DEMO_CHECKPOINT, resolve_model
from dip_export.errors import CheckpointError
from dip_export.export.onnx_export import export_onnx
from tests.test_hostile import one_line, run

FEW = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(resolve_model(None), image_size=(32, 32), output_dir=tmp_path_factory.mktemp("e") / "demo")


@FEW
@given(length=st.integers(200, 255))
def test_an_export_folder_of_a_long_name_is_read(tmp_path_factory, demo_export: Path, length: int) -> None:
    folder = Path(shutil.copytree(demo_export, tmp_path_factory.mktemp("long") / ("E" * length)))
    images = DiPPipeline.load(folder, device="cpu")(classes=[1], seeds=[0], steps=2)
    assert images.shape == (1, 32, 32, 3)
    out = folder.parent / "o.npz"
    code, err = run(cli.sample_main, folder, "--steps", "2", "--num-samples", "1", "--out", out)
    assert code == 0, err


@FEW
@given(length=st.integers(201, 243))
def test_a_checkpoint_of_a_long_name_is_refused_for_its_name(tmp_path_factory, length: int) -> None:
    path = tmp_path_factory.mktemp("long") / ("L" * length + ".safetensors")
    shutil.copy(DEMO_CHECKPOINT, path)
    words = f"the model is named after its file, and that name must be at most 200 characters, got {length}"
    with pytest.raises(CheckpointError, match=words):
        DiPPipeline.load(path, device="cpu")
    code, err = run(cli.sample_main, path, "--steps", "2", "--num-samples", "1", "--out", path.parent / "o.npz")
    one_line(code, err, 1, words)
