"""A comma list never holds an empty item (`a,,b`, `a,`, `,a`): refused in one line by `settings.list_items`, which
every list of names goes through (--backends, --samplers); a list of numbers refuses them as it refuses any text that
is no number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.settings import choice_list, list_items
from tests.test_hostile import one_line, run

NAME = st.sampled_from(["torch", "onnx", "euler", "ab2", " x", "x "])


@given(st.lists(st.one_of(NAME, st.just("")), min_size=1, max_size=6))
def test_items_are_kept_as_typed_and_an_empty_one_is_refused(items):
    text = ",".join(items)
    if all(items):
        assert list_items(text, "--x") == items
    else:
        with pytest.raises(UsageError, match=r"--x (holds an empty item|is empty)"):
            list_items(text, "--x")
        with pytest.raises(UsageError, match=r"--x (holds an empty item|is empty)"):
            choice_list(text, "--x", ["torch", "onnx", "euler", "ab2", " x", "x "])


@pytest.mark.parametrize("text", ["torch,,onnx", "torch,", ",torch"])
def test_the_bench_refuses_empty_items_before_any_work(tmp_path, monkeypatch, text):
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.bench_main, "--backends", text, "--steps", "1")
    one_line(code, err, 2, "--backends holds an empty item")
    code, err = run(cli.bench_main, "--samplers", text.replace("torch", "euler").replace("onnx", "ab2"), "--nfe", "5")
    one_line(code, err, 2, "--samplers holds an empty item")
    assert list(tmp_path.iterdir()) == []
