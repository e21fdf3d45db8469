"""Guidance no step would use is refused, not run as a silent no-op: the sampler settings' validator refuses a
guidance weight other than 1 whose interval holds no step time of the run's grid (every solver, shift, custom
grid), for the CLI, the API and stored defaults alike. The model's own recommended guidance, where the steps asked
for leave no step inside its interval, is dropped (the same images) and said on dip-sample's first line."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.checkpoint import DEMO_CHECKPOINT
from dip_export.errors import CheckpointError, UsageError
from dip_export.sampling import SamplerSettings, sample
from dip_export.sampling.rules import SOLVERS, GuidanceNeverAppliesError
from tests.test_hostile import one_line, run


class Recorder:
    """A denoiser that records whether any evaluation ran both halves (the guided field)."""

    def __init__(self) -> None:
        self.paired = 0

    def backbone(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.paired += int(x.shape[0] == 2)  # one image: two rows only when both halves run
        return x.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)

    def detailer(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return -x + tokens


def guided_steps_of_the_sampler(unguided: SamplerSettings, cfg: float) -> int:
    """How many evaluations the real sampler guides for these settings with weight `cfg` (made without the
    validator: the settings are copied and their cfg set directly)."""
    forced = copy.copy(unguided)
    object.__setattr__(forced, "cfg", cfg)
    net = Recorder()
    sample(net, torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.int64), 0, forced)
    return net.paired


BOUNDS = st.floats(-1.0, 2.0, allow_nan=False).map(lambda v: round(v, 3))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    method=st.sampled_from(SOLVERS), steps=st.integers(1, 12), shift=st.sampled_from([0.25, 1.0, 3.0, 100.0]),
    bounds=st.tuples(BOUNDS, BOUNDS).filter(lambda b: b[0] < b[1]), cfg=st.sampled_from([0.0, 1.5, 4.0]),
    custom=st.booleans(),
)  # fmt: skip
def test_guidance_is_refused_exactly_when_the_sampler_would_guide_no_step(
    method: str, steps: int, shift: float, bounds: tuple[float, float], cfg: float, custom: bool
) -> None:
    grid = tuple(float(v) for v in np.linspace(0, 1, steps + 1) ** 2) if custom and method != "heun" else None
    unguided = SamplerSettings(steps=steps, method=method, shift=shift, interval=bounds, grid=grid)  # cfg 1: valid
    guided = guided_steps_of_the_sampler(unguided, cfg)
    if guided == 0:
        with pytest.raises(GuidanceNeverAppliesError, match=f"guidance {cfg:g} would never apply") as caught:
            SamplerSettings(steps=steps, method=method, shift=shift, interval=bounds, grid=grid, cfg=cfg)
        assert isinstance(caught.value, UsageError) and "\n" not in str(caught.value)
    else:
        assert SamplerSettings(steps=steps, method=method, shift=shift, interval=bounds, grid=grid, cfg=cfg).cfg == cfg


@pytest.mark.parametrize(("interval", "sampler"), [("-1,0", "unipc"), ("1,2", "heun"), ("0.8,0.9", "euler")])
def test_dip_sample_refuses_guidance_outside_the_runs_times_before_sampling(
    tmp_path: Path, no_sampling: None, interval: str, sampler: str
) -> None:
    """Euler's 4 steps start at 0, .25, .5, .75 (none in 0.8..0.9; a multistep solver puts a step on the bound)."""
    out = tmp_path / "g.npz"
    code, err = run(cli.sample_main, "--classes", "1", "--seeds", "0", "--steps", "4", "--cfg", "4", "--sampler", sampler,
                    "--guidance-interval", interval, "--out", out)  # fmt: skip
    one_line(code, err, 2, "guidance 4 would never apply", f"interval {interval}", "--cfg 1")
    assert not out.exists()


def test_dip_sample_with_the_models_guidance_and_too_few_steps_runs_unguided_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    code, err = run(cli.sample_main, "--classes", "1", "--seeds", "0", "--steps", "1", "--out", a)
    assert code == 0, err
    code, err = run(cli.sample_main, "--classes", "1", "--seeds", "0", "--steps", "1", "--cfg", "1", "--out", b)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(a)["arr_0"], np.load(b)["arr_0"])
    code, err = run(cli.sample_main, "--classes", "1", "--seeds", "0", "--steps", "1", "--cfg", "1.5", "--out", b)
    one_line(code, err, 2, "guidance 1.5 would never apply", "1 step (t = 0 only)")


def test_the_sampler_line_says_the_models_guidance_applies_at_no_step() -> None:
    from dip_export.app import _sampler_line

    line = _sampler_line(SamplerSettings(steps=1, method="unipc"), {"steps": 1}, {"cfg": 1.5, "sampler": "unipc"})
    assert line.startswith("sampler: unipc, 1 steps, guidance 1 (the model's guidance 1.5 would apply at no step")
    assert "--cfg" not in line and "--sampler: the model's recommendation" in line


def test_the_api_refuses_the_callers_guidance_and_drops_only_the_models() -> None:
    pipe = DiPPipeline.load(batch_size=1)
    call = {"classes": [1], "seeds": [0]}
    refused = [{"steps": 4, "cfg": 4.0, "guidance_interval": (-1.0, 0.0)}, {"steps": 1, "cfg": 1.5},
               {"steps": 4, "cfg": 4.0, "guidance_interval": (1.0, 2.0)},
               {"steps": 3, "sampler": "euler", "guidance_interval": (0.7, 1.0)}]  # fmt: skip
    for kw in refused:
        with pytest.raises(GuidanceNeverAppliesError):
            pipe(**call, **kw)
    with pytest.raises(GuidanceNeverAppliesError):
        pipe(**call, settings=SamplerSettings(steps=1, cfg=1.0), cfg=2.0)
    assert pipe.sampler_settings(steps=1).cfg == 1.0 and pipe.recommended_settings().cfg == 1.5
    np.testing.assert_array_equal(pipe(**call, steps=1), pipe(**call, steps=1, cfg=1.0))


def _with_sampling(tmp_path: Path, stored: dict[str, object]) -> Path:
    data = DEMO_CHECKPOINT.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["dip_sampling"] = json.dumps(stored)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return path


@pytest.mark.parametrize(
    "stored", [{"cfg": 4.0, "guidance_interval": [-1.0, 0.0]}, {"cfg": 4.0, "steps": 4, "guidance_interval": [0.8, 0.9]},
               {"cfg": 2.0, "steps": 1}],
)  # fmt: skip
def test_stored_defaults_whose_guidance_never_applies_are_refused_at_load(tmp_path: Path, stored: dict[str, object]) -> None:
    path = _with_sampling(tmp_path, stored)
    with pytest.raises(CheckpointError, match="stored guidance would never apply") as caught:
        DiPPipeline.load(path)
    said = str(caught.value).removeprefix(str(path))  # the file's name (its temporary folder) may hold any digits
    assert "0.8" not in said and "-1" not in said  # stored values are not echoed
    code, err = run(cli.sample_main, path, "--classes", "1", "--seeds", "0", "--out", tmp_path / "s.npz")
    one_line(code, err, 1, "m.safetensors", "stored guidance would never apply")
    fine = _with_sampling(tmp_path, {**stored, "cfg": 1.0})  # the same interval without guidance is harmless
    assert DiPPipeline.load(fine).recommended_settings().cfg == 1.0
