"""Local versus Hub: the tool's own export-folder names and file names by their suffix never leave the machine.

The decision (`hub.is_local_name` / `looks_like_hub_name`) is property-tested; dip-sample, dip-bench and
`DiPPipeline.load` run against a local endpoint that records every request (`fake_hub`), and a proper
`org/name` still reaches it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import DipError
from dip_export.export.naming import VARIANTS, export_folder_name, is_export_folder_name
from dip_export.hub import is_local_name, looks_like_hub_name
from tests.test_hostile import one_line, run

# parts as the Hub takes them in a repo id: start and end with a letter or digit, no '--', no '.'
WORD = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,9}[A-Za-z0-9])?", fullmatch=True).filter(lambda w: "--" not in w)
FOLDERS = st.lists(WORD.map(lambda w: f"{w}-nonexistent"), min_size=1, max_size=3).map("/".join)
SIZE = st.tuples(st.integers(1, 4096), st.integers(1, 4096))
# a file suffix: a dot and a letter, then anything a file name may hold (`.gguf`, `.safetensors-00001-of-00002`)
SUFFIX = st.from_regex(r"\.[A-Za-z][A-Za-z0-9_.-]{0,12}", fullmatch=True).filter(lambda s: ".." not in s and s[-1] != ".")
VERSION = st.lists(st.integers(0, 99).map(str), max_size=2).map(lambda parts: "".join(f".{p}" for p in parts))


@given(FOLDERS, WORD, SIZE, st.sampled_from(VARIANTS))
def test_an_export_folder_name_under_any_folder_is_local(folders, model, size, variant):
    name = export_folder_name(model, size, variant)
    assert is_export_folder_name(name)
    assert is_local_name(f"{folders}/{name}") and not looks_like_hub_name(f"{folders}/{name}")


@given(FOLDERS.map(lambda f: f.split("/")[0]), WORD, SUFFIX)
def test_a_two_part_name_with_a_file_suffix_is_local(folder, stem, suffix):
    assert is_local_name(f"{folder}/{stem}{suffix}") and not looks_like_hub_name(f"{folder}/{stem}{suffix}")


@given(WORD, WORD, VERSION, SUFFIX)
def test_repo_names_and_files_in_repos_stay_hub_names(org, name, version, suffix):
    """A version (`v0.2`: a dot and a digit) is part of a repo's name; three parts name a file in a repo."""
    repo = f"{org}-nonexistent/{name}{version}"
    assert looks_like_hub_name(repo), repo
    assert looks_like_hub_name(f"{repo}/{name}{suffix}")


@given(WORD, st.integers(1, 4096), st.integers(1, 4096), st.text(alphabet="abcfinpt0123456789-x", max_size=8))
def test_only_the_tools_variants_make_an_export_name(model, h, w, variant):
    name = f"{model}-{h}x{w}-{variant}"
    assert is_export_folder_name(name) == (variant in VARIANTS)


def test_the_exporters_name_folders_by_the_one_rule():
    from dip_export.export.onnx_export import default_export_dir
    from dip_export.export.quantize import int8_dir

    loaded = SimpleNamespace(name="dip-digits")
    for folder in (default_export_dir("dip-digits", "fp16", (32, 64)), int8_dir(loaded, (32, 32), "trt", fp8=True),
                   int8_dir(loaded, (32, 32), "onnx")):  # fmt: skip
        assert is_export_folder_name(folder.name) and is_local_name(f"elsewhere-nonexistent/{folder.name}")


NAMES = [
    "myexports/dip-digits-32x32-fp32", "myexports/dip-digits-32x32-int8-trt", "ckpts/model.safetensor", "ckpts/dip.gguf",
    "ckpts/model.pb", "ckpts/model.msgpack", "runs/model.tflite", "ckpts/model.nemo", "ckpts/model.ckpt_backup",
    "ckpts/model.safetensors-00001-of-00002",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_load_makes_no_request(fake_hub, name):
    from dip_export import DiPPipeline

    with pytest.raises(DipError, match="no such"):
        DiPPipeline.load(name)
    assert fake_hub == []


@pytest.mark.parametrize("name", NAMES[::3])
def test_dip_sample_makes_no_request(fake_hub, tmp_path, name):
    code, err = run(cli.sample_main, name, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "h.npz")
    one_line(code, err, 1, name, "no such")
    assert fake_hub == []


@pytest.mark.parametrize("name", NAMES[1::3])
def test_dip_bench_makes_no_request(fake_hub, name):
    code, err = run(cli.bench_main, name, "--backends", "onnx", "--steps", "2", "--warmup", "0", "--repeats", "1",
                    "--max-repeats", "1")  # fmt: skip
    one_line(code, err, 1, name, "no such")
    assert fake_hub == []


@pytest.mark.parametrize("name", ["someorg-nonexistent/Model-v0.2", "someorg-nonexistent/model-32x32"])
def test_a_proper_repo_name_is_still_requested(fake_hub, tmp_path, name):
    """The control: a repo name (with a version, or a size but no variant) reaches the endpoint, from both surfaces."""
    from dip_export import DiPPipeline

    with pytest.raises(DipError, match="HTTP 404"):
        DiPPipeline.load(name)
    assert any(path.startswith(f"/api/models/{name}/") for _, path, _ in fake_hub)
    fake_hub.clear()
    code, err = run(cli.sample_main, name, "--classes", "1", "--seeds", "0", "--steps", "2", "--out", tmp_path / "h.npz")
    one_line(code, err, 1, "HTTP 404")
    assert any(path.startswith(f"/api/models/{name}/") for _, path, _ in fake_hub)
