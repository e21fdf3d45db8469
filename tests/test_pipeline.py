"""The public pipeline: same images as dip-sample, every model source, Hub names, backend auto."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dip_export import DiPPipeline
from dip_export.checkpoint import DEMO_CHECKPOINT, resolve_model
from dip_export.cli import sample_app
from dip_export.errors import CheckpointError, DipError, UsageError
from dip_export.hub import looks_like_hub_name, split_hub_name
from dip_export.measure.autobackend import CACHE_FILE, choose_backend, recommend_from_bench
from dip_export.runtime.backends import BackendSpec
from dip_export.runtime.torch_engine import TorchEngine
from tests.conftest import lightning_checkpoint

runner = CliRunner()


def test_pipeline_gives_the_images_dip_sample_writes(tmp_path):
    out = tmp_path / "s.npz"
    args = ["--classes", "3,1,4", "--seeds", "5,9,2", "--steps", "6", "--cfg", "2.0", "--shift", "1.5", "--batch-size", "2"]
    result = runner.invoke(sample_app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    pipe = DiPPipeline.load(batch_size=2)
    seen = []
    images = pipe(classes=[3, 1, 4], seeds=[5, 9, 2], steps=6, cfg=2.0, shift=1.5, callback=lambda d, n: seen.append((d, n)))
    np.testing.assert_array_equal(images, np.load(out)["arr_0"])
    assert images.dtype == np.uint8 and images.shape == (3, 32, 32, 3)
    assert seen[-1] == (12, 12) and len(seen) == 12  # 6 steps x 2 batches


def test_pipeline_reproduces_the_authors_sampler(tmp_path, golden):
    ckpt = lightning_checkpoint(tmp_path / "last.ckpt", golden.state)
    case = golden.meta["sampler_cases"]["cfg2.5"]
    pipe = DiPPipeline.load(ckpt, image_size=golden.size)
    images = pipe(classes=[0, 4], seeds=[11, 12], steps=case["steps"], cfg=case["cfg"], shift=case["shift"])
    diff = np.abs(images.astype(int) - golden["sample_cfg2.5_uint8"])
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.995


def test_pipeline_rejects_bad_arguments_with_one_line():
    pipe = DiPPipeline.load()
    with pytest.raises(UsageError, match="out of range"):
        pipe(classes=[10], seeds=[0])
    with pytest.raises(UsageError, match="not a positive multiple"):
        pipe(classes=[1], seeds=[0], image_size=30)
    with pytest.raises(UsageError, match="unknown backend"):
        DiPPipeline.load(backend="tensorflow")
    with pytest.raises(UsageError, match="--revision goes with"):
        DiPPipeline.load(revision="main")


# ------------------------------------------------------------------ Hub names


def test_hub_names_are_told_from_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_like_hub_name("zhen-nan/DiP") and looks_like_hub_name("org/name/sub/ckpt.pt")
    assert not looks_like_hub_name("ckpt.pt") and not looks_like_hub_name("./org/name")
    assert not looks_like_hub_name("/abs/path") and not looks_like_hub_name("org/../etc")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").write_text("x")
    assert not looks_like_hub_name("org/name")  # an existing path wins
    assert split_hub_name("org/name/sub/f.pt") == ("org/name", "sub/f.pt")


def _hub_cache(root: Path, repo_id: str, files: dict[str, Path], revision: str = "main") -> Path:
    """A cache laid out as huggingface_hub lays it out: blobs by hash, snapshots of symlinks, refs."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_repo_with_one_checkpoint_loads_from_the_cache(offline_hub, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("demo")
    _hub_cache(offline_hub, "digits-org/dip-digits", {"dip-digits.safetensors": DEMO_CHECKPOINT, "README.md": readme})
    pipe = DiPPipeline.load("digits-org/dip-digits")
    assert Path(pipe.source.loaded.source).resolve().parent.name == "blobs"  # the cached file, not a copy
    np.testing.assert_array_equal(
        pipe(classes=[2, 8], seeds=[0, 1], steps=4), DiPPipeline.load()(classes=[2, 8], seeds=[0, 1], steps=4)
    )


def test_hub_repo_with_several_checkpoints_asks_for_one(offline_hub, tmp_path, golden):
    other = lightning_checkpoint(tmp_path / "last.ckpt", golden.state)
    _hub_cache(offline_hub, "org/two", {"a/last.ckpt": other, "dip-digits.safetensors": DEMO_CHECKPOINT})
    with pytest.raises(UsageError, match=r"several checkpoints; name one as org/two/FILE: a/last.ckpt, dip-digits.safetensors"):
        DiPPipeline.load("org/two")
    pipe = DiPPipeline.load("org/two/a/last.ckpt", image_size=golden.size)
    assert pipe.config.hidden_size == golden.config.hidden_size and pipe.image_size == (32, 64)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        DiPPipeline.load("org/two/missing.pt")


def test_unknown_name_offline_is_one_line(offline_hub):
    with pytest.raises(CheckpointError, match=r"nobody/nothing: not in the Hugging Face cache .*offline"):
        DiPPipeline.load("nobody/nothing")


def test_unreachable_hub_is_one_line(offline_hub, monkeypatch):
    """No network: the HTTP client's own error (no OSError, no Hub error) becomes one line, no traceback."""
    import huggingface_hub
    from huggingface_hub import constants

    class ConnectError(Exception):  # what the Hub's HTTP client raises when DNS fails
        pass

    def unreachable(*args, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # what a load reads now (hub_settings)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", unreachable)
    with pytest.raises(CheckpointError, match=r"^org/absent: not in the Hugging Face cache .* cannot be reached"):
        DiPPipeline.load("org/absent")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(CheckpointError, match=r"^org/absent/f.pt: the Hugging Face Hub cannot be reached \(ConnectError"):
        DiPPipeline.load("org/absent/f.pt")


def test_dip_sample_resolves_hub_names_from_the_environment(tmp_path):
    """The real contract: HF_HUB_CACHE / HF_HUB_OFFLINE in the environment of a fresh process."""
    cache = _hub_cache(tmp_path / "hub", "digits-org/dip-digits", {"dip-digits.safetensors": DEMO_CHECKPOINT})
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = "from dip_export.cli import sample_main; sample_main()"
    args = ["--classes", "1", "--seeds", "3", "--steps", "3", "--out", str(tmp_path / "h.npz")]
    done = subprocess.run([sys.executable, "-c", code, "digits-org/dip-digits", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "h.npz")["arr_0"].shape == (1, 32, 32, 3)
    bad = subprocess.run([sys.executable, "-c", code, "digits-org/nope", *args], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "digits-org/nope" in bad.stderr


# ------------------------------------------------------------------ backend auto


class _Clock:
    """The harness's clock, advanced only by the engines' declared costs: the decision cannot depend on load."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Slowed:
    """An engine whose evaluations cost `delay` seconds on the fake clock (a stand-in for a slower backend)."""

    def __init__(self, net: TorchEngine, delay: float, clock: _Clock) -> None:
        self.net, self.delay, self.clock = net, delay, clock

    def backbone(self, x, t, y):
        self.clock.now += 0.01 + self.delay
        return self.net.backbone(x, t, y)

    def detailer(self, x, tokens):
        self.clock.now += 0.01
        return self.net.detailer(x, tokens)


def test_auto_picks_the_fastest_measured_and_caches_it(tmp_path, monkeypatch):
    from dip_export.measure import harness

    loaded = resolve_model()
    made: list[str] = []
    delays = {"torch:fp32": 0.1, "onnx:fp32": 0.0, "compile:fp32": 0.15, "torch:bf16": 0.15, "compile:bf16": 0.15}
    clock = _Clock()
    monkeypatch.setattr(harness, "time", clock)

    def make(spec: BackendSpec):
        made.append(str(spec))
        return _Slowed(TorchEngine(loaded.model, torch.device("cpu")), delays[str(spec)], clock)

    cpu = torch.device("cpu")
    decision = choose_backend(loaded, "demo", (32, 32), 2, cpu, make, tmp_path)
    assert str(decision.spec) == "onnx:fp32" and not decision.cached
    assert decision.ms["torch:fp32"] > decision.ms["onnx:fp32"] + 50  # 100 ms slower per evaluation
    assert decision.reason.startswith("onnx:fp32: ") and "x eager on this CPU" in decision.reason
    assert "compile:fp32" in made or "compile:bf16" in made
    assert sum(s.startswith("compile") for s in made) == 1  # one compile at most
    made.clear()
    again = choose_backend(loaded, "demo", (32, 32), 2, cpu, make, tmp_path)
    assert again.cached and again.spec == decision.spec and made == []  # no new measurement
    choose_backend(loaded, "demo", (32, 32), 4, cpu, make, tmp_path)  # another batch is another decision
    assert made


@pytest.mark.parametrize(("eager_again", "cached"), [(0.1, True), (0.12, True), (0.3, False), (0.02, False)])
def test_auto_remembers_a_decision_only_if_eager_timed_the_same_at_start_and_end(tmp_path, monkeypatch, eager_again, cached):
    from dip_export.measure import harness

    loaded = resolve_model()
    delays = {"torch:fp32": 0.1, "onnx:fp32": 0.05, "compile:fp32": 0.15, "torch:bf16": 0.15, "compile:bf16": 0.15}
    eager_builds = []
    clock = _Clock()
    monkeypatch.setattr(harness, "time", clock)

    def make(spec: BackendSpec):
        if str(spec) == "torch:fp32":
            eager_builds.append(spec)
        delay = eager_again if str(spec) == "torch:fp32" and len(eager_builds) == 2 else delays[str(spec)]
        return _Slowed(TorchEngine(loaded.model, torch.device("cpu")), delay, clock)

    decision = choose_backend(loaded, "demo", (32, 32), 2, torch.device("cpu"), make, tmp_path)
    assert len(eager_builds) == 2 and str(decision.spec) == "onnx:fp32"  # the second eager timing never wins
    assert (tmp_path / CACHE_FILE).exists() == cached
    assert ("the load changed" in decision.reason) != cached
    again = choose_backend(loaded, "demo", (32, 32), 2, torch.device("cpu"), make, tmp_path)
    assert again.cached == cached


def test_auto_cache_is_untrusted(tmp_path, monkeypatch):
    from dip_export.measure import autobackend

    monkeypatch.setattr(autobackend, "steady", lambda ms: True)  # real timings: the load may change on this machine
    loaded = resolve_model()
    calls = []

    def make(spec: BackendSpec):
        calls.append(spec)
        return TorchEngine(loaded.model, torch.device("cpu"))

    (tmp_path / CACHE_FILE).write_text("[1, 2")  # not this tool's file: refused before measuring, and kept
    with pytest.raises(DipError, match="is not a --backend auto cache this tool wrote"):
        choose_backend(loaded, "demo", (32, 32), 1, torch.device("cpu"), make, tmp_path)
    assert calls == [] and (tmp_path / CACHE_FILE).read_text() == "[1, 2"
    (tmp_path / CACHE_FILE).unlink()
    choose_backend(loaded, "demo", (32, 32), 1, torch.device("cpu"), make, tmp_path)
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    assert data["written_by"] == "dip-export/auto-backend-cache"
    key = next(k for k in data if k != "written_by")
    data[key]["backend"] = "onnx:int8"  # never a candidate: int8 changes pictures
    (tmp_path / CACHE_FILE).write_text(json.dumps(data))
    calls.clear()
    decision = choose_backend(loaded, "demo", (32, 32), 1, torch.device("cpu"), make, tmp_path)
    assert calls and not decision.cached and decision.spec.precision != "int8"


def test_bench_recommendation_ignores_int8_and_variants():
    report = {
        "machine": {},
        "results": [
            {"backend": "torch", "precision": "fp32", "status": "ok", "variant": "", "speedup_vs_eager": 1.0},
            {"backend": "onnx", "precision": "int8", "status": "ok", "variant": "", "speedup_vs_eager": 2.1},
            {"backend": "torch", "precision": "fp32", "status": "ok", "variant": "cache-interval 2", "speedup_vs_eager": 1.8},
            {"backend": "compile", "precision": "fp32", "status": "ok", "variant": "", "speedup_vs_eager": 1.4},
            {"backend": "trt", "precision": "fp16", "status": "skipped", "variant": "", "speedup_vs_eager": None},
        ],
    }
    assert recommend_from_bench(report).startswith("compile:fp32: 1.4x eager")
