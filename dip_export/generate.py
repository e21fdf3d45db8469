"""Turning sampler runs into image files: which seeds and classes, batching, the ADM .npz."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dip_export.errors import UsageError
from dip_export.sampling import Denoiser, SamplerSettings, initial_noise, sample, to_uint8


@dataclass(frozen=True)
class SamplePlan:
    """Sample i gets seed seeds[i] and class classes[i]."""

    seeds: list[int]
    classes: list[int]

    def __len__(self) -> int:
        return len(self.seeds)


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{what} is empty")
    return values


def make_plan(
    num_classes: int,
    classes: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> SamplePlan:
    """Explicit --classes/--seeds pairs, or --num-samples N from --seed S (seed S+i, class i % K)."""
    if classes is None and seeds is None:
        n = 8 if num_samples is None else num_samples
        if n < 1:
            raise UsageError(f"--num-samples must be >= 1, got {n}")
        plan = SamplePlan([seed + i for i in range(n)], [i % num_classes for i in range(n)])
    else:
        if num_samples is not None:
            raise UsageError("give either --classes/--seeds or --num-samples, not both")
        classes = list(classes) if classes is not None else [i % num_classes for i in range(len(seeds or []))]
        seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(classes))]
        if len(classes) == 1 and len(seeds) > 1:
            classes = classes * len(seeds)
        if len(classes) != len(seeds):
            raise UsageError(f"{len(classes)} classes but {len(seeds)} seeds; give one seed per class")
        plan = SamplePlan(list(seeds), list(classes))
    bad = [c for c in plan.classes if not 0 <= c < num_classes]
    if bad:
        raise UsageError(f"class {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    return plan


def parse_image_size(text: str | int) -> tuple[int, int]:
    """'256' -> (256, 256); '32x64' -> (32, 64)."""
    parts = str(text).lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise UsageError(f"image size must be N or HxW, got {text!r}") from None
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise UsageError(f"image size must be N or HxW with positive sides, got {text!r}")
    return (sizes[0], sizes[-1])


def check_image_size(height: int, width: int, patch_size: int) -> None:
    if height < patch_size or width < patch_size or height % patch_size or width % patch_size:
        raise UsageError(f"image size {height}x{width} is not a positive multiple of the patch size {patch_size}")


def generate(
    net: Denoiser,
    plan: SamplePlan,
    settings: SamplerSettings,
    *,
    null_class: int,
    height: int,
    width: int,
    batch_size: int,
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
    cuda_graphs: bool = False,
) -> np.ndarray:
    """All samples of the plan as uint8 (N, H, W, 3), batch by batch (whole-step CUDA graphs on request)."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    graphed = None
    if cuda_graphs and device.type == "cuda":
        from dip_export.runtime.cuda_graph import GraphedSampler

        graphed = GraphedSampler(net, device)
    out = []
    for start in range(0, len(plan), batch_size):
        seeds = plan.seeds[start : start + batch_size]
        noise = initial_noise(seeds, height, width).to(device)
        y = torch.tensor(plan.classes[start : start + batch_size], dtype=torch.int64, device=device)
        if graphed is not None:
            x = graphed(noise, y, null_class, settings, on_step)
        else:
            x = sample(net, noise, y, null_class, settings, on_step=on_step)
        out.append(to_uint8(x))
    return np.concatenate(out)
