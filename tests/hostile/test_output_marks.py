"""Single-file outputs: an existing file is replaced only if it carries this tool's mark for its kind; symlinked
outputs are refused, never followed; every refusal comes before any work, in one line."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.io import atomic_path, save_json, save_npz, save_png
from dip_export.ownership import NPZ_COMMENT, OUTPUT_KINDS, check_replaceable_output, is_ours, mark, png_text
from tests.test_hostile import one_line, run

KINDS = sorted(OUTPUT_KINDS)
SUFFIX = {"npz": "npz", "samples-grid": "png", "sample-image": "png", "bench-plot": "png", "bench-report": "json",
          "auto-backend-cache": "json", "checkpoint": "safetensors"}  # fmt: skip


def _write_each_kind(tmp_path: Path, stem: str) -> None:
    """One file of each kind, as the tool writes it: `STEM-KIND.SUFFIX`."""
    for kind in KINDS:
        path = tmp_path / f"{stem}-{kind}.{SUFFIX[kind]}"
        if kind == "npz":
            save_npz(path, np.zeros((1, 2, 2, 3), np.uint8))
        elif kind == "bench-plot":
            path.write_bytes(_png([IHDR, (b"tEXt", png_text(kind)), IDAT, IEND]))  # as matplotlib writes it
        elif SUFFIX[kind] == "png":
            save_png(path, np.zeros((2, 2, 3), np.uint8), kind)
        elif SUFFIX[kind] == "json":
            save_json(path, {"old": 1}, kind)
        else:
            save_file({"w": torch.zeros(1)}, str(path), metadata={"written_by": mark(kind)})


TMP = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
SMALL = ["--num-samples", "2", "--steps", "2"]


def _refused_untouched(path: Path, kind: str) -> None:
    before = path.read_bytes()
    with pytest.raises(UsageError, match="refusing to replace"):
        check_replaceable_output(path, kind)
    assert not is_ours(path, kind)
    assert path.read_bytes() == before


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + b"".join(chunk(tag, data) for tag, data in chunks)


IHDR = (b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
IDAT = (b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
IEND = (b"IEND", b"")


# ---------------------------------------------------------------- the marks, as properties


@TMP
@given(data=st.binary(max_size=512), kind=st.sampled_from(KINDS))
def test_random_bytes_are_never_replaced(tmp_path: Path, data: bytes, kind: str) -> None:
    path = tmp_path / f"out.{kind}"
    path.write_bytes(data)
    _refused_untouched(path, kind)


arrays = st.dictionaries(st.sampled_from(["arr_0", "arr_1", "indices", "x"]), st.integers(0, 3), min_size=1)


@TMP
@given(members=arrays, comment=st.binary(max_size=40))
def test_an_npz_without_exactly_the_mark_and_members_is_never_replaced(tmp_path: Path, members, comment: bytes) -> None:
    path = tmp_path / "out.npz"
    np.savez(path, **{name: np.zeros((n, 2, 2, 3), np.uint8) for name, n in members.items()})
    if comment:
        with zipfile.ZipFile(path, "a") as archive:
            archive.comment = comment
    if comment == NPZ_COMMENT and list(members) == ["arr_0"]:
        check_replaceable_output(path, "npz")  # exactly what the tool writes: replaceable
    else:
        _refused_untouched(path, "npz")


@TMP
@given(key=st.binary(min_size=1, max_size=20), value=st.binary(max_size=20), after_image=st.booleans())
def test_a_png_without_the_mark_before_its_image_is_never_replaced(tmp_path: Path, key: bytes, value: bytes,
                                                                    after_image: bool) -> None:  # fmt: skip
    text = (b"tEXt", key + b"\x00" + value)
    chunks = [IHDR, IDAT, text, IEND] if after_image else [IHDR, text, IDAT, IEND]
    path = tmp_path / "out.png"
    path.write_bytes(_png(chunks))
    if key == b"Software" and value == mark("samples-grid").encode() and not after_image:
        check_replaceable_output(path, "samples-grid")
    else:
        _refused_untouched(path, "samples-grid")


def test_a_picture_from_another_program_is_never_replaced(tmp_path: Path) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", "GIMP")
    path = tmp_path / "out.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    _refused_untouched(path, "samples-grid")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=10,
)


@TMP
@given(data=json_values)
def test_json_without_the_mark_field_is_never_replaced(tmp_path: Path, data) -> None:
    path = tmp_path / "out.json"
    path.write_text(json.dumps(data))
    if isinstance(data, dict) and data.get("written_by") == mark("bench-report"):
        check_replaceable_output(path, "bench-report")
    else:
        _refused_untouched(path, "bench-report")
    if isinstance(data, dict):
        path.write_text(json.dumps({"rows": [], **data, "written_by": "someone else"}))
        _refused_untouched(path, "bench-report")


@TMP
@given(meta=st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=12), max_size=4))
def test_safetensors_without_the_mark_key_is_never_replaced(tmp_path: Path, meta: dict[str, str]) -> None:
    path = tmp_path / "out.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata=meta)
    if meta.get("written_by") == mark("checkpoint"):
        check_replaceable_output(path, "checkpoint")
    else:
        _refused_untouched(path, "checkpoint")


@TMP
@given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), seed=st.integers(0, 99),
       report=st.dictionaries(st.text(max_size=8), json_values, max_size=4))  # fmt: skip
def test_the_tools_own_outputs_are_marked_and_replaced(tmp_path: Path, n: int, h: int, w: int, seed: int, report) -> None:
    images = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    for _ in range(2):  # the second write replaces the first
        save_npz(tmp_path / "s.npz", images)
        save_png(tmp_path / "s.png", images[0], "sample-image")
        save_json(tmp_path / "r.json", report, "bench-report")
    for name, kind in (("s.npz", "npz"), ("s.png", "sample-image"), ("r.json", "bench-report")):
        assert is_ours(tmp_path / name, kind)
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], images)
    assert {k: v for k, v in json.loads((tmp_path / "r.json").read_text()).items() if k != "written_by"} == {
        k: v for k, v in report.items() if k != "written_by"
    }


def test_a_saved_checkpoint_and_a_plot_are_marked_and_replaced(tmp_path: Path, golden_model) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dip_export.checkpoint import load_checkpoint, save_checkpoint
    from dip_export.measure.plotting import save

    for _ in range(2):
        save_checkpoint(tmp_path / "m.safetensors", golden_model, {"steps": 7})
        save(plt.figure(), tmp_path / "p.png")
    assert is_ours(tmp_path / "m.safetensors", "checkpoint") and is_ours(tmp_path / "p.png", "bench-plot")
    assert load_checkpoint(tmp_path / "m.safetensors").sampling["steps"] == 7


def test_a_writer_that_leaves_out_the_mark_writes_nothing(tmp_path: Path) -> None:
    from dip_export.errors import DipError

    with pytest.raises(DipError, match="mark"), atomic_path(tmp_path / "x.json", "bench-report") as tmp:
        tmp.write_text("{}")
    assert list(tmp_path.iterdir()) == []


def test_a_user_file_appearing_during_the_work_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    with pytest.raises(UsageError, match="refusing"), atomic_path(target, "bench-report") as tmp:
        target.write_text("{}")  # the user's file arrives while the report is being made
        tmp.write_text(json.dumps({"written_by": mark("bench-report")}))
    assert target.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupted_marked_write_leaves_the_earlier_output(tmp_path: Path, kind: str) -> None:
    target = tmp_path / f"o-{kind}.{SUFFIX[kind]}"
    _write_each_kind(tmp_path, "o")
    names = sorted(p.name for p in tmp_path.iterdir())
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt), atomic_path(target, kind) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == names


# ---------------------------------------------------------------- symlinks


@pytest.mark.parametrize("kind", KINDS)
def test_a_symlinked_output_is_refused_even_to_the_tools_own_file(tmp_path: Path, kind: str) -> None:
    real = tmp_path / f"real-{kind}.{SUFFIX[kind]}"
    _write_each_kind(tmp_path, "real")
    link = tmp_path / f"link.{SUFFIX[kind]}"
    link.symlink_to(real)
    before = real.read_bytes()
    with pytest.raises(UsageError, match="symlink"):
        check_replaceable_output(link, kind)
    with pytest.raises(UsageError, match="symlink"), atomic_path(link, kind) as tmp:
        tmp.write_bytes(b"")
    (tmp_path / "dangling.npz").symlink_to(tmp_path / "nowhere.npz")
    with pytest.raises(UsageError, match="symlink"), atomic_path(tmp_path / "dangling.npz") as tmp:
        tmp.write_bytes(b"")
    assert real.read_bytes() == before and link.is_symlink() and not (tmp_path / "nowhere.npz").exists()


# ---------------------------------------------------------------- the commands: refused in one line, before any work


def _user_samples(path: Path) -> bytes:
    np.savez(path, arr_0=np.full((2, 8, 8, 3), 7, np.uint8))  # the user's own samples, ADM layout but not the tool's
    return path.read_bytes()


def test_dip_sample_keeps_a_users_npz_and_grid_and_samples_nothing(tmp_path: Path, no_sampling) -> None:
    mine = _user_samples(tmp_path / "s.npz")
    code, err = run(cli.sample_main, "--out", tmp_path / "s.npz", *SMALL)
    one_line(code, err, 2, "s.npz", "refusing to replace")
    assert (tmp_path / "s.npz").read_bytes() == mine

    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "t.png")
    picture = (tmp_path / "t.png").read_bytes()
    code, err = run(cli.sample_main, "--out", tmp_path / "t.npz", *SMALL)
    one_line(code, err, 2, "t.png", "refusing to replace")
    assert (tmp_path / "t.png").read_bytes() == picture and not (tmp_path / "t.npz").exists()


def test_dip_sample_refuses_symlinked_outputs(tmp_path: Path, no_sampling) -> None:
    mine = _user_samples(tmp_path / "mine.npz")
    (tmp_path / "s.npz").symlink_to(tmp_path / "mine.npz")
    code, err = run(cli.sample_main, "--out", tmp_path / "s.npz", *SMALL)
    one_line(code, err, 2, "symlink")
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics-link").symlink_to(tmp_path / "pics")
    code, err = run(cli.sample_main, "--out", tmp_path / "a.npz", "--png-dir", tmp_path / "pics-link", *SMALL)
    one_line(code, err, 2, "symlink")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "b.npz.parts").symlink_to(tmp_path / "elsewhere")
    code, err = run(cli.sample_main, "--out", tmp_path / "b.npz", "--resume", *SMALL)
    one_line(code, err, 2, "symlink", "b.npz.parts")
    (tmp_path / "c.npz.parts").mkdir()
    (tmp_path / "c.npz.parts" / "shard-000000.npz").symlink_to(tmp_path / "mine.npz")
    code, err = run(cli.sample_main, "--out", tmp_path / "c.npz", "--resume", *SMALL)
    one_line(code, err, 2, "symlink", "shard-000000.npz")
    assert (tmp_path / "mine.npz").read_bytes() == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "b.npz.parts", "c.npz.parts", "elsewhere", "mine.npz", "pics", "pics-link", "s.npz"
    ]  # fmt: skip
    assert list((tmp_path / "elsewhere").iterdir()) == [] and list((tmp_path / "pics").iterdir()) == []


def test_the_python_api_keeps_a_users_npz(tmp_path: Path, no_sampling) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from dip_export.app import ModelRequest, SampleRequest, run_sample

    mine = _user_samples(tmp_path / "s.npz")
    request = SampleRequest(ModelRequest(), tmp_path / "s.npz", sampling={"steps": 2}, num_samples=2)
    with pytest.raises(UsageError, match="refusing to replace"):
        run_sample(request, Console(file=io.StringIO()), Progress(disable=True))
    assert (tmp_path / "s.npz").read_bytes() == mine


def test_dip_sample_replaces_its_own_outputs(tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    for _ in range(2):
        code, err = run(cli.sample_main, "--out", out, "--png-dir", tmp_path / "pics", *SMALL)
        assert code == 0, err
    assert is_ours(out, "npz") and is_ours(out.with_suffix(".png"), "samples-grid")
    assert all(is_ours(p, "sample-image") for p in (tmp_path / "pics").iterdir())
    assert np.load(out)["arr_0"].shape[0] == 2


@pytest.fixture
def no_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    import dip_export.measure.bench
    import dip_export.measure.yardstick

    def refuse(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(dip_export.measure.bench, "run_bench", refuse)
    monkeypatch.setattr(dip_export.measure.yardstick, "fit_schedule", refuse)
    monkeypatch.setattr(dip_export.measure.yardstick, "measure", refuse)


BENCH = ["--steps", "1", "--backends", "torch", "--repeats", "1", "--warmup", "0"]


def test_dip_bench_keeps_a_users_json_report(tmp_path: Path, no_timing) -> None:
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"rows": [], "settings": {}}))  # looks like a report; the tool did not write it
    before = report.read_bytes()
    code, err = run(cli.bench_main, *BENCH, "--json", report)
    one_line(code, err, 2, "bench.json", "refusing to replace")
    (tmp_path / "link.json").symlink_to(report)
    code, err = run(cli.bench_main, *BENCH, "--json", tmp_path / "link.json")
    one_line(code, err, 2, "symlink")
    assert report.read_bytes() == before


def test_dip_bench_replaces_its_own_json_report(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    for _ in range(2):
        code, err = run(cli.bench_main, *BENCH, "--batch-size", "1", "--json", report)
        assert code == 0, err
    data = json.loads(report.read_text())
    assert data["written_by"] == mark("bench-report") and data["results"]


def test_dip_export_schedule_keeps_a_users_checkpoint(tmp_path: Path, golden, no_timing) -> None:
    out = tmp_path / "mine.safetensors"
    save_file(dict(golden.state), str(out), metadata={"dip_config": "{}"})
    before = out.read_bytes()
    code, err = run(cli.export_main, "schedule", "--output", out, "--nfe", "6")
    one_line(code, err, 2, "mine.safetensors", "refusing to replace")
    assert out.read_bytes() == before
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert os.listdir(tmp_path) == ["mine.safetensors"]
