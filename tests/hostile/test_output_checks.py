"""Output locations and option combinations are checked before any work, on every command that writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.hub import looks_like_hub_name
from dip_export.io import check_output_file
from dip_export.ownership import MAX_NEW_FOLDERS
from tests.test_hostile import one_line, run

NO_NEW_FILES = Path("/proc")  # exists, may look writable (root), takes no new file


@pytest.fixture
def no_work(monkeypatch):
    """Any sampling, timing or fitting fails the test: the refusal must come first."""
    import dip_export.measure.bench as bench
    import dip_export.measure.yardstick as yardstick
    import dip_export.pipeline as pipeline

    monkeypatch.setattr(pipeline.DiPPipeline, "__call__", lambda *a, **k: pytest.fail("sampling started"))
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("timing started"))
    monkeypatch.setattr(yardstick, "fit_schedule", lambda *a, **k: pytest.fail("fitting started"))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3 * MAX_NEW_FOLDERS), st.sampled_from(["d", "deep", "x" * 40]))
def test_an_output_needing_too_many_new_folders_is_refused(tmp_path_factory, depth, part):
    base = tmp_path_factory.mktemp("out")
    path = base.joinpath(*[part] * depth, "a.npz")
    if depth <= MAX_NEW_FOLDERS and len(os.fsencode(str(path))) < 4000:
        check_output_file(path)
        assert not (base / part).exists()  # checking makes no folder
    else:
        with pytest.raises(UsageError):
            check_output_file(path)


@pytest.mark.skipif(not NO_NEW_FILES.is_dir(), reason="needs /proc")
@pytest.mark.parametrize("command", ["sample", "bench", "schedule"])
def test_an_output_where_no_file_can_be_made_is_refused_before_the_work(tmp_path, no_work, command):
    target = NO_NEW_FILES / f"out.{'npz' if command == 'sample' else 'json' if command == 'bench' else 'safetensors'}"
    args = {
        "sample": (cli.sample_main, "--num-samples", "2", "--steps", "2", "--out", target),
        "bench": (cli.bench_main, "--steps", "2", "--backends", "torch", "--json", target),
        "schedule": (cli.export_main, "schedule", "--sampler", "ab2", "--nfe", "4", "--output", target),
    }[command]
    code, err = run(*args)
    one_line(code, err, 2, "cannot write", str(target))


def test_deeply_nested_output_is_one_line_before_sampling(tmp_path, no_work):
    code, err = run(cli.sample_main, "--num-samples", "2", "--out", tmp_path.joinpath(*["d"] * 1400, "a.npz"))
    one_line(code, err, 2, "nested folders")


@pytest.mark.parametrize(
    "extra, words",
    [(["--repeats", "5", "--max-repeats", "1"], "--max-repeats (1) must be at least --repeats (5)"),
     (["--backends", "torch,torch:fp32"], "names a backend twice"),
     (["--plot", "report.txt"], "--plot writes a PNG"),
     (["--json", "r.png", "--plot", "r.png"], "name the same file"),
     (["--json", "r.txt"], "--json writes JSON"),
     (["--json", "r"], "--json writes JSON")],
)  # fmt: skip
def test_bench_options_that_contradict_are_refused(tmp_path, no_work, monkeypatch, extra, words):
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.bench_main, "--steps", "2", *extra)
    one_line(code, err, 2, words)
    assert list(tmp_path.iterdir()) == []


def test_repeats_beyond_the_default_most_raise_the_most(tmp_path, monkeypatch):
    import dip_export.app as app

    seen = []
    monkeypatch.setattr(app, "run_bench", lambda request, *a, **k: seen.append(request))
    code, err = run(cli.bench_main, "--steps", "2", "--repeats", "40", "--backends", "torch")
    assert code == 0, err
    assert (seen[0].repeats, seen[0].max_repeats) == (40, 40)


PART = st.text(alphabet=st.sampled_from("abZ09._-"), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(PART, min_size=2, max_size=5))
def test_hub_names_follow_the_hubs_rules(parts):
    text = "/".join(parts)
    repo = "/".join(parts[:2])
    valid = (
        all(p[0].isalnum() and (p[-1].isalnum() or p[-1] == "_") for p in parts[:2])
        and "--" not in repo and ".." not in repo and not repo.endswith(".git")
        and not {".", ".."} & set(parts[2:])
    )  # fmt: skip
    if looks_like_hub_name(text):
        assert valid, text
    assert not looks_like_hub_name(text + "\n") and not looks_like_hub_name(f"{parts[0]}/./{parts[-1]}")


@pytest.mark.parametrize(
    "main, args, words",
    [(cli.sample_main, ["--token-forecast", "linear"], "give --cache-interval 2 or more"),
     (cli.bench_main, ["--token-forecast", "quadratic", "--backends", "torch"], "give --cache-interval 2 or more"),
     (cli.bench_main, ["--variants", "--samplers", "euler", "--nfe", "2"], "--samplers measures solvers instead"),
     (cli.export_main, ["onnx", "--target", "trt"], "--target trt shapes int8 and fp8 graphs"),
     (cli.sample_main, ["org/name", "--revision", "../../etc"], "--revision must be a branch, tag or commit"),
     (cli.sample_main, ["org/name", "--revision", "\x1b[31mmain"], "--revision must be a branch, tag or commit"),
     (cli.sample_main, ["org/name", "--revision", "main/"], "--revision must be a branch, tag or commit")],
)  # fmt: skip
def test_options_that_cannot_mean_anything_are_refused_before_the_work(tmp_path, no_work, monkeypatch, main, args, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra = (
        ["--out", tmp_path / "o.npz"]
        if main is cli.sample_main
        else ["--output-dir", tmp_path / "x"]
        if main is cli.export_main
        else ["--steps", "2"]
    )
    code, err = run(main, *args, *extra)
    one_line(code, err, 2, words)
    assert list(tmp_path.iterdir()) == []


class _Sent(Exception):
    pass


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40) | st.sampled_from(["main/", "a//b", "main.lock", "v1.0.", "refs/pr/1", "v1.2"]))
def test_a_revision_is_sent_only_when_it_is_a_plain_ref_name(revision):
    import re

    import dip_export.hub as hub
    from dip_export.pipeline import open_source

    plain = (
        bool(re.fullmatch(r"[A-Za-z0-9][\w./-]{0,254}", revision, re.ASCII)) and not {"..", "//"} & {revision[i:i + 2] for i in
        range(len(revision))} and not revision.endswith(("/", ".")) and ".lock/" not in revision + "/"
    )  # fmt: skip

    def send(text, rev):
        raise _Sent(rev)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hub, "resolve_hub_checkpoint", send)
        try:
            open_source("org/name", revision=revision)
        except UsageError:
            assert not plain, revision
        except _Sent:
            assert plain, revision


def test_the_yardstick_on_one_image_reports_without_the_digit_distance(tmp_path, monkeypatch):
    import json

    import dip_export.measure.yardstick as yardstick

    monkeypatch.setattr(yardstick, "REFERENCE_STEPS", 16)
    monkeypatch.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 10.0)
    monkeypatch.setattr(yardstick, "CACHE", tmp_path / "ys")
    out = tmp_path / "y.json"
    code, err = run(cli.bench_main, "--samplers", "euler", "--nfe", "2", "--batch-size", "1", "--json", out)
    assert code == 0 and "Traceback" not in err and "Warning" not in err, err
    row = json.loads(out.read_text())["results"][0]
    assert row["psnr_db"] > 0 and "digit_fd" not in row
