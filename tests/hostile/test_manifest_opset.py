"""An export's graphs import the default ONNX domain at exactly the opset its manifest records.

The manifest's `opset` is range-checked when it is read (test_json_keys); here it is compared with what each graph
imports. Copies of one export are edited two ways: the manifest's opset alone (within 18..20, the graphs untouched,
so every recorded sha256 still holds), or a graph's `opset_import` rewritten together with its size and sha256 in the
manifest's contents (as a hand-edited export would be), so only the opset check can tell. Both surfaces that read an
export are asked: DiPPipeline.load and dip-sample.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from onnx import helper

from dip_export import DiPPipeline
from dip_export.errors import ExportError
from dip_export.export.manifest import read_manifest
from dip_export.settings import OPSETS
from tests.test_hostile import one_line, sample

FAST = settings(max_examples=10, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
ROLES = ("backbone", "detailer")
# what a graph may import in the default domain: its opset under "" and maybe again under "ai.onnx", or none at all
IMPORTS = st.one_of(
    st.lists(st.tuples(st.sampled_from(["", "ai.onnx"]), st.integers(1, 40)), min_size=1, max_size=2,
             unique_by=lambda entry: entry[0]),
    st.just([]),
)  # fmt: skip


def _copy(pristine: Path, factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(pristine, factory.mktemp("opset") / "exp"))


def _set_manifest(folder: Path, **changes: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _set_graph_imports(folder: Path, role: str, imports: list[tuple[str, int]]) -> None:
    """The graph's default-domain imports become `imports` (other domains kept); its size and sha256 recorded anew."""
    path = folder / f"{role}.onnx"
    model = onnx.load(str(path), load_external_data=False)
    others = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend([*others, *(helper.make_opsetid(domain, version) for domain, version in imports)])
    onnx.save_model(model, str(path))
    data = path.read_bytes()
    contents = json.loads((folder / "manifest.json").read_text())["contents"]
    assert path.name in contents  # the export records it: the sha256 check runs too
    contents[path.name] = {**contents[path.name], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    _set_manifest(folder, contents=contents)


def _refused_on_both_surfaces(folder: Path, role: str, words: str) -> None:
    with pytest.raises(ExportError) as caught:
        DiPPipeline.load(str(folder), backend="onnx")
    message = str(caught.value)
    assert "\n" not in message and message == f"{folder / f'{role}.onnx'}: {words}", message
    out = folder.parent / "o.npz"
    code, err = sample(folder, "--steps", "2", "--num-samples", "1", "--out", out)
    one_line(code, err, 1, f"{role}.onnx: {words}")
    assert not out.exists()


@FAST
@given(manifest_opset=st.sampled_from(list(OPSETS)), role=st.sampled_from(ROLES), imports=IMPORTS)
@example(manifest_opset=19, role="backbone", imports=[("", 19)])  # the graphs and the manifest agree
@example(manifest_opset=20, role="detailer", imports=[("ai.onnx", 20), ("", 20)])
@example(manifest_opset=18, role="detailer", imports=[("", 18), ("ai.onnx", 19)])  # one of two imports differs
def test_a_graph_importing_another_opset_is_refused(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, manifest_opset: int, role: str, imports
) -> None:
    folder = _copy(pristine, tmp_path_factory)
    _set_manifest(folder, opset=manifest_opset)
    for other in ROLES:  # the other graph agrees with the manifest: the one edited is the one named
        _set_graph_imports(folder, other, imports if other == role else [("", manifest_opset)])
    held = {version for _, version in imports}
    if held == {manifest_opset}:
        assert read_manifest(folder).opset == manifest_opset
        return
    shown = f"opset {', '.join(map(str, sorted(held)))}" if held else "no ONNX opset"
    _refused_on_both_surfaces(folder, role, f"the graph imports {shown} where the manifest's opset is "
                                            f"{manifest_opset}; refusing to run it")  # fmt: skip


@FAST
@given(manifest_opset=st.sampled_from([v for v in OPSETS if v != 18]))
def test_a_manifest_opset_its_graphs_do_not_import_is_refused(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, manifest_opset: int
) -> None:
    """Only the manifest's opset changed (the graphs, opset 18, and their recorded sha256 untouched): the first graph
    read, the backbone, is named."""
    assert read_manifest(pristine).opset == 18
    folder = _copy(pristine, tmp_path_factory)
    _set_manifest(folder, opset=manifest_opset)
    _refused_on_both_surfaces(folder, "backbone", f"the graph imports opset 18 where the manifest's opset is "
                                                  f"{manifest_opset}; refusing to run it")  # fmt: skip


def test_the_exporters_own_export_loads_and_samples(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The control: an untouched copy, and one whose graphs were rewritten at the opset they had, are taken."""
    for rewrite in (False, True):
        folder = _copy(pristine, tmp_path_factory)
        if rewrite:
            for role in ROLES:
                _set_graph_imports(folder, role, [("", 18)])
        assert DiPPipeline.load(str(folder), backend="onnx").name
        code, err = sample(folder, "--steps", "2", "--num-samples", "1", "--out", folder.parent / "o.npz")
        assert code == 0, err
        assert (folder.parent / "o.npz").exists()
