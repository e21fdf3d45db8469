"""dip-bench prints names and reasons that come from files (a model's name, a skipped row's reason) as text: rich
markup is shown, never applied, control characters are escaped, and a row's line is one capped line (`messages`),
in its progress lines and in its table alike."""

from __future__ import annotations

import io
import shutil

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from dip_export import cli
from dip_export.checkpoint import DEMO_CHECKPOINT
from dip_export.measure.bench import render_table
from dip_export.messages import MAX_LINE
from tests.test_hostile import run

NAMES = st.text(st.sampled_from("[]/bold red\x1b\x07\n\t:=#x0é"), min_size=1, max_size=40)


def _report(name: str, reason: str) -> dict:
    settings_ = {"model": name, "image_size": [32, 32], "batch": 1, "steps": 2, "sampler": "euler", "cfg": 1.0,
                 "threads": {"torch_intra_op": 1}, "repeats": 1, "cuda_graphs": False, "warmup": 0}  # fmt: skip
    row = {"backend": "onnx", "precision": "fp32", "variant": name, "status": "skipped", "reason": reason}
    return {"settings": settings_, "results": [row]}


@settings(max_examples=60, deadline=None)
@given(NAMES, NAMES)
def test_the_table_shows_names_and_reasons_as_text(name, reason):
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(render_table(_report(name, reason)))
    text = out.getvalue()
    assert "\x1b" not in text and "\x07" not in text
    for shown in (name, reason):
        plain = shown == shown.strip()  # a space that starts or ends a line is shown as \x20 there
        if plain and "[" in shown and "\\" not in shown and not any(c in shown for c in "\x1b\x07\n\t"):
            assert shown in text  # brackets and all: nothing was taken as markup


def test_a_model_named_with_markup_prints_as_text(tmp_path, monkeypatch):
    """Markup in a model's name is text; a control character cannot name a model at all (`naming.model_name_problem`)."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m[bold]Q[red]E.safetensors"
    shutil.copy(DEMO_CHECKPOINT, model)
    code, err = run(cli.bench_main, model, "--steps", "1", "--backends", "torch", "--repeats", "1", "--warmup", "0",
                    "--max-repeats", "1")  # fmt: skip
    assert code == 0, err
    assert all(len(line) <= MAX_LINE for line in err.splitlines())
    escaped = tmp_path / "m\x1b[41mE.safetensors"
    shutil.copy(DEMO_CHECKPOINT, escaped)
    code, err = run(cli.bench_main, escaped, "--steps", "1", "--backends", "torch")
    assert code == 1 and "\x1b" not in err and "rename the file" in err, err
