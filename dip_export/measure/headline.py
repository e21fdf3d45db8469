"""`dip-bench --headline`: the speed-up a user gets end to end, the release's recipe against the fast one.

The release recipe is what the authors ship: eager PyTorch (bf16 autocast where the hardware has bf16
GEMMs, decided as `--backend auto` decides it: AMX or AVX-512 BF16 on a CPU; fp32 otherwise), Euler
with 100 steps on the release's uniform grid, both guidance halves at every step. The fast recipe is
what this toolkit does with the same model: the backend `--backend auto` picks, the model's
recommended solver and steps with its stored time grid where one matches, and the solver's measured
token forecast where the model refreshes the backbone less often than every evaluation. Both run on
the same seeds, classes and guidance, timed with the bench's harness (warm-up, repeats until the
spread is below the bound, median), and both are judged against the yardstick's converged reference
(PSNR of the uint8 images). When the fast recipe is further from the reference than the release's,
its speed-up is flagged as not comparable: it was bought with accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from dip_export.checkpoint import LoadedModel, is_demo
from dip_export.errors import DipError
from dip_export.generate import make_plan
from dip_export.measure.autobackend import hardware_label, native_bf16
from dip_export.measure.bench import (
    DIGIT_MIN_IMAGES,
    BenchRow,
    BenchSettings,
    Job,
    Stage,
    Variant,
    compare_to,
    measure_jobs,
    noise_summary,
    settings_json,
)
from dip_export.measure.harness import psnr
from dip_export.measure.yardstick import ReferenceImages, Yardstick, reference_images, release_settings
from dip_export.runtime.backends import BackendSpec
from dip_export.sampling import SamplerSettings, sample_counts
from dip_export.sampling.tokens import forecast_mode

KIND = "headline"  # the rows' variant_kind
RELEASE, FAST = "release recipe", "fast recipe"


@dataclass(frozen=True)
class Recipe:
    """A way to sample a model: the backend and the sampler settings, and why this backend."""

    name: str
    spec: BackendSpec
    sampler: SamplerSettings
    why: str

    def job(self) -> Job:
        """The bench row that runs it: the backend, with every sampler setting of the recipe."""
        changes = tuple((f.name, getattr(self.sampler, f.name)) for f in fields(SamplerSettings))
        return Job(self.spec, Variant(self.name, KIND, changes))

    def evaluations(self) -> int:
        return evaluations_per_image(self.sampler)

    def to_json(self) -> dict[str, Any]:
        s = self.sampler
        return {
            "backend": str(self.spec), "why": self.why, "sampler": s.method, "steps": s.steps,
            "evaluations_per_image": self.evaluations(), "grid": None if s.grid is None else list(s.grid),
            "cache_interval": s.cache_interval, "token_forecast": forecast_mode(s), "skip_uncond": s.skip_uncond,
            "cfg": s.cfg, "shift": s.shift, "interval": list(s.interval),
        }  # fmt: skip


def evaluations_per_image(settings: SamplerSettings) -> int:
    counts = sample_counts(settings)
    return counts["paired_evals"] + counts["single_evals"]


def release_recipe(base: SamplerSettings, device: torch.device) -> Recipe:
    """The authors' recipe at the guidance, interval and shift of `base` (yardstick.release_settings)."""
    bf16 = native_bf16(device)
    why = "eager PyTorch, " + ("bf16 autocast: bf16 GEMMs in hardware" if bf16 else "fp32: no bf16 GEMMs in hardware")
    return Recipe(RELEASE, BackendSpec("torch", "bf16" if bf16 else "fp32"), release_settings(base),
                  f"{why} {hardware_label(device)}")  # fmt: skip


def fast_sampler(recommended: SamplerSettings, stored: Mapping[str, Any]) -> SamplerSettings:
    """The model's recommended settings (a stored grid already applied); where they refresh the backbone
    less often than every evaluation and the model names no forecast, the solver's measured one ("auto")."""
    if recommended.cache_interval > 1 and "token_forecast" not in stored:
        return replace(recommended, token_forecast="auto")
    return recommended


def run_headline(
    loaded: LoadedModel, recipes: tuple[Recipe, Recipe], bench: BenchSettings, device: torch.device, *, console: Any,
    progress: Any,
) -> dict[str, Any]:  # fmt: skip
    """The converged reference, then both recipes timed on the same images; the bench report with the headline."""
    release, fast = recipes
    plan = make_plan(loaded.config.num_classes, num_samples=bench.batch, seed=bench.seed)
    found: list[ReferenceImages] = []
    stage = Stage("converged reference", _reference_stage(loaded, bench, fast.sampler, found, console))
    rows, machine, threads = measure_jobs([r.job() for r in recipes], loaded, bench, device, console, progress, stage)
    for row, recipe in zip(rows, recipes, strict=True):
        if row.status != "ok":
            raise DipError(f"the {recipe.name} ({recipe.spec}) did not run: {row.reason}")
    digits = is_demo(loaded) and bench.batch >= DIGIT_MIN_IMAGES  # the classifier reads only the demo's digits
    compare_to(rows, rows[0], digits, plan.classes, per_image=True)  # end to end: time per image
    for row in rows:
        assert row.images is not None
        row.psnr_db_vs_reference = psnr(row.images, found[0].images)
    settings = {
        **settings_json(loaded, bench, device, threads), "mode": KIND, "images": bench.batch,
        "baseline": f"{RELEASE}: speedup_vs_eager and psnr_db_vs_eager of both rows are against it, per image",
        "reference": found[0].label, "recipes": {RELEASE: release.to_json(), FAST: fast.to_json()},
    }  # fmt: skip
    return {"settings": settings, "machine": machine, "noise": noise_summary(rows),
            "results": [r.to_json() for r in rows], "headline": summary(rows[0], rows[1])}  # fmt: skip


def _reference_stage(
    loaded: LoadedModel, bench: BenchSettings, base: SamplerSettings, found: list[ReferenceImages], console: Any
) -> Callable[[Callable[[str], None]], None]:
    """The yardstick's converged reference for the bench's images (eager fp32 on the CPU; cached), into `found`."""

    def run(note: Callable[[str], None]) -> None:
        plan = make_plan(loaded.config.num_classes, num_samples=bench.batch, seed=bench.seed)
        y = Yardstick(bench.batch, bench.seed, base.cfg, base.shift, bench.batch, bench.height, bench.width)
        steps = [0]

        def on_step(_: int) -> None:
            steps[0] += 1
            note(f"{steps[0]} solver steps")

        found.append(reference_images(loaded, plan, y, base, on_step, device=torch.device("cpu")))
        note(found[0].label)

    return run


def summary(release: BenchRow, fast: BenchRow) -> dict[str, Any]:
    """The headline: the fast recipe's speed-up per image and both PSNRs; flagged when the fast one is less accurate."""
    loss = bool(fast.psnr_db_vs_reference < release.psnr_db_vs_reference)
    warning = None
    if loss:
        warning = (
            f"the {FAST} is less accurate than the {RELEASE} ({fast.psnr_db_vs_reference:.2f} dB against "
            f"{release.psnr_db_vs_reference:.2f} dB from the converged reference): its {fast.speedup_vs_eager:.2f}x "
            "is not a comparable speed-up"
        )
    return {
        "speedup": _number(fast.speedup_vs_eager), "speedup_spread": _number(fast.speedup_spread),
        "release_psnr_db": _number(release.psnr_db_vs_reference), "fast_psnr_db": _number(fast.psnr_db_vs_reference),
        "accuracy_loss": loss, "comparable": not loss, "warning": warning,
    }  # fmt: skip


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # JSON has no infinity: identical images are null


def headline_line(report: dict[str, Any]) -> tuple[str, str | None]:
    """The closing line and its style: the speed-up with both PSNRs, or the flag when it is not comparable."""
    h = report["headline"]
    if h["warning"]:
        return f"not comparable: {h['warning']}", "yellow"
    return (
        f"headline: the {FAST} is {h['speedup']:.2f}x +-{h['speedup_spread']:.2f} faster per image than the {RELEASE} "
        f"({_db(h['fast_psnr_db'])} against {_db(h['release_psnr_db'])} from the converged reference)",
        None,
    )


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.2f} dB"


def render_headline(report: dict[str, Any]) -> Any:
    """Both recipes as one rich table: what each ran, its time per image with the spread, speed-up and PSNRs."""
    from rich.table import Table

    s = report["settings"]
    table = Table(
        title=f"{s['model']} {s['image_size'][0]}x{s['image_size'][1]}, {s['images']} images per run, guidance {s['cfg']}, "
        f"{s['threads']['torch_intra_op']} CPU threads  (median of >= {s['repeats']} runs)",
        caption=f"PSNR against the converged reference: {s['reference']}; speed-up: time per image against the "
        f"{RELEASE}, +- both rows' spreads in quadrature",
    )
    cols = ["recipe", "backend", "sampler", "evals", "grid", "tokens", "s/image", "spread", "runs", "speedup", "PSNR dB"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("recipe", "backend", "sampler", "grid", "tokens") else "right")
    comparable = report["headline"]["comparable"]
    for r in report["results"]:
        tokens = "every step" if r["cache_interval"] == 1 else f"every {r['cache_interval']}, {r['token_forecast']}"
        speedup = f"{r['speedup_vs_eager']:.2f}x +-{r['speedup_spread'] or 0:.2f}"
        if r["variant"] == FAST and not comparable:
            speedup += " (not comparable)"
        table.add_row(
            r["variant"], f"{r['backend']}:{r['precision']}", f"{r['sampler']} {r['steps']}",
            str(r["evaluations_per_image"]), "fitted" if r["grid"] else "default", tokens, f"{r['s_per_image']:.4g}",
            f"+-{100 * (r['spread'] or 0):.0f}%", str(r["repeats"]), speedup, _db(r["psnr_db_vs_reference"]).removesuffix(" dB"),
        )  # fmt: skip
    return table
