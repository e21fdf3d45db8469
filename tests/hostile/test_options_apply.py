"""An explicit --cuda-graphs (cuda_graphs=True) where whole-step CUDA graphs cannot apply (a CPU device, ONNX Runtime)
is refused in one line naming the option and the device or backend, before any work: dip-sample, dip-bench and the
Python API go through one rule (`settings.CUDA_GRAPHS_RULE`, in SAMPLE_RULES and BENCH_RULES). Left out (None) it
means "wherever they apply", as before; --no-cuda-graphs (False) turns them off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dip_export.app
import dip_export.pipeline
from dip_export import DiPPipeline, cli
from dip_export.errors import DipError, UsageError
from dip_export.runtime.backends import BackendSpec
from dip_export.runtime.catalog import CATALOG
from dip_export.settings import BENCH_RULES, SAMPLE_RULES, RunSettings, check_options, given_options, run_conditions
from tests.test_hostile import RUN_SETTINGS, one_line, run

GRAPHABLE = {info.name for info in CATALOG if info.graphable}
SPECS = ["torch", "torch:bf16", "compile", "onnx", "onnx:int8", "trt:fp16", "trt:int8"]
TRI = st.sampled_from([None, True, False])


@pytest.fixture(scope="module")
def demo() -> DiPPipeline:
    return DiPPipeline.load(device="cpu", batch_size=2)


@pytest.fixture
def no_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("sampling started")

    monkeypatch.setattr(dip_export.pipeline, "generate", refuse)


@RUN_SETTINGS
@given(rules=st.sampled_from([SAMPLE_RULES, BENCH_RULES]), device=st.sampled_from(["cpu", "cuda"]),
       backend=st.sampled_from([info.name for info in CATALOG]), value=TRI)  # fmt: skip
def test_the_rule_refuses_exactly_an_explicit_request_where_graphs_cannot_apply(rules, device, backend, value) -> None:
    given_now = given_options({"--cuda-graphs": value}) | run_conditions(device, [backend])
    applies = device == "cuda" and backend in GRAPHABLE
    if value is True and not applies:
        with pytest.raises(UsageError) as refused:
            check_options(rules, given_now)
        message = str(refused.value)
        assert message.startswith("--cuda-graphs does not apply to") and "\n" not in message
        assert (f"device {device}" in message) == (device != "cuda")
        assert (f"backend {backend}" in message) == (backend not in GRAPHABLE)
    else:
        check_options(rules, given_now)


@RUN_SETTINGS
@given(spec=st.sampled_from(SPECS), device=st.sampled_from(["cpu", "cuda"]), value=TRI)
def test_a_pipeline_uses_graphs_where_they_apply_and_refuses_them_asked_elsewhere(demo, spec, device, value) -> None:
    """Every backend and device, without a GPU: the pipeline's decision is made from its backend and device alone."""
    pipe = DiPPipeline(demo.source, demo.spec, demo.device, batch_size=2)
    pipe._spec, pipe._device = BackendSpec.parse(spec), torch.device(device)  # past the constructor's machine checks
    applies = device == "cuda" and BackendSpec.parse(spec).name in GRAPHABLE
    if value is True and not applies:
        with pytest.raises(UsageError, match="--cuda-graphs does not apply to"):
            pipe.use_cuda_graphs(value)
    else:
        assert pipe.use_cuda_graphs(value) is (applies and value is not False)


@RUN_SETTINGS
@given(value=st.one_of(st.integers(-2, 2), st.text(max_size=5), st.floats(allow_nan=False), st.just(np.int64(1))))
def test_a_value_that_is_not_true_false_or_none_is_refused(demo, value) -> None:
    with pytest.raises(UsageError, match="cuda_graphs must be True, False or None"):
        demo(classes=[1], seeds=[0], steps=2, cuda_graphs=value)
    with pytest.raises(UsageError, match="cuda_graphs must be True, False or None"):
        RunSettings(classes=(1,), seeds=(0,), cuda_graphs=value)


def test_the_api_refuses_graphs_asked_for_on_the_cpu_before_sampling(demo, no_sampling) -> None:
    with pytest.raises(UsageError, match="--cuda-graphs does not apply to device cpu"):
        demo(classes=[1], seeds=[0], steps=2, cuda_graphs=True)
    plan = demo.plan([1], [0])
    with pytest.raises(UsageError, match="--cuda-graphs does not apply to device cpu"):
        demo.generate(plan, demo.sampler_settings(steps=2), cuda_graphs=True)


def test_the_api_default_and_off_give_the_same_images_on_the_cpu(demo) -> None:
    default = demo(classes=[1, 2], seeds=[0, 1], steps=2)
    off = demo(classes=[1, 2], seeds=[0, 1], steps=2, cuda_graphs=False)
    np.testing.assert_array_equal(default, off)


def _sample(tmp_path: Path, *args: str) -> tuple[int, str]:
    return run(cli.sample_main, "--steps", "2", "--num-samples", "1", "--device", "cpu", *args, "--out", tmp_path / "g.npz")


def test_cli_refuses_cuda_graphs_on_the_cpu_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _sample(tmp_path, "--cuda-graphs")
    one_line(code, err, 2, "--cuda-graphs does not apply to device cpu", "--no-cuda-graphs")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", [[], ["--no-cuda-graphs"]], ids=["default", "off"])
def test_cli_default_and_no_cuda_graphs_still_run_on_the_cpu(tmp_path: Path, flag: list[str]) -> None:
    code, err = _sample(tmp_path, *flag)
    assert code == 0, err
    assert (tmp_path / "g.npz").is_file()


def test_resumed_shards_do_not_depend_on_the_graph_option(tmp_path: Path) -> None:
    """The shard folder's recorded settings hold no graph option (its hash is unchanged): a rerun with
    --no-cuda-graphs resumes the shards of a run that left it out, and gives the same images."""
    first = _sample(tmp_path, "--resume")
    assert first[0] == 0, first[1]
    images = np.load(tmp_path / "g.npz")["arr_0"]
    again = _sample(tmp_path, "--resume", "--no-cuda-graphs")
    assert again[0] == 0, again[1]
    np.testing.assert_array_equal(np.load(tmp_path / "g.npz")["arr_0"], images)


def _bench(*args: str) -> tuple[int, str]:
    return run(cli.bench_main, "--steps", "2", "--repeats", "1", "--warmup", "0", "--cuda-graphs", *args)


def test_bench_refuses_cuda_graphs_on_the_cpu_before_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DiPPipeline, "load", classmethod(lambda *a, **k: pytest.fail("the model was opened")))
    code, err = _bench("--backends", "torch", "--device", "cpu")
    one_line(code, err, 2, "--cuda-graphs does not apply to device cpu")


@pytest.mark.parametrize(("backends", "refused"), [("onnx", True), ("onnx,onnx:int8", True), ("onnx,torch", False),
                                                   ("trt:fp16", False), ("auto", False)])  # fmt: skip
def test_bench_on_cuda_refuses_cuda_graphs_only_where_no_named_backend_has_them(
    monkeypatch: pytest.MonkeyPatch, backends: str, refused: bool
) -> None:
    """On a CUDA device (faked: the check needs only its type), a row that cannot replay graphs says so in its note;
    the option is refused when it could apply to no backend named."""

    class Reached(DipError):
        exit_code = 7

    def reached(*args: object, **kwargs: object) -> None:
        raise Reached("the model was opened")

    monkeypatch.setattr(dip_export.app, "resolve_device", lambda _: torch.device("cuda"))
    monkeypatch.setattr(DiPPipeline, "load", classmethod(reached))
    import dip_export.runtime.backends as backends_module  # a CUDA machine with the GPU packages installed

    monkeypatch.setattr(backends_module, "unavailable_reason", lambda *a, **k: None)
    code, err = _bench("--backends", backends)
    if refused:
        one_line(code, err, 2, "--cuda-graphs does not apply to backend onnx")
    else:
        assert "the model was opened" in err, err
