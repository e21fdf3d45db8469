"""export_onnx, the Python entry of `dip-export onnx`, checks its arguments before it traces anything: an image
size of exact whole numbers that the patch divides, a LoadedModel, a Console or None, a folder path that is not
empty. Each is one line of the package's own error, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export.errors import UsageError
from dip_export.export import onnx_export
from dip_export.export.onnx_export import export_onnx

BAD_SIZES = st.one_of(
    st.tuples(st.just(True), st.just(32)),
    st.tuples(st.integers(-64, 64).filter(lambda n: n % 8 != 0 or n <= 0), st.just(32)),
    st.floats(1, 64).map(lambda f: (f, 32)),
    st.integers(-10, 7),
    st.just("32y32"),
    st.just(None),
)


@pytest.fixture
def no_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("the export started")

    monkeypatch.setattr(onnx_export, "check_export_run", never)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=BAD_SIZES)
def test_a_bad_image_size_is_refused_before_any_export(tmp_path: Path, loaded, no_trace, size) -> None:
    with pytest.raises(UsageError) as caught:
        export_onnx(loaded, image_size=size, output_dir=tmp_path / "e")
    assert len(str(caught.value).splitlines()) == 1 and "image size" in str(caught.value)
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"console": 1}, "console must be a rich Console"),
        ({"output_dir": ""}, r"output_dir \(a folder, or None .*\) must be a path"),
        ({"output_dir": 3}, r"output_dir \(a folder, or None .*\) must be a path \(text\), got int"),
        ({"output_dir": b"/tmp/x"}, r"must be a path \(text\), got bytes"),
        ({"output_dir": "/tmp/a\x00b"}, "a NUL byte"),
        ({"precision": "int8"}, "int8"),
        ({"loaded": None}, "export_onnx takes a LoadedModel"),
        ({"loaded": "golden"}, "export_onnx takes a LoadedModel"),
    ],
)
def test_other_bad_arguments_are_refused_before_any_export(tmp_path: Path, monkeypatch, loaded, no_trace, changes, words) -> None:
    monkeypatch.chdir(tmp_path)
    arguments = {"loaded": loaded, "image_size": (32, 32), "output_dir": tmp_path / "e", **changes}
    with pytest.raises(UsageError, match=words):
        export_onnx(arguments.pop("loaded"), **arguments)
    assert list(tmp_path.iterdir()) == []


class _Stop(Exception):
    pass


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    truth=st.sampled_from(["raises", "false", "true", "none"]),
    names=st.lists(st.text("abc", min_size=1, max_size=5), min_size=2, max_size=2, unique=True),
)
def test_a_path_like_output_dir_is_read_once_and_never_tested_for_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loaded, truth: str, names: list[str]
) -> None:
    """The folder the export goes to is the one the first `__fspath__` gave, whatever the object says later or
    its `__bool__` says (False would have sent the export to the default folder)."""
    calls: list[str] = []

    class Changing:
        def __fspath__(self) -> str:
            calls.append(names[len(calls) % 2])
            return str(tmp_path / calls[-1])

        if truth != "none":

            def __bool__(self) -> bool:
                if truth == "raises":
                    raise RuntimeError("asked for its truth")
                return truth == "true"

    def stop(loaded, size, out, **kwargs) -> None:
        raise _Stop(out)

    with monkeypatch.context() as patched:
        patched.setattr(onnx_export, "check_export_run", stop)
        with pytest.raises(_Stop) as caught:
            export_onnx(loaded, image_size=(32, 32), output_dir=Changing())
    assert calls == [names[0]]
    assert caught.value.args[0] == tmp_path / names[0]
