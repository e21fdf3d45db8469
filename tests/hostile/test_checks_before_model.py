"""Every check that needs no model runs before the model is resolved: a bad solver or forecast name, a shift or
guidance interval out of range, an unknown preset, a class id above any model's, a missing class file or a
--png-dir holding a user's file is refused in one line with no Hub request, no checkpoint read and no model
built, by dip-sample and dip-bench alike, and by the Python API."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dip_export.checkpoint
import dip_export.hub
from dip_export import DiPPipeline, cli
from dip_export.checkpoint import resolve_model  # bound before `no_model` replaces the module's
from dip_export.config import PRESETS
from dip_export.errors import UsageError
from dip_export.settings import FORECASTS, MAX_CLASS, MAX_SHIFT, SOLVERS
from tests.test_hostile import one_line, run

FAST = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
_count = itertools.count()


class ModelResolved(Exception):
    pass


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch, fake_hub: list) -> list:
    """Fail (and record) any model resolution: a Hub name's download, a checkpoint file read, a preset built."""
    calls: list[str] = []

    def refuse(what: str):
        def fail(*args, **kwargs):
            calls.append(what)
            raise ModelResolved(what)

        return fail

    monkeypatch.setattr(dip_export.hub, "resolve_hub_checkpoint", refuse("hub"))
    monkeypatch.setattr(dip_export.checkpoint, "resolve_model", refuse("checkpoint"))
    return calls


name = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=12)
bad_shift = st.one_of(st.floats(-1e6, 0.0), st.floats(MAX_SHIFT * 1.001, MAX_SHIFT * 1e3))
bad_interval = st.one_of(
    st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).filter(lambda p: p[0] >= p[1]),  # lo >= hi
    st.tuples(st.floats(-100.0, -1.01), st.floats(0.0, 1.0)),  # lo out of range
    st.tuples(st.floats(0.0, 1.0), st.floats(2.01, 100.0)),  # hi out of range
)


def _decimal(value: float) -> str:
    return f"{value:.6f}"


def _bad_options(tmp: Path) -> dict[str, st.SearchStrategy[tuple[list[str], str]]]:
    """(arguments, a word the refusal names) for a bad value of each option a model is not needed to judge."""

    def png_dir(file: str) -> tuple[list[str], str]:
        folder = tmp / f"png{next(_count)}"
        folder.mkdir()
        (folder / file).write_text("mine")
        return ["--png-dir", str(folder)], "holds files this run would not replace"

    return {
        "sampler": name.filter(lambda s: s not in SOLVERS).map(lambda s: (["--sampler", s], "sampler")),
        "forecast": name.filter(lambda s: s not in FORECASTS).map(lambda s: (["--token-forecast", s], "token forecast")),
        "shift": bad_shift.map(lambda v: ([f"--shift={_decimal(v)}"], "shift")),
        "interval": bad_interval.map(lambda p: ([f"--guidance-interval={_decimal(p[0])},{_decimal(p[1])}"], "guidance interval")),
        "preset": name.filter(lambda s: s not in PRESETS).map(lambda s: (["--preset", s], "unknown preset")),
        "classes": st.integers(MAX_CLASS + 1, 10**15).map(lambda c: (["--classes", f"0,{c}"], "--classes")),
        "class file": name.map(lambda s: (["--num-samples", "2", "--class-file", str(tmp / f"missing-{s}.txt")], "--class-file")),
        "png dir": name.filter(lambda s: not s.endswith(".png")).map(png_dir),
    }


KINDS = ["sampler", "forecast", "shift", "interval", "preset", "classes", "class file", "png dir"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_dip_sample_refuses_before_any_model(tmp_path: Path, no_model: list, kind: str, data) -> None:
    args, word = data.draw(_bad_options(tmp_path)[kind])
    code, err = run(cli.sample_main, "org/name", *args, "--out", tmp_path / "a.npz")
    one_line(code, err, 2, word)
    assert no_model == [] and not (tmp_path / "a.npz").exists()


@FAST
@given(data=st.data())
def test_dip_bench_refuses_before_any_model(tmp_path: Path, no_model: list, data) -> None:
    options = st.one_of(
        name.filter(lambda s: s not in SOLVERS).map(lambda s: (["--sampler", s], "sampler")),
        name.filter(lambda s: s not in FORECASTS).map(lambda s: (["--token-forecast", s], "token forecast")),
        bad_shift.map(lambda v: ([f"--shift={_decimal(v)}"], "shift")),
        name.filter(lambda s: s not in PRESETS).map(lambda s: (["--preset", s], "unknown preset")),
    )
    args, word = data.draw(options)
    code, err = run(cli.bench_main, "org/name", *args)
    one_line(code, err, 2, word)
    assert no_model == []


def test_the_checks_that_need_no_model_do_not_refuse_good_values(tmp_path: Path, no_model: list) -> None:
    """Good values of the same options pass every early check: the run gets as far as the model (and no further)."""
    folder = tmp_path / "png"
    folder.mkdir()
    (tmp_path / "classes.txt").write_text("1\n2\n")
    args = ["--sampler", "heun", "--token-forecast", "linear", "--cache-interval", "2", "--shift", "3",
            "--guidance-interval", "0.2,0.9", "--num-samples", "2", "--class-file", tmp_path / "classes.txt",
            "--png-dir", folder, "--out", tmp_path / "a.npz"]  # fmt: skip
    with pytest.raises(ModelResolved):
        run(cli.sample_main, "org/name", *args)
    assert no_model == ["hub"]


@FAST
@given(preset=name.filter(lambda s: s not in PRESETS))
def test_the_api_refuses_an_unknown_preset_before_the_hub(no_model: list, preset: str) -> None:
    for model in ("org/name", None):
        with pytest.raises(UsageError, match="unknown preset") as caught:
            DiPPipeline.load(model, preset=preset)
        assert len(str(caught.value).splitlines()) == 1
    assert no_model == []


@pytest.fixture(scope="module")
def demo_pipe() -> DiPPipeline:
    return DiPPipeline.load(device="cpu")


@FAST
@given(data=st.data())
def test_the_api_call_refuses_before_any_engine(demo_pipe: DiPPipeline, monkeypatch: pytest.MonkeyPatch, data) -> None:
    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was made")

    monkeypatch.setattr(demo_pipe, "_make", no_engine)
    call = data.draw(st.one_of(
        name.filter(lambda s: s not in SOLVERS).map(lambda s: {"sampler": s}),
        name.filter(lambda s: s not in FORECASTS).map(lambda s: {"token_forecast": s}),
        bad_shift.map(lambda v: {"shift": v}),
        bad_interval.map(lambda p: {"guidance_interval": p}),
        st.integers(MAX_CLASS + 1, 10**15).map(lambda c: {"classes": [0, c], "seeds": [0, 1]}),
    ))  # fmt: skip
    with pytest.raises(UsageError) as caught:
        demo_pipe(**{"seeds": [0], "classes": [1], **call})
    assert len(str(caught.value).splitlines()) == 1


@FAST
@given(
    preset=st.sampled_from(sorted(PRESETS)), where=st.sampled_from(["org/name", "org/n/x.pt", "x.pt", "no.safetensors", "exp"])
)
def test_a_model_and_a_preset_together_are_refused_before_any_model(
    tmp_path: Path, no_model: list, preset: str, where: str
) -> None:
    """A preset is a whole model (random weights): with a checkpoint, an export folder or a Hub name it is refused
    as the pair it is, before the file is read or the Hub asked, on every command and in the Python API."""
    (tmp_path / "x.pt").write_bytes(b"weights")
    (tmp_path / "exp").mkdir(exist_ok=True)
    model = where if where.startswith("org/") else str(tmp_path / where)
    for main, extra in ((cli.sample_main, ["--out", tmp_path / "a.npz"]), (cli.bench_main, []),
                        (cli.export_main, ["--output-dir", tmp_path / "e"])):  # fmt: skip
        args = ["onnx", model] if main is cli.export_main else [model]
        code, err = run(main, *args, "--preset", preset, *extra)
        one_line(code, err, 2, f"--preset {preset}", "not both")
    with pytest.raises(
        UsageError, match=rf"^give a model \(checkpoint, export folder or Hub name\) or --preset {preset}, not both$"
    ):
        DiPPipeline.load(model, preset=preset)
    with pytest.raises(UsageError, match=rf"^give a checkpoint or --preset {preset}, not both$"):
        resolve_model(model, preset)  # the lower layer: the same pair refused
    assert no_model == [] and not (tmp_path / "a.npz").exists() and not (tmp_path / "e").exists()
