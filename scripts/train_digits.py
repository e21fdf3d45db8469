"""Train the bundled demo DiP on scikit-learn's digits (CPU, deterministic given --seed).

    python scripts/train_digits.py --out dip-digits.safetensors
    cp dip-digits.safetensors dip_export/demo/   # the package's folder is never an output of the tool itself

The release's flow-matching objective: x_t = t x + (1 - t) noise, velocity target x - noise,
t drawn logit-normally; 10% of labels dropped to the null class for guidance; EMA weights saved.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dip_export.checkpoint import save_checkpoint
from dip_export.config import DiPConfig
from dip_export.digits import NUM_CLASSES, digit_accuracy, load_digit_images
from dip_export.generate import generate, make_plan
from dip_export.model import DiP, count_parameters
from dip_export.sampling import SamplerSettings

DEMO_CONFIG = DiPConfig(
    hidden_size=128, num_heads=4, depth=4, patch_size=8, num_classes=NUM_CLASSES, detailer_width=16, image_size=32
)


def train(
    out: Annotated[Path, typer.Option(help="Where to write the weights (.safetensors).")] = Path("dip-digits.safetensors"),
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 2400,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 1e-3,
    ema_decay: Annotated[float, typer.Option(help="EMA decay of the saved weights.")] = 0.999,
    label_dropout: Annotated[float, typer.Option(help="Fraction of labels replaced by the null class.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of everything.")] = 0,
    eval_steps: Annotated[int, typer.Option(help="Sampler steps for the final evaluation.")] = 25,
) -> None:
    """Train the demo DiP, pick its recommended guidance by classifier accuracy, save it."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    images, labels = load_digit_images(DEMO_CONFIG.image_size)
    model = DiP(DEMO_CONFIG)
    ema = copy.deepcopy(model).requires_grad_(False)
    print(f"{count_parameters(model) / 1e6:.2f}M parameters, {len(images)} digits")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    warmup = max(1, steps // 20)
    started = time.perf_counter()
    with Progress(
        TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    ) as progress:  # fmt: skip
        task = progress.add_task("train", total=steps, loss=float("nan"))
        running = None
        for step in range(steps):
            idx = torch.randint(len(images), (batch_size,), generator=gen)
            x, y = images[idx], labels[idx].clone()
            y[torch.rand(batch_size, generator=gen) < label_dropout] = DEMO_CONFIG.null_class
            t = torch.sigmoid(torch.randn(batch_size, generator=gen))  # logit-normal
            noise = torch.randn(x.shape, generator=gen)
            tt = t[:, None, None, None]
            x_t = tt * x + (1 - tt) * noise
            loss = F.mse_loss(model(x_t, t, y), x - noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in opt.param_groups:
                group["lr"] = lr * max(scale, 0.02)
            opt.step()
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - decay)
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            progress.update(task, advance=1, loss=running)
    print(f"trained in {time.perf_counter() - started:.0f} s")
    ema.eval()
    best = evaluate(ema, eval_steps)
    save_checkpoint(out, ema, sampling={"steps": eval_steps, "cfg": best})
    print(f"wrote {out} (recommended: {eval_steps} steps, guidance {best})")


def evaluate(model: DiP, steps: int, num: int = 200) -> float:
    """Classifier accuracy of `num` samples at a few guidance scales; returns the best scale."""
    plan = make_plan(NUM_CLASSES, num_samples=num, seed=10_000)
    scores = {}
    for cfg in (1.0, 1.5, 2.0, 3.0):
        settings = SamplerSettings(steps=steps, cfg=cfg)
        imgs = generate(model, plan, settings, null_class=NUM_CLASSES, height=32, width=32, batch_size=100,
                        device=torch.device("cpu"))  # fmt: skip
        scores[cfg] = digit_accuracy(imgs, np.array(plan.classes))
        print(f"guidance {cfg}: digit accuracy {scores[cfg]:.3f}")
    return max(scores, key=lambda c: (scores[c], -c))


if __name__ == "__main__":
    typer.run(train)
