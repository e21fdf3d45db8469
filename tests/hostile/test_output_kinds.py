"""Ownership of single files: an output replaces only what this tool writes there, and never lies in an input."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from dip_export.errors import UsageError
from dip_export.ownership import check_not_input, check_replaceable_output

USER = b"my notes, not a result"


@pytest.mark.parametrize(
    "kind", ["npz", "samples-grid", "sample-image", "bench-plot", "bench-report", "auto-backend-cache", "checkpoint"]
)
def test_user_file_is_not_replaceable(tmp_path, kind):
    path = tmp_path / f"out-{kind}"
    path.write_bytes(USER)
    with pytest.raises(UsageError, match="not a"):
        check_replaceable_output(path, kind)
    assert path.read_bytes() == USER


def test_earlier_results_are_replaceable(tmp_path):
    from dip_export.io import save_json, save_npz, save_png

    save_npz(tmp_path / "a.npz", np.zeros((1, 2, 2, 3), np.uint8))
    save_png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8), "samples-grid")
    save_json(tmp_path / "a.json", {"rows": []}, "bench-report")
    for name, kind in (("a.npz", "npz"), ("a.png", "samples-grid"), ("a.json", "bench-report")):
        check_replaceable_output(tmp_path / name, kind)
    check_replaceable_output(tmp_path / "new.npz", "npz")  # nothing there yet


def test_results_of_another_program_are_not_replaceable(tmp_path):
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    (tmp_path / "a.json").write_text(json.dumps({"rows": []}))
    for name, kind in (("a.npz", "npz"), ("a.json", "bench-report")):
        with pytest.raises(UsageError, match="not a"):
            check_replaceable_output(tmp_path / name, kind)


def test_a_symlinked_output_is_refused(tmp_path):
    from dip_export.io import save_npz

    save_npz(tmp_path / "a.npz", np.zeros((1, 2, 2, 3), np.uint8))
    (tmp_path / "b.npz").symlink_to(tmp_path / "a.npz")
    with pytest.raises(UsageError):
        check_replaceable_output(tmp_path / "b.npz", "npz")


def test_no_output_inside_an_input_folder(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    with pytest.raises(UsageError, match="inside the input folder"):
        check_not_input(folder / "report.json", [folder])
    check_not_input(tmp_path / "report.json", [folder])


def _run(main, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code


def test_dip_sample_keeps_a_user_picture_beside_out(tmp_path, monkeypatch):
    from dip_export.cli import sample_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "o.png").write_bytes(USER)
    assert _run(sample_main, ["dip-sample", "--steps", "1", "--num-samples", "1", "--out", "o.npz"], monkeypatch) == 2
    assert (tmp_path / "o.png").read_bytes() == USER and not (tmp_path / "o.npz").exists()


def test_dip_sample_keeps_a_user_file_in_png_dir(tmp_path, monkeypatch):
    from dip_export.cli import sample_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "000000.png").write_bytes(USER)
    argv = ["dip-sample", "--steps", "1", "--num-samples", "1", "--out", "o.npz", "--png-dir", "pics"]
    assert _run(sample_main, argv, monkeypatch) == 2
    assert (tmp_path / "pics" / "000000.png").read_bytes() == USER


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_dip_bench_keeps_user_files_and_the_checkpoint(tmp_path, monkeypatch, option):
    import shutil

    from dip_export.checkpoint import DEMO_CHECKPOINT
    from dip_export.cli import bench_main

    monkeypatch.chdir(tmp_path)
    notes = "notes.json" if option == "--json" else "notes.png"  # the right suffix: the file's mark decides
    (tmp_path / notes).write_bytes(USER)
    shutil.copy(DEMO_CHECKPOINT, tmp_path / "m.safetensors")
    before = (tmp_path / "m.safetensors").read_bytes()
    base = ["dip-bench", "m.safetensors", "--steps", "1", "--backends", "torch", "--repeats", "1", "--warmup", "0"]
    assert _run(bench_main, [*base, option, notes], monkeypatch) == 2
    assert _run(bench_main, [*base, option, "m.safetensors"], monkeypatch) == 2
    assert (tmp_path / notes).read_bytes() == USER
    assert (tmp_path / "m.safetensors").read_bytes() == before
