"""Turning sampler runs into image files: which seeds and classes, batching, the ADM .npz."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dip_export.errors import UsageError
from dip_export.sampling import Denoiser, SamplerSettings, initial_noise, sample, to_uint8
from dip_export.settings import (
    MAX_BATCH,
    MAX_CFG,
    MAX_CLASS,
    MAX_IMAGE_SIDE,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    ImageSize,
    RunSettings,
    exact_int,
    finite_float,
    image_size,
    int_list,
    number_list,
    whole_text,
)


@dataclass(frozen=True)
class SamplePlan:
    """Sample i gets seed seeds[i] and class classes[i]."""

    seeds: list[int]
    classes: list[int]

    def __len__(self) -> int:
        return len(self.seeds)


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3]: ASCII digits only ('3_2', '0x10' and other scripts' digits are refused)."""
    return number_list(text, what, whole_text)


def make_plan(
    num_classes: int,
    classes: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> SamplePlan:
    """Explicit --classes/--seeds pairs, or --num-samples N from --seed S (seed S+i, class i % K)."""
    num_classes = exact_int(num_classes, "the model's class count", 1, MAX_CLASS + 1)  # classes 0..MAX_CLASS
    classes = None if classes is None else list(int_list(classes, "--classes", 0, MAX_CLASS))
    seeds = None if seeds is None else list(int_list(seeds, "--seeds", 0, MAX_SEED))
    seed = check_seed(seed, "--seed")  # every seed below is a sum of this one's Python int
    if classes is None and seeds is None:
        n = exact_int(8 if num_samples is None else num_samples, "--num-samples", 1, MAX_SAMPLES)
        check_seed(seed + n - 1, f"--seed + --num-samples - 1 ({seed} + {n - 1})")
        plan = SamplePlan([seed + i for i in range(n)], [i % num_classes for i in range(n)])
    else:
        if num_samples is not None:
            raise UsageError("give either --classes/--seeds or --num-samples, not both")
        classes = list(classes) if classes is not None else [i % num_classes for i in range(len(seeds or []))]
        seeds = list(seeds) if seeds is not None else [seed + i for i in range(len(classes))]
        run = RunSettings(classes=tuple(classes), seeds=tuple(seeds))  # exact ints in range, one seed per class
        plan = SamplePlan(list(run.seeds), list(run.classes))
    bad = [c for c in plan.classes if not 0 <= c < num_classes]
    if bad:
        raise UsageError(f"class {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    return plan


def check_seed(value: int, what: str) -> int:
    """Seeds are 0..2^63-1: every one of them is a distinct torch.Generator seed (negative ones would alias).
    Returns the seed as a Python int (a numpy one would wrap in the sums made from it)."""
    return exact_int(value, what, 0, MAX_SEED)


def check_run_limits(*, steps: int | None, cfg: float | None, batch_size: int, cache_interval: int | None) -> None:
    """Bounds on the sampler arguments, checked before anything is loaded or allocated."""
    if steps is not None:
        exact_int(steps, "--steps", 1, MAX_STEPS)
    if cfg is not None:
        finite_float(cfg, "--cfg", 0.0, MAX_CFG)
    exact_int(batch_size, "--batch-size", 1, MAX_BATCH)
    if cache_interval is not None:
        exact_int(cache_interval, "--cache-interval", 1, MAX_STEPS)


def parse_image_size(text: ImageSize) -> tuple[int, int]:
    """'256' or 256 -> (256, 256); '32x64' or (32, 64) -> (32, 64) (checked in settings.image_size)."""
    return image_size(text)


def check_image_size(height: int, width: int, patch_size: int) -> None:
    height, width = (exact_int(v, what, 1, MAX_IMAGE_SIDE) for v, what in ((height, "image height"), (width, "image width")))
    patch_size = exact_int(patch_size, "patch size", 1, MAX_IMAGE_SIDE)
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
