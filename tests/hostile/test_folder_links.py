"""Files inside a folder are never symlinks: graphs, external data, manifests, shards and caches go through one check
(`untrusted.contained`), whatever the link leads to (a file inside, outside, nothing, or a linked subfolder)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.errors import DipError, ExportError
from dip_export.untrusted import UntrustedFileError, contained, read_json
from tests.test_hostile import one_line, sample

# where a link leads: a file inside the folder, a file outside it, nothing, a subfolder inside, a folder outside
TARGETS = ("inside", "outside", "dangling", "subfolder", "folder_outside")
CHECKS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _layout(root: Path, target: str, depth: int) -> tuple[Path, str]:
    """A folder holding `data.json` (and `sub/data.json`) and, `depth` folders down, a link to `target`: the
    folder and the relative name a reader would ask for through the link."""
    folder, elsewhere = root / "folder", root / "elsewhere"
    for where in (folder / "sub", elsewhere):
        where.mkdir(parents=True, exist_ok=True)
        (where / "data.json").write_text("{}")
    (folder / "data.json").write_text("{}")
    base = folder.joinpath(*[f"d{i}" for i in range(depth)])
    base.mkdir(parents=True, exist_ok=True)
    link = base / "link"
    if target in ("subfolder", "folder_outside"):
        link.symlink_to(folder / "sub" if target == "subfolder" else elsewhere, target_is_directory=True)
        return folder, str((link / "data.json").relative_to(folder))
    link.symlink_to({"inside": folder / "data.json", "outside": elsewhere / "data.json", "dangling": root / "none"}[target])
    return folder, str(link.relative_to(folder))


@CHECKS
@given(target=st.sampled_from(TARGETS), depth=st.integers(0, 2), absolute=st.booleans())
def test_no_link_on_the_way_is_followed(
    tmp_path_factory: pytest.TempPathFactory, target: str, depth: int, absolute: bool
) -> None:
    folder, rel = _layout(tmp_path_factory.mktemp("links"), target, depth)
    name = folder / rel if absolute else rel
    with pytest.raises(UntrustedFileError, match="symlink") as err:
        contained(folder, name, "graph")
    assert len(str(err.value).splitlines()) == 1 and str(folder) in str(err.value)
    with pytest.raises(UntrustedFileError, match="symlink"):
        read_json(folder / rel, folder=folder, what="cache")


@CHECKS
@given(depth=st.integers(0, 2), dotdot=st.booleans())
def test_plain_files_pass_and_dotdot_never_does(tmp_path_factory: pytest.TempPathFactory, depth: int, dotdot: bool) -> None:
    folder = tmp_path_factory.mktemp("plain")
    rel = Path(*[f"d{i}" for i in range(depth)], "x.json")
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_text("{}")
    if dotdot:
        with pytest.raises(UntrustedFileError, match="leads outside"):
            contained(folder / "d", Path("..") / rel, "file")
    else:
        assert contained(folder, rel) == folder / rel
        assert read_json(folder / rel, folder=folder) == {}


def _link_inside(export: Path, name: str) -> None:
    """`name` becomes a symlink to a copy of itself inside the same export folder."""
    real = export / f"real-{name}"
    (export / name).rename(real)
    (export / name).symlink_to(real)


def _external_export(export: Path) -> Path:
    """The export with the backbone's weights in external data (`backbone.onnx.data`)."""
    model = onnx.load(str(export / "backbone.onnx"))
    onnx.save_model(model, str(export / "backbone.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="backbone.onnx.data")  # fmt: skip
    manifest = json.loads((export / "manifest.json").read_text())  # the re-saved graph recorded as the export's
    for name in ("backbone.onnx", "backbone.onnx.data"):  # the graph and its weights, each listed as written
        data = (export / name).read_bytes()
        manifest["contents"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (export / "manifest.json").write_text(json.dumps(manifest))
    return export / "backbone.onnx.data"


@pytest.mark.parametrize("kind", ["graph", "external data", "subfolder"])
def test_links_inside_an_export_are_refused_by_the_cli_and_the_api(tmp_path: Path, export: Path, kind: str, no_sampling) -> None:
    if kind == "graph":
        _link_inside(export, "detailer.onnx")
    elif kind == "external data":
        _external_export(export)
        _link_inside(export, "backbone.onnx.data")
    else:  # the graphs in a subfolder reached through a link
        shutil.copytree(export, tmp_path / "real")
        (export / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
        import json

        manifest = json.loads((export / "manifest.json").read_text())
        manifest["files"] = {role: f"linked/{rel}" for role, rel in manifest["files"].items()}
        (export / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", out)
    one_line(code, err, 1, "symlink")
    assert not out.exists()
    with pytest.raises(ExportError, match="symlink") as raised:
        DiPPipeline.load(export, device="cpu")
    assert len(str(raised.value).splitlines()) == 1


def test_the_same_export_without_links_still_samples(tmp_path: Path, export: Path) -> None:
    _external_export(export)
    out = tmp_path / "o.npz"
    code, err = sample(export, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", out)
    assert code == 0, err
    assert out.is_file()


def test_a_linked_shard_or_cache_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    (tmp_path / "real.json").write_text("{}")
    os.symlink("../real.json", folder / "auto.json")
    with pytest.raises(DipError, match="symlink"):
        read_json(folder / "auto.json", folder=folder, what="auto-backend cache")
