"""`dip-bench`: every backend on the same seeds, one table, JSON and a plot.

Protocol: one CPU thread count for every row (torch intra-op, ONNX Runtime intra-op, torch.compile's
kernels), recorded with the CPU flags; warm-up runs first, then timed runs of the whole sampler,
end to end, until the spread (relative interquartile range) is below a bound or a cap is reached;
the median and the spread are reported, and every speed-up with its own spread. Per-stage times
come from one more run with timers around each engine call (synchronised on CUDA). Quality: PSNR of
the final uint8 images against eager PyTorch fp32 with the same seeds, and for the digits demo model
the classifier accuracy of the samples when the batch is large enough to mean something.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip_export.checkpoint import LoadedModel, is_demo
from dip_export.engines import make_engine
from dip_export.errors import DipError, UsageError
from dip_export.generate import generate, make_plan
from dip_export.measure.harness import (
    PeakMemory,
    RepeatPolicy,
    StageTimer,
    Timing,
    cpu_flags,
    cpu_threads,
    physical_cores,
    psnr,
    repeat,
    timed_call,
)
from dip_export.messages import plain_line, say, shortened
from dip_export.model import flops_per_sample
from dip_export.runtime.backends import BackendSpec, unavailable_reason
from dip_export.sampling import Denoiser, SamplerSettings, initial_noise, sample_counts, to_uint8
from dip_export.sampling.tokens import forecast_mode
from dip_export.settings import MAX_BATCH, MAX_REPEATS, MAX_SEED, exact_bool, exact_int, image_side

NOISE_WARNING = 0.10  # a speed-up whose relative spread is above this is flagged: "noisy machine"
DIGIT_MIN_IMAGES = 50  # the digit classifier's accuracy on fewer images says little (one image: 0 or 1)
MAX_THREADS = 1024


@dataclass
class BenchRow:
    backend: str
    precision: str
    variant: str = ""  # sampler option that differs from the settings (e.g. cache-interval 2)
    variant_kind: str = ""  # "" (a backend row), "tokens" or "guidance": which baseline it is compared with
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    ms_per_step: float = float("nan")  # median of the timed runs
    ms_per_step_min: float = float("nan")
    ms_per_step_max: float = float("nan")
    ms_per_step_q1: float = float("nan")  # quartiles of the timed runs: the spread bars of the plot
    ms_per_step_q3: float = float("nan")
    spread: float = float("nan")  # relative interquartile range of the timed runs
    repeats: int = 0  # timed runs made (more while the spread was above the bound, up to the cap)
    threads: int = 0  # torch intra-op threads of the runs (and the compile); ONNX Runtime's below
    ort_threads: int | None = None  # intra-op threads of each ONNX Runtime session (onnx rows)
    s_per_image: float = float("nan")
    images_per_s: float = float("nan")
    backbone_ms: float = float("nan")  # per step, summed over the step's backbone calls (profiling run)
    detailer_ms: float = float("nan")
    overhead_ms: float = float("nan")  # sampler math and copies between the engine calls
    backbone_calls: int = 0
    detailer_calls: int = 0
    gflop_per_step: float = float("nan")  # work actually done: rows through each network x its FLOPs
    speedup_vs_eager: float = float("nan")
    speedup_spread: float = float("nan")  # +- on the speed-up: the two medians' relative spreads in quadrature
    psnr_db_vs_eager: float = float("nan")  # null in JSON when the images are identical (infinite PSNR)
    images_identical: bool | None = None
    digit_accuracy: float | None = None
    peak_mem_mb: float = float("nan")
    fraction_of_peak: float = float("nan")
    setup_s: float = float("nan")  # export / compile / session creation
    cuda_graphs: bool = False  # every timed run replayed whole-step CUDA graphs
    cuda_graphs_note: str = ""  # why graphs were not used (off, not this backend, a capture that fell back)
    evaluations_per_image: int = 0  # network evaluations of the sampler (its --steps; heun 2N - 1)
    sampler: str = ""  # the solver the row ran, and the token forecast it used ("auto" resolved)
    token_forecast: str = ""
    steps: int = 0  # the sampler's steps, its backbone refresh interval and its time grid (None: the default)
    cache_interval: int = 0
    grid: list[float] | None = None
    psnr_db_vs_reference: float = float("nan")  # --headline: final images against the converged reference
    images: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "images"}
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in data.items()}

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.precision}" + (f" {self.variant}" if self.variant else "")


@dataclass(frozen=True)
class Variant:
    """A sampler saving timed on the eager fp32 engine, compared with the baseline of its kind.

    kind "tokens": against the plain eager row (same guidance, every backbone run); kind "guidance":
    against the `baseline` row of that kind (guidance 1 with both halves run).
    """

    name: str
    kind: str
    changes: tuple[tuple[str, Any], ...]  # SamplerSettings fields it sets
    baseline: bool = False

    def settings(self, base: SamplerSettings) -> SamplerSettings:
        return replace(base, **dict(self.changes))


VARIANTS = (
    Variant("cache-interval 2", "tokens", (("cache_interval", 2),)),
    Variant("cache-interval 3", "tokens", (("cache_interval", 3),)),
    Variant("cache-interval 2, linear forecast", "tokens", (("cache_interval", 2), ("token_forecast", "linear"))),
    Variant("cache-interval 3, linear forecast", "tokens", (("cache_interval", 3), ("token_forecast", "linear"))),
    Variant("cache-interval 3, quadratic forecast", "tokens", (("cache_interval", 3), ("token_forecast", "quadratic"))),
    Variant("guidance 1, both halves", "guidance", (("cfg", 1.0), ("skip_uncond", False)), baseline=True),
    Variant("guidance 1, uncond skipped", "guidance", (("cfg", 1.0), ("skip_uncond", True))),
)


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 2) -> float:
    """Measured dense matmul throughput in the layout of nn.Linear, the ceiling for 'fraction of peak'."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timing, _ = repeat(lambda: torch.nn.functional.linear(a, b), device, warmup=1, repeats=reps)
    return 2 * n**3 / timing.min / 1e9


@dataclass(frozen=True)
class BenchSettings:
    """What every row runs (the sampler settings, images per run, size) and how it is timed."""

    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    batch: int = 1  # images per timed sampler run
    height: int = 256
    width: int = 256
    warmup: int = 1
    repeats: RepeatPolicy | int = field(default_factory=RepeatPolicy)  # an int: exactly that many timed runs
    seed: int = 0
    cuda_graphs: bool = False  # whole-step CUDA graphs for the backends that can be captured
    threads: int | None = None  # CPU threads of every backend (None: the physical cores)

    def __post_init__(self) -> None:
        if not isinstance(self.sampler, SamplerSettings):
            raise UsageError(f"sampler must be a SamplerSettings, got {type(self.sampler).__name__}")
        repeats = self.repeats
        if not isinstance(repeats, RepeatPolicy):
            count = exact_int(repeats, "--repeats", 1, MAX_REPEATS)
            repeats = RepeatPolicy(count, count, max_seconds=float("inf"))
        threads = self.threads
        checked = {
            "batch": exact_int(self.batch, "--batch-size", 1, MAX_BATCH), "height": image_side(self.height, "image height"),
            "width": image_side(self.width, "image width"), "warmup": exact_int(self.warmup, "--warmup", 0, MAX_REPEATS),
            "repeats": repeats, "seed": exact_int(self.seed, "--seed", 0, MAX_SEED),
            "cuda_graphs": exact_bool(self.cuda_graphs, "cuda_graphs"),
            "threads": None if threads is None else exact_int(threads, "--threads", 1, MAX_THREADS),
        }  # fmt: skip
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def policy(self) -> RepeatPolicy:
        assert isinstance(self.repeats, RepeatPolicy)
        return self.repeats

    @property
    def steps(self) -> int:
        return self.sampler.steps


def run_backend(
    spec: BackendSpec,
    net: Denoiser,
    loaded: LoadedModel,
    bench: BenchSettings,
    sampler: SamplerSettings | None = None,
    device: torch.device | None = None,
    on_run: Callable[[], None] | None = None,
) -> BenchRow:
    """Warm up, then time full sampler runs end to end (the bench's repeat policy); the row without comparisons.

    `sampler`: the row's sampler settings (a variant's), default the bench's. Every timed run is
    synchronised once before and after, graphed or not; the per-stage times of an ungraphed row come
    from one more run with timers around each engine call. With CUDA graphs, one graphed sampler
    serves every run: captured during the warm-up, replayed in the timed runs.
    """
    sampler = sampler or bench.sampler
    device = device or torch.device("cpu")
    timed = StageTimer(net, device)
    timed.profile = False
    memory = PeakMemory(device)
    graph_note = graphs_unavailable(spec, bench, device)
    graphed = None
    if graph_note is None:
        from dip_export.runtime.cuda_graph import GraphedSampler

        graphed = GraphedSampler(timed, device)
    once = _sampler_run(timed, graphed, loaded, bench, sampler, device)
    fallbacks: set[str] = set()

    def after(_: np.ndarray) -> None:
        if graphed is not None and graphed.fallback_reason is not None:
            fallbacks.add(graphed.fallback_reason)
        if on_run is not None:
            on_run()

    for _ in range(bench.warmup):
        once()
    memory.reset()
    timing, images = repeat(once, device, warmup=0, repeats=bench.policy, before=timed.reset, after=after)
    memory_mb = memory.read_mb()
    row = BenchRow(backend=spec.name, precision=spec.precision, images=images, peak_mem_mb=memory_mb)
    row.cuda_graphs = graphed is not None and not fallbacks
    row.cuda_graphs_note = "; ".join(sorted(fallbacks)) if fallbacks else (graph_note or "")
    row.threads, row.ort_threads = torch.get_num_threads(), getattr(net, "threads", None)
    _fill_timing(row, timing, timed, loaded, bench, sampler)
    if not row.cuda_graphs:  # the stage breakdown, from its own synchronised run
        _fill_stages(row, _stage_profile(timed, once, device), sampler.steps)
    return row


def _fill_stages(row: BenchRow, stages: dict[str, float], steps: int) -> None:
    """ms per step of the backbone, the detailer and the rest, from a profiled run's seconds per stage."""
    per_step = 1000 / steps
    row.backbone_ms, row.detailer_ms = stages["backbone"] * per_step, stages["detailer"] * per_step
    row.overhead_ms = stages["total"] * per_step - row.backbone_ms - row.detailer_ms  # the profiled run's own total


def _sampler_run(
    timed: StageTimer, graphed: Any, loaded: LoadedModel, bench: BenchSettings, sampler: SamplerSettings,
    device: torch.device,
) -> Callable[[], np.ndarray]:  # fmt: skip
    """One full sampler run over the bench's batch (graphed when a GraphedSampler is given)."""
    plan = make_plan(loaded.config.num_classes, num_samples=bench.batch, seed=bench.seed)

    def once() -> np.ndarray:
        if graphed is not None:
            noise = initial_noise(plan.seeds, bench.height, bench.width).to(device)
            y = torch.tensor(plan.classes, dtype=torch.int64, device=device)
            return to_uint8(graphed(noise, y, loaded.config.null_class, sampler))
        return generate(
            timed, plan, sampler, null_class=loaded.config.null_class, height=bench.height, width=bench.width,
            batch_size=bench.batch, device=device,
        )  # fmt: skip

    return once


def _stage_profile(timed: StageTimer, once: Callable[..., np.ndarray], device: torch.device) -> dict[str, float]:
    """Seconds per network in one more run with synchronising timers around each engine call, and its total."""
    timed.reset()
    timed.profile = True
    try:
        _, total = timed_call(once, device)
    finally:
        timed.profile = False
    return {**timed.times, "total": total}


def _fill_timing(
    row: BenchRow, timing: Timing, timed: StageTimer, loaded: LoadedModel, bench: BenchSettings, sampler: SamplerSettings
) -> None:
    """The row's times, spread, rates, calls and work from the timed runs (calls counted in the last one)."""
    per_step = 1000 / sampler.steps
    row.ms_per_step = timing.median * per_step
    row.ms_per_step_min, row.ms_per_step_max = timing.min * per_step, timing.max * per_step
    row.ms_per_step_q1, row.ms_per_step_q3 = (q * per_step for q in timing.quartiles)
    row.spread, row.repeats = timing.spread, len(timing.seconds)
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
        row.backbone_calls, row.detailer_calls = timed.calls["backbone"], timed.calls["detailer"]
        row.gflop_per_step = sum(timed.rows[k] * flops[k] for k in flops) / sampler.steps / 1e9
    row.evaluations_per_image = counts["paired_evals"] + counts["single_evals"]
    row.sampler, row.token_forecast = sampler.method, forecast_mode(sampler)
    row.steps, row.cache_interval = sampler.steps, sampler.cache_interval
    row.grid = None if sampler.grid is None else list(sampler.grid)


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
    """What the figures depend on: CPU kind and flags, cores, load, library versions, the GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "physical_cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_before"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare_to(rows: list[BenchRow], reference: BenchRow, digits: bool, classes: list[int], *, per_image: bool = False) -> None:
    """Speed-up (with its spread), PSNR and the digit accuracy of each timed row against `reference`.

    The speed-up compares time per step (the same network evaluations), or with `per_image` the time
    per image, end to end (rows whose samplers take different steps).
    """
    for row in rows:
        if row.status != "ok" or row.images is None:
            continue
        row.speedup_vs_eager = reference.s_per_image / row.s_per_image if per_image else reference.ms_per_step / row.ms_per_step
        pair = np.hypot(reference.spread, row.spread) if row is not reference else 0.0  # a row against itself: exactly 1
        row.speedup_spread = row.speedup_vs_eager * float(pair)
        assert reference.images is not None
        row.psnr_db_vs_eager = psnr(row.images, reference.images)
        row.images_identical = bool(np.array_equal(row.images, reference.images))
        if digits:
            from dip_export.digits import digit_accuracy

            row.digit_accuracy = digit_accuracy(row.images, classes)


compare_to_eager = compare_to  # the name scripts use


def skipped(spec: BackendSpec, reason: str) -> BenchRow:
    return BenchRow(backend=spec.name, precision=spec.precision, status="skipped", reason=reason)


def failure(spec: BackendSpec, err: Exception) -> BenchRow:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    status = "skipped" if isinstance(err, DipError) else "failed"
    return BenchRow(backend=spec.name, precision=spec.precision, status=status, reason=shortened(message))


@dataclass(frozen=True)
class Job:
    """One row to measure: a backend, and the sampler variant it runs (None: the bench's settings)."""

    spec: BackendSpec
    variant: Variant | None = None

    def label(self) -> str:
        return str(self.spec) + (f" {self.variant.name}" if self.variant else "")


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
    """Every backend (and optionally the sampler variants) on the same seeds, at one thread count; the report."""
    eager = BackendSpec("torch", "fp32")
    if eager not in specs:
        specs = [eager, *specs]  # the reference every row is compared with
    jobs = [Job(s) for s in specs] + ([Job(eager, v) for v in VARIANTS] if variants else [])
    rows, machine, threads = measure_jobs(jobs, loaded, bench, device, console, progress)
    _compare_rows(rows, loaded, bench)
    return {
        "settings": settings_json(loaded, bench, device, threads),
        "machine": machine,
        "noise": noise_summary(rows),
        "results": [r.to_json() for r in rows],
    }


@dataclass(frozen=True)
class Stage:
    """Work before the rows that shares their progress bar and thread count (e.g. a reference to compute).

    `run(note)` does it; `note(text)` says how far it got on the bar.
    """

    label: str
    run: Callable[[Callable[[str], None]], None]


def measure_jobs(
    jobs: list[Job], loaded: LoadedModel, bench: BenchSettings, device: torch.device, console: Any, progress: Any,
    first: Stage | None = None,
) -> tuple[list[BenchRow], dict[str, Any], int]:  # fmt: skip
    """The timed rows at one thread count (`first` before them), the machine they ran on and the thread count.

    The machine's record: CPU kind and flags, cores, load before and after, the measured GEMM peaks
    (each row gets its fraction of the one of its precision).
    """
    machine = machine_info(device)
    with cpu_threads(bench.threads or physical_cores()) as threads:
        peaks = {p: gemm_peak_gflops(d, device) for p, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        rows = _run_jobs(jobs, loaded, bench, device, console, progress, first)
    for row in rows:
        if row.status == "ok":
            add_peak_fraction(row, peaks["bf16" if row.precision in ("bf16", "fp16") else "fp32"])
    if hasattr(os, "getloadavg"):
        machine["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return rows, {**machine, "gemm_peak_gflops": peaks}, threads


def _run_jobs(jobs: list[Job], loaded: LoadedModel, bench: BenchSettings, device: torch.device, console: Any,
              progress: Any, first: Stage | None = None) -> list[BenchRow]:  # fmt: skip
    """The rows, one job at a time; the progress bar names the row it is on, and each finished row prints a line."""
    rows: list[BenchRow] = []
    engines: dict[BackendSpec, Denoiser] = {}  # one at a time (plus eager for the variants), so memory is per backend
    with progress:
        task = progress.add_task("benchmark", total=len(jobs) + (first is not None))
        if first is not None:
            progress.update(task, description=first.label)
            first.run(lambda note: progress.update(task, description=f"{first.label} ({note})"))
            progress.advance(task)
        for i, job in enumerate(jobs, 1):
            head = f"row {i}/{len(jobs)}: {job.label()}"
            progress.update(task, description=head)
            runs = [0]

            def on_run(head: str = head, runs: list[int] = runs) -> None:
                runs[0] += 1
                progress.update(task, description=f"{head} (timed run {runs[0]})")

            row = _run_job(job, engines, loaded, bench, device, console, on_run)
            rows.append(row)
            progress.advance(task)
            say(progress.console, _row_line(row))  # names and reasons from files: shown as text, one capped line
    return rows


def _row_line(row: BenchRow) -> str:
    if row.status != "ok":
        return f"{row.label}: {row.status} ({row.reason})"
    return f"{row.label}: {row.ms_per_step:.2f} ms/step +-{100 * row.spread:.0f}% ({row.repeats} runs, {row.threads} threads)"


def settings_json(loaded: LoadedModel, bench: BenchSettings, device: torch.device, threads: int) -> dict[str, Any]:
    s, policy = bench.sampler, bench.policy
    return {
        "model": loaded.name, "source": loaded.source, "steps": s.steps, "batch": bench.batch, "cfg": s.cfg,
        "shift": s.shift, "image_size": [bench.height, bench.width], "warmup": bench.warmup, "repeats": policy.repeats,
        "repeat_policy": {"min": policy.repeats, "max": policy.max_repeats, "target_spread": policy.target_spread,
                          "max_seconds": policy.max_seconds if np.isfinite(policy.max_seconds) else None},
        "seed": bench.seed, "cache_interval": s.cache_interval, "skip_uncond": s.skip_uncond,
        "cuda_graphs": bench.cuda_graphs and device.type == "cuda", "evals_per_image": sample_counts(s),
        "sampler": s.method, "token_forecast": s.token_forecast,
        "threads": {"torch_intra_op": threads, "torch_inter_op": torch.get_num_interop_threads(),
                    "onnxruntime_intra_op": threads, "onnxruntime_inter_op": 1, "compile": threads},
        "digit_accuracy": None if not is_demo(loaded) else "measured" if bench.batch >= DIGIT_MIN_IMAGES
        else f"omitted: needs --batch-size >= {DIGIT_MIN_IMAGES}",
    }  # fmt: skip


def noise_summary(rows: list[BenchRow]) -> dict[str, Any]:
    """The largest relative spread of a speed-up, and the one-line warning when it is above NOISE_WARNING."""
    ok = [r for r in rows if r.status == "ok"]
    spreads = [r.speedup_spread / r.speedup_vs_eager for r in ok if r.speedup_vs_eager > 0] + [r.spread for r in ok]
    worst = max((s for s in spreads if np.isfinite(s)), default=0.0)
    warning = f"noisy machine: ratios below are +-{100 * worst:.0f}%" if worst > NOISE_WARNING else None
    return {"max_ratio_spread": worst, "bound": NOISE_WARNING, "warning": warning}


def _run_job(
    job: Job, engines: dict[BackendSpec, Denoiser], loaded: LoadedModel, bench: BenchSettings, device: torch.device,
    console: Any, on_run: Callable[[], None],
) -> BenchRow:  # fmt: skip
    """One row: skipped with the reason, failed with the error, or timed (its engine made or reused)."""
    spec = job.spec
    reason = unavailable_reason(spec, device, from_model=True)  # the catalog's one check: device and packages
    if reason is not None:
        row = skipped(spec, reason)
    else:
        eager = BackendSpec("torch", "fp32")
        try:
            started = time.perf_counter()
            if spec not in engines:
                for other in [k for k in engines if k != eager]:
                    del engines[other]
                engines[spec] = make_engine(spec, loaded, (bench.height, bench.width), device, console, batch=bench.batch)
            setup = time.perf_counter() - started
            sampler = job.variant.settings(bench.sampler) if job.variant else bench.sampler
            row = run_backend(spec, engines[spec], loaded, bench, sampler, device, on_run)
            row.setup_s = setup
        except (DipError, RuntimeError, ImportError, ValueError) as err:
            row = failure(spec, err)
    if job.variant is not None:
        row.variant, row.variant_kind = job.variant.name, job.variant.kind
    return row


def _compare_rows(rows: list[BenchRow], loaded: LoadedModel, bench: BenchSettings) -> None:
    """Speed-up and PSNR of every row against eager fp32; a variant kind with a baseline row against that row."""
    reference = next(r for r in rows if r.backend == "torch" and r.precision == "fp32" and not r.variant)
    if reference.status != "ok":
        raise DipError(f"the eager fp32 reference failed: {reference.reason}")
    plan = make_plan(loaded.config.num_classes, num_samples=bench.batch, seed=bench.seed)
    digits = is_demo(loaded) and bench.batch >= DIGIT_MIN_IMAGES  # the classifier reads only the demo's digits
    baselines = {v.kind: v.name for v in VARIANTS if v.baseline}
    by_name = {r.variant: r for r in rows if r.variant}
    for kind in dict.fromkeys(r.variant_kind for r in rows):
        base = by_name.get(baselines[kind]) if kind in baselines else reference
        if base is not None and base.status == "ok":
            compare_to([r for r in rows if r.variant_kind == kind], base, digits, plan.classes)


def render_table(report: dict[str, Any]) -> Any:
    """The report as a rich table: medians with their spread, speed-ups with theirs, and the rows that did not run."""
    from rich.table import Table
    from rich.text import Text

    def shown(value: Any, style: str | None = None) -> Text:  # a model's name and a row's reason come from files
        return Text(plain_line(value), style=style or "")

    s = report["settings"]
    digits = any(r.get("digit_accuracy") is not None for r in report["results"])
    table = Table(
        title=shown(f"{s['model']} {s['image_size'][0]}x{s['image_size'][1]}, {s['batch']} image(s) per run, "
                    f"{s['steps']} steps {s['sampler']}, guidance {s['cfg']}, {s['threads']['torch_intra_op']} CPU "
                    f"threads  (median of >= {s['repeats']} runs)"),
        caption=shown(_table_caption(s)),
    )  # fmt: skip
    cols = ["backend", "variant", "ms/step", "spread", "runs", "backbone", "detailer", "other", "img/s", "speedup"]
    cols += ["PSNR dB", *(["digits acc"] if digits else []), "peak MB", "% peak", "note"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("backend", "variant", "note") else "right")
    for r in report["results"]:
        name = f"{r['backend']}:{r['precision']}"
        if r["status"] != "ok":
            table.add_row(shown(name), shown(r["variant"]), *["-"] * (len(cols) - 3),
                          shown(f"{r['status']}: {r['reason']}", "yellow"))  # fmt: skip
            continue
        cells = _row_cells(r, s)
        if not digits:
            del cells[9]
        table.add_row(shown(name), shown(r["variant"]), *map(shown, cells))
    return table


def _fmt(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _row_cells(r: dict[str, Any], s: dict[str, Any]) -> list[str]:
    psnr_text = "identical" if r["images_identical"] else _fmt(r["psnr_db_vs_eager"], ".1f")
    speedup = "-" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x +-{r['speedup_spread'] or 0:.2f}"
    note = ("graphs" if r["cuda_graphs"] else f"no graphs: {r['cuda_graphs_note']}") if s["cuda_graphs"] else ""
    if r.get("ort_threads"):
        note = f"{note}; " * bool(note) + f"ORT {r['ort_threads']} threads"
    return [
        _fmt(r["ms_per_step"], ".2f"), f"+-{100 * (r['spread'] or 0):.0f}%", str(r["repeats"]), _fmt(r["backbone_ms"], ".2f"),
        _fmt(r["detailer_ms"], ".2f"), _fmt(r["overhead_ms"], ".2f"), _fmt(r["images_per_s"], ".3g"), speedup, psnr_text,
        _fmt(r["digit_accuracy"], ".2f"), _fmt(r["peak_mem_mb"], ".0f"), _fmt(None if r["fraction_of_peak"] is None
                                                                              else 100 * r["fraction_of_peak"], ".0f"), note,
    ]  # fmt: skip


def _table_caption(s: dict[str, Any]) -> str:
    parts = ["spread: interquartile range / median of the timed runs; speedup +-: both rows' spreads in quadrature"]
    if isinstance(s.get("digit_accuracy"), str) and s["digit_accuracy"].startswith("omitted"):
        parts.append(f"digit accuracy {s['digit_accuracy']}")
    return "; ".join(parts)


def plot_report(report: dict[str, Any], path: Path) -> None:
    """Time per step on a log axis with spread bars, and speed-up against PSNR; rows that did not run listed below."""
    from dip_export.measure.plotting import footnote, pyplot, save

    plt = pyplot()
    rows = [r for r in report["results"] if r["status"] == "ok"]
    names = [f"{r['backend']}:{r['precision']}" + (f"\n{r['variant']}" if r["variant"] else "") for r in rows]
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(15, max(4.8, 0.5 * len(rows) + 2)))
    _time_bars(bars, rows, names)
    _speed_quality(scatter, rows, names)
    s = report["settings"]
    fig.suptitle(
        f"{s['model']} {s['image_size'][0]}px, {s['batch']} image(s) per run, {s['steps']} steps {s['sampler']}, "
        f"guidance {s['cfg']}, {s['threads']['torch_intra_op']} CPU threads"
    )
    missing = [f"{r['backend']}:{r['precision']} {r['variant']}".strip() + f" ({r['status']}: {r['reason']})"
               for r in report["results"] if r["status"] != "ok"]  # fmt: skip
    notes = ["not run: " + "; ".join(missing)] if missing else []
    if report.get("noise", {}).get("warning"):
        notes.append(report["noise"]["warning"])
    fig.tight_layout()
    footnote(fig, notes)
    save(fig, path)


def _time_bars(ax: Any, rows: list[dict[str, Any]], names: list[str]) -> None:
    """Median ms per step on a log axis, the bar's whisker spanning the timed runs' quartiles."""
    y = np.arange(len(rows))
    med = np.array([r["ms_per_step"] for r in rows])
    lo = med - np.array([r["ms_per_step_q1"] for r in rows])
    hi = np.array([r["ms_per_step_q3"] for r in rows]) - med
    ax.barh(y, med, xerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=3, color="tab:blue", alpha=0.8)
    ax.set_xscale("log")
    for i, r in enumerate(rows):
        speedup = "" if r["speedup_vs_eager"] is None else f"  {r['speedup_vs_eager']:.2f}x +-{r['speedup_spread'] or 0:.2f}"
        ax.annotate(f"{r['ms_per_step']:.3g} ms{speedup}", (r["ms_per_step_q3"] or r["ms_per_step"], i),
                    xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(med.min() / 2, med.max() * 6)
    ax.set_xlabel("ms per step, median (log scale); whiskers: quartiles of the timed runs")
    ax.grid(axis="x", which="both", alpha=0.3)


def _speed_quality(ax: Any, rows: list[dict[str, Any]], names: list[str]) -> None:
    """Speed-up (log) against PSNR; points numbered, the legend names them (no labels piled up at the cap)."""
    finite = [r["psnr_db_vs_eager"] for r in rows if not r["images_identical"] and r["psnr_db_vs_eager"] is not None]
    top = max([60.0, *finite]) + 10  # where identical images (infinite PSNR) are drawn
    for i, (r, name) in enumerate(zip(rows, names, strict=True), 1):
        if r["speedup_vs_eager"] is None:
            continue
        q = top if r["images_identical"] else r["psnr_db_vs_eager"]
        ax.errorbar(r["speedup_vs_eager"], q, xerr=r["speedup_spread"] or 0, fmt="o", capsize=3,
                    label=f"{i}  {name.replace(chr(10), ' ')}")  # fmt: skip
        ax.annotate(str(i), (r["speedup_vs_eager"], q), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.axhline(top, color="grey", lw=0.5, ls=":")
    ax.annotate("identical images", (0.01, top), xycoords=("axes fraction", "data"), xytext=(0, 3),
                textcoords="offset points", fontsize=7, color="grey")  # fmt: skip
    ax.set_ylim(min([top, *finite]) - 5, top + 3)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up vs eager fp32 (log scale), +- its spread")
    ax.set_ylabel(f"PSNR vs eager fp32, dB (identical images at {top:.0f})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(which="both", alpha=0.3)
