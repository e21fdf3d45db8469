"""What huggingface_hub logs and warns (at the verbosity its environment asks: HF_DEBUG, HF_HUB_VERBOSITY) reaches the
terminal through the tool's printer, one capped line each, never a traceback nor a warning's source line
(`hub._library_log`, `hub._library_warnings`); an HF_HUB_VERBOSITY the library would print back is refused by name.
Run as installed commands (the library reads its environment at import) and through the Python API."""

from __future__ import annotations

import http.server
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline
from dip_export.errors import CheckpointError, UsageError
from dip_export.hub import HUB_VERBOSITIES, check_hub_environment
from dip_export.messages import MAX_LINE
from tests.hostile.conftest import HubRecorder


@given(st.sampled_from([*HUB_VERBOSITIES, ""]))
def test_the_library_s_verbosities_are_taken(value):
    check_hub_environment({"HF_HUB_VERBOSITY": value})


@given(st.text(max_size=30).filter(lambda v: v not in (*HUB_VERBOSITIES, "")))
def test_any_other_verbosity_is_refused_by_name(value):
    with pytest.raises(UsageError, match=r"^HF_HUB_VERBOSITY must be one of debug, info") as refused:
        check_hub_environment({"HF_HUB_VERBOSITY": value})
    assert "holds another value" in str(refused.value)


@pytest.fixture
def endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    HubRecorder.seen, HubRecorder.status, HubRecorder.body = [], 404, b""
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _sample(tmp_path: Path, endpoint: str, **env: str) -> list[str]:
    script = Path(sys.executable).parent / "dip-sample"
    assert script.is_file(), "the README's install puts the commands beside the interpreter"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(HOME=str(tmp_path / "home"), HF_ENDPOINT=endpoint, HF_TOKEN="hf_secret_token", NO_COLOR="1",
                   COLUMNS="80", HF_HUB_CACHE=str(tmp_path / "cache"), **env)  # fmt: skip
    done = subprocess.run([script, "org/model", "--steps", "1", "--num-samples", "1", "--out", tmp_path / "o.npz"],
                          capture_output=True, text=True, cwd=tmp_path, env=environ, timeout=300)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[-1].startswith("error: org/model:"), done.stderr
    assert "Traceback" not in done.stderr and "hf_secret_token" not in done.stderr, done.stderr
    assert all(len(line) <= MAX_LINE for line in lines), max(lines, key=len)
    assert not (tmp_path / "o.npz").exists()
    return lines[:-1]


@pytest.mark.parametrize("switch", [{"HF_DEBUG": "1"}, {"HF_HUB_VERBOSITY": "debug"}])
def test_debug_logging_is_one_line_per_record_without_tracebacks(tmp_path, endpoint, switch):
    before = _sample(tmp_path, endpoint, **switch)
    assert before and all(line.startswith("huggingface_hub: ") for line in before), before
    assert any("GET " in line for line in before), before  # the records asked for are shown, not dropped
    assert len(HubRecorder.seen) >= 1


def test_a_library_warning_is_its_first_sentence(tmp_path, endpoint):
    before = _sample(tmp_path, endpoint, HF_HUB_ENABLE_HF_TRANSFER="1")
    assert before == ["huggingface_hub: The `HF_HUB_ENABLE_HF_TRANSFER` environment variable is deprecated as "
                      "'hf_transfer' is not used anymore."]  # fmt: skip


def test_the_api_routes_records_and_puts_the_library_s_handlers_back(fake_hub, capfd):
    library = logging.getLogger("huggingface_hub")
    handlers, level, propagate = library.handlers[:], library.level, library.propagate
    library.setLevel(logging.DEBUG)  # as HF_DEBUG does at the library's import
    try:
        with pytest.raises(CheckpointError, match="HTTP 404"):
            DiPPipeline.load("org/model")
    finally:
        library.setLevel(level)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("huggingface_hub: ") and len(line) <= MAX_LINE for line in lines), err
    assert "Traceback" not in err and fake_hub
    assert (library.handlers, library.propagate) == (handlers, propagate)
