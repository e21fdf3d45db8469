"""An export source is known by what was read and checked when it was loaded (`Manifest.identity`: every field, the
sha256 of every file among them): the identity a resume or cache keys on is that one, and an engine made later is
made of those same files or refused, never run under the identity of the files read before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dip_export import DiPPipeline
from dip_export.errors import ExportError
from dip_export.export.manifest import read_manifest
from dip_export.pipeline import ModelSource


def _replace_with_another_export(folder: Path) -> None:
    """Another valid export at the same place: here the same graphs under a manifest that differs in one field."""
    data = json.loads((folder / "manifest.json").read_text())
    data["versions"] = {**data["versions"], "torch": "another"}
    (folder / "manifest.json").write_text(json.dumps(data))


def test_the_identity_is_the_export_as_loaded_and_a_later_engine_must_match(export: Path) -> None:
    pipe = DiPPipeline.load(export, device="cpu", backend="onnx")
    first = pipe.source.identity
    assert first == "export:" + read_manifest(export).identity
    _replace_with_another_export(export)
    assert read_manifest(export).identity != first.removeprefix("export:")  # a different export, valid on its own
    assert pipe.source.identity == first  # what was read at load, not what is there now
    with pytest.raises(ExportError, match="changed since it was loaded"):
        pipe(classes=[1], seeds=[0], steps=1, sampler="euler")
    assert DiPPipeline.load(export, device="cpu", backend="onnx").source.identity != first  # loaded again: taken


def test_the_identity_changes_with_any_listed_file(export: Path, tmp_path: Path) -> None:
    before = read_manifest(export).identity
    copy = Path(shutil.copytree(export, tmp_path / "copy"))
    assert read_manifest(copy).identity == before  # the same content in another place: the same export
    data = json.loads((copy / "manifest.json").read_text())
    rel = next(iter(data["contents"]))
    data["contents"][rel]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="changed since export"):
        read_manifest(copy)  # a list naming other bytes than the folder holds is never an identity


def test_a_source_made_by_hand_is_known_by_the_export_as_first_read(export: Path) -> None:
    from dip_export.pipeline import DiPPipeline
    from dip_export.runtime.backends import BackendSpec

    manifest = read_manifest(export)
    source = ModelSource(name=manifest.name, config=manifest.config, sampling={}, export_dir=export,
                         export_size=manifest.image_size, export_precision=manifest.precision)  # fmt: skip
    assert source.identity == "export:" + manifest.identity
    _replace_with_another_export(export)
    assert source.identity == "export:" + manifest.identity
    with pytest.raises(ExportError, match="changed since it was loaded"):
        DiPPipeline(source, BackendSpec("onnx", "fp32"), torch.device("cpu")).engine()
