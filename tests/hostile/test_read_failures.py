"""A model whose read fails (a failing disk or mount: EIO) is one line naming the file, from the CLI and the API;
an owner key file too large to be a key is refused without being read.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import read_failure
from dip_export.errors import CheckpointError
from dip_export.ownership import KEY_ENV
from dip_export.text import visible
from tests.hostile.measured import measured_load
from tests.test_hostile import one_line, run

FAILING = Path("/proc/self/mem")  # a regular file by stat whose read fails with EIO


@given(st.sampled_from([errno.EIO, errno.ENXIO, errno.EACCES, errno.ESTALE]), st.one_of(st.none(), st.text(min_size=1)),
       st.text(min_size=1))  # fmt: skip
def test_a_read_failure_is_one_error_naming_a_file(code, filename, name):
    err = read_failure(OSError(code, os.strerror(code), filename) if filename else OSError(code, os.strerror(code)), name)
    assert isinstance(err, CheckpointError)
    assert str(err) == visible(f"{filename or name}: cannot read it ({os.strerror(code)})")  # escaped when made


@pytest.mark.skipif(not FAILING.is_file(), reason="needs Linux's /proc/self/mem")
def test_the_cli_and_the_api_name_a_file_whose_read_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"^/proc/self/mem: cannot read it \(Input/output error\)$"):
        DiPPipeline.load(str(FAILING))
    code, err = run(cli.sample_main, FAILING, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "/proc/self/mem: cannot read it (Input/output error)")
    code, err = run(cli.export_main, "onnx", FAILING, "--output-dir", tmp_path / "e")
    one_line(code, err, 1, "/proc/self/mem: cannot read it (Input/output error)")
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "e").exists()


@pytest.mark.parametrize("size", [101, 2 << 30])
def test_an_owner_key_too_large_to_be_one_is_refused_unread(tmp_path, monkeypatch, size):
    key = tmp_path / "big.key"
    with open(key, "wb") as f:
        f.truncate(size)  # sparse: its bytes cost nothing until read
    key.chmod(0o600)
    monkeypatch.setenv(KEY_ENV, str(key))
    found, done = measured_load("cli", ["--num-samples", "1", "--steps", "1", "--out", tmp_path / "o.npz"])
    assert found["exit"] == "1" and "not an owner key of this tool" in done.stderr, done.stderr
    assert int(found["grew"]) < 200 * 1024, found  # KiB: nothing like the file's size was read
    assert not (tmp_path / "o.npz").exists() and key.stat().st_size == size
