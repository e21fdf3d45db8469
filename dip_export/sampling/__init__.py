"""The flow-matching sampler, written once over the two-call denoiser interface.

Pure math: it knows nothing about export, engines or files. A *denoiser* is anything with
`backbone(x, t, y) -> tokens` and `detailer(x, tokens) -> v` (torch modules, ONNX Runtime
sessions, TensorRT engines).

- `rules`: the settings, the time grid and the guidance rule (the one place they live);
- `solvers`: each solver's per-step coefficients, and the update they feed;
- `tokens`: backbone-token reuse and forecasting between refreshes;
- `loop`: `sample`, which joins them.
"""

from dip_export.sampling.loop import sample, sample_counts
from dip_export.sampling.rules import (
    SOLVERS,
    Denoiser,
    SamplerSettings,
    guidance_combine,
    guidance_weight,
    initial_noise,
    runs_paired,
    step_weight,
    time_grid,
    to_uint8,
)
from dip_export.sampling.solvers import StepPlan, plan_steps, solver_update

__all__ = [
    "SOLVERS",
    "Denoiser",
    "SamplerSettings",
    "StepPlan",
    "guidance_combine",
    "guidance_weight",
    "initial_noise",
    "plan_steps",
    "runs_paired",
    "sample",
    "sample_counts",
    "solver_update",
    "step_weight",
    "time_grid",
    "to_uint8",
]
