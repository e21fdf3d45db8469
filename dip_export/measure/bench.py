"""`dip-bench`: every backend on the same seeds, one table, JSON and a plot.

Protocol: warm-up runs first, then `repeats` timed runs of the whole sampler; the median and the
spread (min..max) are reported, plus per-stage times from timers around each engine call
(synchronised on CUDA). Quality: PSNR of the final uint8 images against eager PyTorch fp32 with the
same seeds, and for the digits demo model the classifier accuracy of the samples.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip_export.checkpoint import LoadedModel, is_demo
from dip_export.engines import make_engine
from dip_export.errors import DipError
from dip_export.generate import generate, make_plan
from dip_export.measure.harness import PeakMemory, StageTimer, Timing, psnr, repeat
from dip_export.model import flops_per_sample
from dip_export.runtime.backends import BackendSpec, unavailable_reason
from dip_export.sampling import Denoiser, SamplerSettings, initial_noise, sample_counts, to_uint8


@dataclass
class BenchRow:
    backend: str
    precision: str
    variant: str = ""  # sampler option that differs from the settings (e.g. cache-interval 2)
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    ms_per_step: float = float("nan")
    ms_per_step_min: float = float("nan")
    ms_per_step_max: float = float("nan")
    s_per_image: float = float("nan")
    images_per_s: float = float("nan")
    backbone_ms: float = float("nan")  # per step, summed over the step's backbone calls
    detailer_ms: float = float("nan")
    overhead_ms: float = float("nan")  # sampler math and copies between the engine calls
    backbone_calls: int = 0
    detailer_calls: int = 0
    gflop_per_step: float = float("nan")  # work actually done: rows through each network x its FLOPs
    speedup_vs_eager: float = float("nan")
    psnr_db_vs_eager: float = float("nan")  # null in JSON when the images are identical (infinite PSNR)
    images_identical: bool | None = None
    digit_accuracy: float | None = None
    peak_mem_mb: float = float("nan")
    fraction_of_peak: float = float("nan")
    setup_s: float = float("nan")  # export / compile / session creation
    cuda_graphs: bool = False  # every timed run replayed whole-step CUDA graphs
    cuda_graphs_note: str = ""  # why graphs were not used (off, not this backend, a capture that fell back)
    evaluations_per_image: int = 0  # network evaluations of the sampler (its --steps; heun 2N - 1)
    sampler: str = ""  # the solver of the row, and its token forecast
    token_forecast: str = ""
    images: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "images"}
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in data.items()}


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 2) -> float:
    """Measured dense matmul throughput in the layout of nn.Linear, the ceiling for 'fraction of peak'."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timing, _ = repeat(lambda: torch.nn.functional.linear(a, b), device, warmup=1, repeats=reps)
    return 2 * n**3 / timing.min / 1e9


@dataclass
class BenchSettings:
    steps: int = 50
    batch: int = 1
    cfg: float = 4.0
    height: int = 256
    width: int = 256
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    cache_interval: int = 1
    skip_uncond: bool = True
    cuda_graphs: bool = False  # whole-step CUDA graphs for the backends that can be captured
    sampler: str = "euler"  # solver of every row; steps = network evaluations (heun: 2N - 1)
    token_forecast: str = "off"  # tokens between backbone runs when cache_interval > 1


def run_backend(
    spec: BackendSpec,
    net: Denoiser,
    loaded: LoadedModel,
    bench: BenchSettings,
    sampler: SamplerSettings,
    device: torch.device,
    on_run: Callable[[], None] | None = None,
) -> BenchRow:
    """Warm up, then time `repeats` full sampler runs; returns the row without the comparisons.

    With CUDA graphs, one graphed sampler serves every run: captured during the warm-up, replayed in
    the timed runs, which are timed end to end (per-stage timers cannot see inside a replay).
    """
    timed = StageTimer(net, device)
    memory = PeakMemory(device)
    graph_note = graphs_unavailable(spec, bench, device)
    graphed = None
    if graph_note is None:
        from dip_export.runtime.cuda_graph import GraphedSampler

        graphed = GraphedSampler(timed, device)
    once = _sampler_run(timed, graphed, loaded, bench, sampler, device, on_run)
    for _ in range(bench.warmup):
        once()
    memory.reset()
    stages: list[dict[str, float]] = []
    fallbacks: set[str] = set()

    def after(_: np.ndarray) -> None:
        stages.append(dict(timed.times))
        if graphed is not None and graphed.fallback_reason is not None:
            fallbacks.add(graphed.fallback_reason)

    timing, images = repeat(once, device, warmup=0, repeats=bench.repeats, before=timed.reset, after=after)
    row = BenchRow(backend=spec.name, precision=spec.precision, images=images)
    row.cuda_graphs = graphed is not None and not fallbacks
    row.cuda_graphs_note = "; ".join(sorted(fallbacks)) if fallbacks else (graph_note or "")
    _fill_timing(row, timing, timed, stages, loaded, bench, sampler)
    row.peak_mem_mb = memory.read_mb()
    return row


def _sampler_run(
    timed: StageTimer, graphed: Any, loaded: LoadedModel, bench: BenchSettings, sampler: SamplerSettings,
    device: torch.device, on_run: Callable[[], None] | None,
) -> Callable[[], np.ndarray]:  # fmt: skip
    """One full sampler run over the bench's batch (graphed when a GraphedSampler is given)."""
    plan = make_plan(loaded.config.num_classes, num_samples=bench.batch, seed=bench.seed)

    def once() -> np.ndarray:
        if graphed is not None:
            noise = initial_noise(plan.seeds, bench.height, bench.width).to(device)
            y = torch.tensor(plan.classes, dtype=torch.int64, device=device)
            images = to_uint8(graphed(noise, y, loaded.config.null_class, sampler))
        else:
            images = generate(
                timed, plan, sampler, null_class=loaded.config.null_class, height=bench.height, width=bench.width,
                batch_size=bench.batch, device=device,
            )  # fmt: skip
        if on_run is not None:
            on_run()
        return images

    return once


def _fill_timing(
    row: BenchRow, timing: Timing, timed: StageTimer, stages: list[dict[str, float]], loaded: LoadedModel,
    bench: BenchSettings, sampler: SamplerSettings,
) -> None:  # fmt: skip
    """The row's times, rates, calls and work from the timed runs."""
    per_step = 1000 / sampler.steps
    row.ms_per_step = timing.median * per_step
    row.ms_per_step_min, row.ms_per_step_max = timing.min * per_step, timing.max * per_step
    row.s_per_image = timing.median / bench.batch
    row.images_per_s = bench.batch / timing.median
    flops = flops_per_sample(loaded.config, bench.height, bench.width)
    counts = sample_counts(sampler)
    if row.cuda_graphs:  # the network work of a graphed run is that of the plain run it replays
        rows = bench.batch * (2 * counts["paired_evals"] + counts["single_evals"])
        evals = counts["paired_evals"] + counts["single_evals"]
        row.detailer_calls, row.backbone_calls = evals, counts.get("backbone_calls", evals)
        work = {"detailer": rows, "backbone": rows * row.backbone_calls / evals}  # token reuse skips backbone rows
        row.gflop_per_step = sum(work[k] * flops[k] for k in flops) / sampler.steps / 1e9
    else:
        row.backbone_ms = statistics.median(s["backbone"] for s in stages) * per_step
        row.detailer_ms = statistics.median(s["detailer"] for s in stages) * per_step
        row.overhead_ms = row.ms_per_step - row.backbone_ms - row.detailer_ms
        row.backbone_calls, row.detailer_calls = timed.calls["backbone"], timed.calls["detailer"]
        row.gflop_per_step = sum(timed.rows[k] * flops[k] for k in flops) / sampler.steps / 1e9
    row.evaluations_per_image = counts["paired_evals"] + counts["single_evals"]
    row.sampler, row.token_forecast = sampler.method, sampler.token_forecast


def graphs_unavailable(spec: BackendSpec, bench: BenchSettings, device: torch.device) -> str | None:
    """Why a row runs without whole-step CUDA graphs (None: it uses them); reported in the row, never silent."""
    if not bench.cuda_graphs:
        return "off (--no-cuda-graphs)"
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not spec.backend.graphable:
        return f"the {spec.name} backend does not run on torch's CUDA stream"
    return None


def add_peak_fraction(row: BenchRow, peak_gflops: float) -> None:
    row.fraction_of_peak = row.gflop_per_step / (row.ms_per_step / 1000) / peak_gflops


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def compare_to_eager(rows: list[BenchRow], reference: BenchRow, digits: bool, classes: list[int]) -> None:
    for row in rows:
        if row.status != "ok" or row.images is None:
            continue
        row.speedup_vs_eager = reference.ms_per_step / row.ms_per_step
        assert reference.images is not None
        row.psnr_db_vs_eager = psnr(row.images, reference.images)
        row.images_identical = bool(np.array_equal(row.images, reference.images))
        if digits:
            from dip_export.digits import digit_accuracy

            row.digit_accuracy = digit_accuracy(row.images, classes)


def variant_settings(base: SamplerSettings) -> list[tuple[str, SamplerSettings]]:
    """The sampler savings measured on the eager fp32 engine, each against its own exact baseline."""
    return [
        ("cache-interval 2", replace(base, cache_interval=2)),
        ("cache-interval 3", replace(base, cache_interval=3)),
        ("cache-interval 2, linear forecast", replace(base, cache_interval=2, token_forecast="linear")),
        ("cache-interval 3, linear forecast", replace(base, cache_interval=3, token_forecast="linear")),
        ("cache-interval 3, quadratic forecast", replace(base, cache_interval=3, token_forecast="quadratic")),
        ("guidance 1, both halves", replace(base, cfg=1.0, skip_uncond=False)),
        ("guidance 1, uncond skipped", replace(base, cfg=1.0, skip_uncond=True)),
    ]


def skipped(spec: BackendSpec, reason: str) -> BenchRow:
    return BenchRow(backend=spec.name, precision=spec.precision, status="skipped", reason=reason)


def failure(spec: BackendSpec, err: Exception) -> BenchRow:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    status = "skipped" if isinstance(err, DipError) else "failed"
    return BenchRow(backend=spec.name, precision=spec.precision, status=status, reason=message[:200])


def run_bench(
    loaded: LoadedModel,
    specs: list[BackendSpec],
    bench: BenchSettings,
    device: torch.device,
    *,
    variants: bool,
    console: Any,
    progress: Any,
) -> dict[str, Any]:
    """Every backend (and optionally the sampler variants) on the same seeds; the report as a dict."""
    sampler = SamplerSettings(
        steps=bench.steps, cfg=bench.cfg, cache_interval=bench.cache_interval, skip_uncond=bench.skip_uncond,
        method=bench.sampler, token_forecast=bench.token_forecast,
    )  # fmt: skip
    eager = BackendSpec("torch", "fp32")
    if eager not in specs:
        specs = [eager, *specs]  # the reference every row is compared with
    peaks = {p: gemm_peak_gflops(d, device) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    jobs: list[tuple[BackendSpec, str, SamplerSettings]] = [(s, "", sampler) for s in specs]
    if variants:
        jobs += [(eager, name, s) for name, s in variant_settings(sampler)]
    rows: list[BenchRow] = []
    engines: dict[BackendSpec, Denoiser] = {}  # one at a time (plus eager for the variants), so memory is per backend
    with progress:
        task = progress.add_task("benchmark", total=len(jobs) * (bench.warmup + bench.repeats))
        for spec, variant, settings in jobs:
            progress.update(task, description=f"{spec}{' ' + variant if variant else ''}")
            row = _run_job(spec, settings, engines, loaded, bench, device, console, lambda n=1: progress.advance(task, n))
            row.variant = variant
            if row.status == "ok":
                add_peak_fraction(row, peaks["bf16" if spec.precision in ("bf16", "fp16") else "fp32"])
            rows.append(row)
    _compare_rows(rows, loaded, bench)
    return {
        "settings": {
            "model": loaded.name, "source": loaded.source, "steps": bench.steps, "batch": bench.batch,
            "cfg": bench.cfg, "image_size": [bench.height, bench.width], "warmup": bench.warmup,
            "repeats": bench.repeats, "seed": bench.seed, "cache_interval": bench.cache_interval,
            "skip_uncond": bench.skip_uncond, "cuda_graphs": bench.cuda_graphs and device.type == "cuda",
            "evals_per_image": sample_counts(sampler), "sampler": bench.sampler, "token_forecast": bench.token_forecast,
        },
        "machine": {**machine_info(device), "gemm_peak_gflops": peaks},
        "results": [r.to_json() for r in rows],
    }  # fmt: skip


def _run_job(
    spec: BackendSpec, settings: SamplerSettings, engines: dict[BackendSpec, Denoiser], loaded: LoadedModel,
    bench: BenchSettings, device: torch.device, console: Any, advance: Callable[..., None],
) -> BenchRow:  # fmt: skip
    """One row: skipped with the reason, failed with the error, or timed (its engine made or reused)."""
    runs = bench.warmup + bench.repeats
    reason = unavailable_reason(spec, device)
    if reason is not None:
        advance(runs)
        return skipped(spec, reason)
    eager = BackendSpec("torch", "fp32")
    try:
        started = time.perf_counter()
        if spec not in engines:
            for other in [k for k in engines if k != eager]:
                del engines[other]
            engines[spec] = make_engine(spec, loaded, (bench.height, bench.width), device, console, batch=bench.batch)
        setup = time.perf_counter() - started
        row = run_backend(spec, engines[spec], loaded, bench, settings, device, advance)
        row.setup_s = setup
    except (DipError, RuntimeError, ImportError, ValueError) as err:
        row = failure(spec, err)
        advance(runs)
    return row


def _compare_rows(rows: list[BenchRow], loaded: LoadedModel, bench: BenchSettings) -> None:
    """Speed-up and PSNR of every row against eager fp32 (guidance-1 variants against their own baseline)."""
    reference = next(r for r in rows if r.backend == "torch" and r.precision == "fp32" and not r.variant)
    if reference.status != "ok":
        raise DipError(f"the eager fp32 reference failed: {reference.reason}")
    plan = make_plan(loaded.config.num_classes, num_samples=bench.batch, seed=bench.seed)
    digits = is_demo(loaded)  # the digit classifier only reads the demo model's images
    compare_to_eager([r for r in rows if not r.variant.startswith("guidance 1")], reference, digits, plan.classes)
    both = [r for r in rows if r.variant == "guidance 1, both halves"]
    if both and both[0].status == "ok":  # guidance-1 rows compare with their own full-work baseline
        compare_to_eager([r for r in rows if r.variant.startswith("guidance 1")], both[0], digits, plan.classes)


def render_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    s = report["settings"]
    table = Table(
        title=f"{s['model']} {s['image_size'][0]}x{s['image_size'][1]}, batch {s['batch']}, {s['steps']} steps, "
        f"guidance {s['cfg']}  (median of {s['repeats']})"
    )
    cols = ["backend", "variant", "ms/step", "spread", "backbone", "detailer", "other", "img/s", "speedup", "PSNR dB"]
    cols += ["digits acc", "peak MB", "% peak", "note"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("backend", "variant", "note") else "right")

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in report["results"]:
        name = f"{r['backend']}:{r['precision']}"
        if r["status"] != "ok":
            table.add_row(name, r["variant"], *["-"] * 11, f"[yellow]{r['status']}: {r['reason']}[/]")
            continue
        spread = f"{r['ms_per_step_min']:.0f}-{r['ms_per_step_max']:.0f}"
        psnr_text = "identical" if r["images_identical"] else f(r["psnr_db_vs_eager"], ".1f")
        table.add_row(
            name, r["variant"], f(r["ms_per_step"], ".1f"), spread, f(r["backbone_ms"], ".1f"), f(r["detailer_ms"], ".1f"),
            f(r["overhead_ms"], ".1f"), f(r["images_per_s"], ".3g"), f(r["speedup_vs_eager"], ".2f") + "x", psnr_text,
            f(r["digit_accuracy"], ".2f"), f(r["peak_mem_mb"], ".0f"), f(100 * r["fraction_of_peak"], ".0f"),
            ("graphs" if r["cuda_graphs"] else f"no graphs: {r['cuda_graphs_note']}") if s["cuda_graphs"] else "",
        )  # fmt: skip
    return table


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Latency bars and a speed / quality scatter, side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from dip_export.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", "pip install matplotlib (needed for --plot)") from None
    from dip_export.io import atomic_path

    rows = [r for r in report["results"] if r["status"] == "ok"]
    names = [f"{r['backend']}:{r['precision']}" + (f"\n{r['variant']}" if r["variant"] else "") for r in rows]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(13, 4.8))
    back = [r["backbone_ms"] for r in rows]
    det = [r["detailer_ms"] for r in rows]
    other = [max(0.0, r["overhead_ms"]) for r in rows]
    y = np.arange(len(rows))
    bars.barh(y, back, label="backbone")
    bars.barh(y, det, left=back, label="detailer")
    bars.barh(y, other, left=np.add(back, det), label="sampler")
    bars.set_yticks(y, names, fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("ms per step (median)")
    bars.legend()
    finite = [r["psnr_db_vs_eager"] for r in rows if not r["images_identical"] and r["psnr_db_vs_eager"] is not None]
    top = max([60.0, *finite]) + 10  # where identical images (infinite PSNR) are drawn
    for r, name in zip(rows, names, strict=True):
        q = top if r["images_identical"] else r["psnr_db_vs_eager"]
        scatter.scatter(r["speedup_vs_eager"], q)
        scatter.annotate(name.replace("\n", " "), (r["speedup_vs_eager"], q), fontsize=7)
    scatter.set_xlabel("speed-up vs eager fp32")
    scatter.set_ylabel(f"PSNR vs eager fp32, dB (identical images at {top:.0f})")
    s = report["settings"]
    fig.suptitle(f"{s['model']} {s['image_size'][0]}px, batch {s['batch']}, {s['steps']} steps, guidance {s['cfg']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
