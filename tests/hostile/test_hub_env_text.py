"""HF_ENDPOINT, HF_TOKEN (or HUGGING_FACE_HUB_TOKEN, the library's older name, read where HF_TOKEN is unset) and
HF_HUB_USER_AGENT_ORIGIN go into every Hub request's URL and headers: a value holding a control character or a space
(or an endpoint that is no http(s) URL) is refused by name, never shown, before huggingface_hub is imported or any
request is made (`hub.check_hub_environment`); run through dip-sample and DiPPipeline.load."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import UsageError
from dip_export.hub import check_hub_environment
from tests.test_hostile import one_line, run

PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
BAD_CHAR = st.one_of(st.characters(max_codepoint=0x20), st.characters(min_codepoint=0x7F, max_codepoint=0x10FFFF))


@given(PRINTABLE, st.sampled_from(["http://", "https://"]))
def test_printable_values_are_taken(text, scheme):
    check_hub_environment({"HF_ENDPOINT": scheme + text, "HF_TOKEN": text})
    check_hub_environment({"HF_ENDPOINT": "", "HF_TOKEN": ""})  # empty: unset


@given(PRINTABLE, BAD_CHAR, st.integers(0, 40), st.sampled_from(["HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]))
def test_a_control_character_or_space_is_refused_by_name(text, bad, at, name):
    value = "https://" + text[:at] + bad + text[at:]
    with pytest.raises(UsageError, match=f"^{name} must be .*; it holds another value$") as refused:
        check_hub_environment({name: value})
    assert value not in str(refused.value)  # the value is never shown


@given(PRINTABLE, BAD_CHAR.filter(lambda c: c != " "), st.integers(0, 40))
def test_a_user_agent_origin_is_printable_ascii_spaces_included(text, bad, at):
    check_hub_environment({"HF_HUB_USER_AGENT_ORIGIN": text.replace("!", " ")})
    with pytest.raises(UsageError, match=r"^HF_HUB_USER_AGENT_ORIGIN must be printable ASCII"):
        check_hub_environment({"HF_HUB_USER_AGENT_ORIGIN": text[:at] + bad + text[at:]})


@given(PRINTABLE, BAD_CHAR)
def test_the_older_token_variable_is_checked_only_where_the_library_reads_it(token, bad):
    check_hub_environment({"HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token + bad})  # HF_TOKEN wins: never sent
    check_hub_environment({"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": token})
    with pytest.raises(UsageError, match=r"^HUGGING_FACE_HUB_TOKEN must be a token of printable ASCII"):
        check_hub_environment({"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": token + bad})


@given(st.sampled_from(["ftp://x", "127.0.0.1:8080", "file:///etc", "http:/x", "https://"]))
def test_an_endpoint_that_is_no_http_url_is_refused(value):
    with pytest.raises(UsageError, match="HF_ENDPOINT must be an http"):
        check_hub_environment({"HF_ENDPOINT": value})


def test_the_cli_and_the_api_refuse_before_any_request(fake_hub, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9\x1b[2J")
    code, err = run(cli.sample_main, "org/model", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, "HF_ENDPOINT must be an http(s):// URL")
    assert "\x1b" not in err
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "secret\nInjected: header")
    with pytest.raises(UsageError, match="HF_TOKEN must be a token of printable ASCII"):
        DiPPipeline.load("org/model")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_secret\x1b[31m")
    code, err = run(cli.bench_main, "org/model", "--backends", "torch", "--steps", "2")
    one_line(code, err, 2, "HUGGING_FACE_HUB_TOKEN must be a token of printable ASCII")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN")
    monkeypatch.setenv("HF_HUB_USER_AGENT_ORIGIN", "x\ry")
    with pytest.raises(UsageError, match="HF_HUB_USER_AGENT_ORIGIN must be printable ASCII"):
        DiPPipeline.load("org/model")
    assert fake_hub == []
