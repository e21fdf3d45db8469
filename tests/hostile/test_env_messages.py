"""What the environment and an output folder are refused with: DIP_MEMORY_LIMIT takes only a unit's spellings and
its figures never read as 0; the owner key's refusal names the variable that chose its path; an unwritable output
folder is named as given, never as a file inside it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import cli
from dip_export.budget import gib, memory_limit
from dip_export.errors import DipError, UsageError
from dip_export.ownership import KEY_ENV, owner_key
from tests.test_hostile import one_line, run

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# What a figure may be followed by: a unit letter, then B or iB; B alone (bytes); either letter case.
SPELLED = st.tuples(st.sampled_from(sorted(UNITS)), st.sampled_from(["", "B", "iB"])).filter(lambda u: u[0] or u[1] != "iB")
REFUSAL = "DIP_MEMORY_LIMIT must be bytes"


def _case(text: str, upper: list[bool]) -> str:
    return "".join(c.upper() if up else c.lower() for c, up in zip(text, upper + [False] * len(text), strict=False))


@given(st.integers(1, 10**6), SPELLED, st.lists(st.booleans(), max_size=3))
def test_a_unit_letter_then_b_or_ib_is_taken(n: int, spelled: tuple[str, str], upper: list[bool]) -> None:
    unit, tail = spelled
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIP_MEMORY_LIMIT", f"{n}{_case(unit + tail, upper)}")
        assert memory_limit() <= n * UNITS[unit]


@given(st.integers(0, 10**6), st.from_regex(r"[KMGTIB]{1,3}", fullmatch=True), st.lists(st.booleans(), max_size=3))
def test_any_other_tail_is_refused(n: int, tail: str, upper: list[bool]) -> None:
    """`8I`, `8IB`, `8KI`, `8BB`: an I without its unit letter (or a B) before it is no size."""
    if re.fullmatch(r"([KMGT]I?)?B|[KMGT]", tail):
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIP_MEMORY_LIMIT", f"{n}{_case(tail, upper)}")
        with pytest.raises(UsageError, match=REFUSAL):
            memory_limit()


@pytest.mark.parametrize("text", ["8I", "8IB", "8iB", "8ib", "8KI"])
def test_dip_sample_refuses_an_i_without_its_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIP_MEMORY_LIMIT", text)
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 2, REFUSAL)
    assert not (tmp_path / "o.npz").exists()


@given(st.one_of(st.integers(1, 2**60), st.floats(1e-3, 2**60)))
def test_no_positive_figure_reads_as_zero(n: float) -> None:
    number = gib(n).split(" ")[0]
    assert float(number) > 0, gib(n)


@pytest.mark.parametrize("limit", ["1000", "300K"])
def test_a_limit_below_a_mib_is_reported_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIP_MEMORY_LIMIT", limit)
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, {"1000": "1000 bytes", "300K": "300 KiB"}[limit], "available memory")
    assert " 0 MiB" not in err


# ---------------------------------------------------------------- the owner key


def test_a_key_under_an_xdg_config_home_that_is_a_file_names_that_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cfg").write_text("")
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "owner key", "is not a folder", "XDG_CONFIG_HOME", f"set {KEY_ENV}")
    assert f"{KEY_ENV} names" not in err
    assert not (tmp_path / "o.npz").exists()


def test_a_key_under_a_home_that_is_a_file_names_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "home").write_text("")
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DipError, match=rf"is not a folder \(.*the home folder.*set {KEY_ENV}") as caught:
        owner_key(create=True)
    assert "XDG_CONFIG_HOME" not in str(caught.value)


def test_a_key_file_named_under_a_file_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "file" / "x.key"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with pytest.raises(DipError, match=rf"is not a folder \(.*{KEY_ENV}") as caught:
        owner_key(create=True)
    assert "XDG_CONFIG_HOME" not in str(caught.value)


# ---------------------------------------------------------------- an output folder that cannot be written


def test_an_unwritable_png_dir_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access

    def access(path, mode, *args, **kwargs):  # root writes anywhere: the folder reads as read-only, as for a user
        if Path(path) == ro and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.chdir(tmp_path)
    try:
        code, err = run(cli.sample_main, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz",
                        "--png-dir", "ro/p")  # fmt: skip
    finally:
        ro.chmod(0o755)
    one_line(code, err, 2, "cannot write ro/p:", "not writable")
    assert "ro/p/x" not in err
    assert not (tmp_path / "o.npz").exists() and not (ro / "p").exists()


def test_a_key_under_xdg_config_home_inside_an_output_names_that_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dip_export.ownership import check_outputs_apart

    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "out"))
    with pytest.raises(UsageError, match=rf"\(XDG_CONFIG_HOME\) is or lies inside --png-dir .*set {KEY_ENV}") as caught:
        check_outputs_apart([("--png-dir", tmp_path / "out")])
    assert f"({KEY_ENV})" not in str(caught.value)
    assert not (tmp_path / "out").exists()
