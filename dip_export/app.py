"""The work behind the commands (the CLI only parses and reports): every command is cli -> app -> stage.

Each command gets one request object: which model (`ModelRequest`), what to run, where to write.
Sampling options travel as `sampling`, a dict of `SamplerSettings` fields that the pipeline applies
over the model's recommendations and validates once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from dip_export.budget import GRID_IMAGES
from dip_export.engines import make_engine
from dip_export.errors import ExportError, UsageError
from dip_export.generate import SamplePlan, check_run_limits, check_seed, make_plan, parse_image_size, parse_int_list
from dip_export.io import (
    check_output_file,
    check_output_folder,
    check_outputs,
    image_grid,
    output_group,
    save_npz,
    save_png,
)
from dip_export.messages import say
from dip_export.ownership import check_free_space, check_not_input, check_outputs_apart, check_replaceable_output
from dip_export.pipeline import DiPPipeline
from dip_export.runtime.backends import BackendSpec
from dip_export.runtime.torch_engine import resolve_device
from dip_export.sampling import SamplerSettings
from dip_export.settings import (
    BENCH_RULES,
    CUDA_GRAPHS_RULE,
    MAX_CLASS,
    MAX_REPEATS,
    MAX_SAMPLES,
    MAX_SHARD_BATCHES,
    MAX_STEPS,
    SAMPLE_RULES,
    BuildSettings,
    check_options,
    decimal_text,
    exact_int,
    given_options,
    list_items,
    number_list,
    one_of,
    plain_value,
    run_conditions,
)

if TYPE_CHECKING:
    from dip_export.distributed import World


@dataclass(frozen=True)
class ModelRequest:
    """Which model a command opens: a checkpoint, export folder or Hub name (None: --preset or the demo)."""

    model: str | None = None
    preset: str | None = None
    weights: str | None = None  # None: ema where a file holds both (given, it must apply)
    trust: bool = False  # --trust-checkpoint
    revision: str | None = None

    def load(self, **options: Any) -> DiPPipeline:
        return DiPPipeline.load(
            self.model, preset=self.preset, weights=self.weights, trust_checkpoint=self.trust, revision=self.revision,
            **options,
        )  # fmt: skip


@dataclass(frozen=True)
class SampleRequest:
    """dip-sample: which images, from which model and backend, written where."""

    model: ModelRequest
    out: Path
    sampling: dict[str, Any] = field(default_factory=dict)  # SamplerSettings overrides; None: the model's
    classes: str | None = None
    seeds: str | None = None
    num_samples: int | None = None
    seed: int | None = None  # the first seed of --num-samples (or of --classes alone); None: not given (0)
    class_file: Path | None = None
    image_size: str | None = None
    batch_size: int = 16
    device: str = "auto"
    backend: str | None = None
    cuda_graphs: bool | None = None  # None: wherever they apply; True: asked for (refused where they cannot apply)
    resume: bool = False
    shard_batches: int | None = None  # batches per shard of a sharded run; None: not given (DEFAULT_SHARD_BATCHES)
    png_dir: Path | None = None

    def __post_init__(self) -> None:
        """An option the run would ignore or contradict is refused here, before any work (`settings.SAMPLE_RULES`)."""
        from dip_export.distributed import World

        given = {"--classes": self.classes, "--seeds": self.seeds, "--num-samples": self.num_samples, "--seed": self.seed,
                 "--class-file": self.class_file, "--resume": self.resume, "--shard-batches": self.shard_batches,
                 "torchrun": World.from_env().size > 1}  # fmt: skip
        check_options(SAMPLE_RULES, given_options(given))

    @property
    def first_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    @property
    def batches_per_shard(self) -> int:
        return DEFAULT_SHARD_BATCHES if self.shard_batches is None else self.shard_batches


DEFAULT_SHARD_BATCHES = 4


def run_sample(request: SampleRequest, console: Console, progress: Progress) -> None:
    """dip-sample: cheap checks first, then the model, the plan, the engine, the images and the files."""
    from dip_export.distributed import World

    world = World.from_env()
    dev = world.device(resolve_device(request.device))
    _check_sample_request(request, world)
    _check_graphs_asked(request.cuda_graphs, dev, request.backend)
    count = _sample_count(request)  # the images the run keeps, counted by the memory estimate before the model is built
    if request.png_dir is not None:  # the folder's files against the images the run writes, before the model
        check_output_folder(request.png_dir, lambda name: _png_index(name) < count, kind="sample-image")
    pipe = request.model.load(
        backend=request.backend, device=dev, image_size=request.image_size, batch_size=request.batch_size,
        num_samples=count, console=console,
    )  # fmt: skip
    pipe.use_cuda_graphs(request.cuda_graphs)  # an explicit --cuda-graphs where graphs cannot apply: refused now
    settings = pipe.sampler_settings(**request.sampling)
    plan = _plan(pipe.config.num_classes, request)
    pipe.check_budget(len(plan))
    size = pipe.image_size
    check_outputs_apart([*_sample_outputs(request, world), *_tool_outputs(pipe)])  # every output known: the key made now
    png_bytes = len(plan) * size[0] * size[1] * 3 * (2 if request.png_dir is not None else 1)
    check_free_space(request.out, png_bytes + (64 << 20))
    if world.size > 1 or request.resume:
        _check_resume(request, world, pipe, settings, plan)  # a folder of other settings: refused before any engine
    say_assumed_size(pipe.source, request.image_size, pipe.image_size, console)  # the arguments are good: now say it
    spec = pipe.choose_backend()  # only now the heavy part: measuring (auto), engines, exports made on the fly
    if pipe.reason:
        say(console, f"backend {pipe.reason}")
    pipe.engine()
    sampler_line = _sampler_line(settings, request.sampling, pipe.source.sampling)

    def make_images(part: SamplePlan, on_step: Callable[[int], None] | None = None) -> np.ndarray:
        return pipe.generate(part, settings, batch_size=request.batch_size, cuda_graphs=request.cuda_graphs, on_step=on_step)

    if world.size > 1 or request.resume:
        identity = _run_identity(request, pipe, settings, spec)
        _run_sharded(plan, request, world, dev, identity, make_images, progress, console, sampler_line,
                     lambda images: _write_outputs(request, images))  # fmt: skip
    else:
        say(console, sampler_line)  # every check has passed: the sampling starts now
        with progress:
            total = settings.steps * -(-len(plan) // request.batch_size)
            task = progress.add_task(f"{pipe.name} {spec} {len(plan)} images", total=total)
            images = make_images(plan, lambda _: progress.advance(task))
        _write_outputs(request, images)
    if world.is_main:
        out, size = request.out, pipe.image_size
        say(console, f"wrote {out} ({len(plan)} x {size[0]}x{size[1]}) and {out.with_suffix('.png')}")


def _check_sample_request(request: SampleRequest, world: World) -> None:
    """Everything that needs no model: arguments, limits and output locations."""
    out = request.out
    if out.suffix != ".npz":
        raise UsageError(f"--out must end in .npz, got {out}")
    if request.batch_size < 1 or request.batches_per_shard < 1:
        raise UsageError("--batch-size and --shard-batches must be >= 1")
    sampling = request.sampling
    check_run_limits(
        steps=sampling.get("steps"), cfg=sampling.get("cfg"), batch_size=request.batch_size,
        cache_interval=sampling.get("cache_interval"),
    )  # fmt: skip
    check_seed(request.first_seed, "--seed")
    check_sampling_options(sampling)
    if request.image_size is not None:
        parse_image_size(request.image_size)
    if request.batches_per_shard > MAX_SHARD_BATCHES:
        raise UsageError(f"--shard-batches must be in 1..{MAX_SHARD_BATCHES}, got {request.batches_per_shard}")
    check_outputs(_sample_outputs(request, world), make_key=False)  # none inside an artifact, all apart; the export
    # folders are known once the model is (`run_sample`), and the owner key is made then
    check_output_file(out)
    check_output_file(out.with_suffix(".png"))
    check_replaceable_output(out, "npz")
    check_replaceable_output(out.with_suffix(".png"), "samples-grid")
    for output in (out, out.with_suffix(".png"), request.png_dir):
        if output is not None:
            check_not_input(output, [request.model.model, request.class_file])
    if request.png_dir is not None and request.png_dir.is_symlink():
        raise UsageError(f"--png-dir {request.png_dir} is a symlink; an output folder is never written through one")
    if request.png_dir is not None and request.png_dir.exists() and not request.png_dir.is_dir():
        raise UsageError(f"--png-dir {request.png_dir} exists and is not a folder")
    if world.size > 1 or request.resume:
        from dip_export.distributed import parts_dir

        parts_dir(out)  # the shard folder: no symlink, before any work


def _run_identity(request: SampleRequest, pipe: DiPPipeline, settings: SamplerSettings, spec: Any) -> dict[str, Any]:
    """What a sharded run's shards are made under (`settings.json`); `spec` None: the backend not known yet."""
    identity = {
        "model": pipe.name, "source": str(pipe.source.path or request.model.preset or "demo"),
        "weights": request.model.weights or "ema", "sampler": settings.__dict__, "size": list(pipe.image_size),
        "content": pipe.source.identity,
    }  # fmt: skip
    return identity if spec is None else {**identity, "backend": str(spec)}


def _check_resume(request: SampleRequest, world: World, pipe: DiPPipeline, settings: SamplerSettings, plan: SamplePlan) -> None:
    """The pre-flight of a sharded run, before any export, engine build or sampling: the shard folder's recorded
    settings against every one known now (all but the backend under --backend auto, measured later), and the
    shards already there (headers only)."""
    from dip_export.distributed import check_finished_shards, check_settings, parts_dir, run_settings

    known = request.backend != "auto"  # as DiPPipeline.load decides: any other backend is fixed at load
    identity = _run_identity(request, pipe, settings, pipe.spec if known else None)
    batch_size, shard_batches = request.batch_size, request.batches_per_shard
    recorded = run_settings(identity, plan, batch_size, shard_batches)
    check_settings(parts_dir(request.out), recorded, world, pending=() if known else ("backend",))
    check_finished_shards(request.out, len(plan), batch_size * shard_batches, (*pipe.image_size, 3))


def _tool_outputs(pipe: DiPPipeline) -> list[tuple[str, Path | None]]:
    """What the tool itself may write in a run of `pipe`'s model: the export folders it makes on the fly under
    engines/ (every precision, at the run's size) and its caches there (`io.RESERVED`). A run's own outputs, and the
    owner key, stay apart from them (`ownership.check_outputs_apart`)."""
    from dip_export.export.onnx_export import managed_folders
    from dip_export.io import EXPORT_ROOT, RESERVED

    folders = [("the export folder", folder) for folder in managed_folders(pipe.name, pipe.image_size)]
    return [*folders, *((what, EXPORT_ROOT / name) for name, what in RESERVED.items())]


def _sample_outputs(request: SampleRequest, world: World) -> list[tuple[str, Path | None]]:
    """What dip-sample writes: the npz, its grid, --png-dir, and the shard folder of a resumable or torchrun run. The
    shard folder's name is kept apart from the others by every run, resumable or not: a later --resume of the same
    --out takes what is there as its shards."""
    out, sharded = request.out, world.size > 1 or request.resume
    shards = "the shard folder" if sharded else "the shard folder (of a --resume run)"
    return [("--out", out), ("the grid", out.with_suffix(".png")), ("--png-dir", request.png_dir),
            (shards, out.with_name(out.name + ".parts"))]  # fmt: skip


def _sample_count(request: SampleRequest) -> int:
    """How many images the plan will hold, from the arguments alone, after every check of the plan that needs no model
    (class ids and seeds in range, one seed per class, the class file's lines), made against the most classes a model
    may have; the model's own class count is checked once it is known (`_plan`)."""
    if request.num_samples is None:
        return len(_plan(MAX_CLASS + 1, request))
    count = exact_int(request.num_samples, "--num-samples", 1, MAX_SAMPLES)
    if request.class_file is not None:
        from dip_export.distributed import read_class_file

        read_class_file(request.class_file, MAX_CLASS + 1, count)
    return count


def check_sampling_options(sampling: dict[str, Any]) -> None:
    """The sampling options given (dip-sample, dip-bench), each on its own: solver and forecast names, ranges of
    steps, guidance, shift and interval, and a refresh interval longer than any run of the given steps, before any
    model is resolved; the other checks between them need the model's recommended values or fitted time grids, and
    run when the settings are made (`DiPPipeline.sampler_settings`)."""
    from dip_export.sampling.rules import check_given_together, field_values

    check_given_together(field_values({OVERRIDE_NAMES.get(name, name): value for name, value in sampling.items()}))


def _write_outputs(request: SampleRequest, images: np.ndarray) -> None:
    """The npz, the PNG grid beside it and one PNG per image with --png-dir: all of them or none (`output_group`:
    an interrupted or failed write leaves the earlier files as they were, never a new npz beside an old grid)."""
    out = request.out
    with output_group():
        save_npz(out, images)
        save_png(out.with_suffix(".png"), image_grid(images[:GRID_IMAGES]), "samples-grid")
        if request.png_dir is not None:
            for i, image in enumerate(images):
                save_png(request.png_dir / _png_name(i), image, "sample-image")


def _png_name(index: int) -> str:
    return f"{index:06d}.png"


def _png_index(name: str) -> float:
    """The sample index of a file this command names `NNNNNN.png`; infinity for any other name."""
    stem = name.removesuffix(".png")
    return int(stem) if name.endswith(".png") and stem.isdigit() and _png_name(int(stem)) == name else float("inf")


def _plan(num_classes: int, request: SampleRequest) -> SamplePlan:
    classes, seeds, num_samples, seed = request.classes, request.seeds, request.num_samples, request.first_seed
    if request.class_file is None or num_samples is None:  # --class-file goes with --num-samples (SAMPLE_RULES)
        return make_plan(
            num_classes,
            classes=parse_int_list(classes, "--classes") if classes is not None else None,
            seeds=parse_int_list(seeds, "--seeds") if seeds is not None else None,
            num_samples=num_samples,
            seed=seed,
        )
    from dip_export.distributed import read_class_file

    return make_plan(num_classes, classes=read_class_file(request.class_file, num_classes, num_samples),
                     seeds=[seed + i for i in range(num_samples)])  # fmt: skip


def _run_sharded(
    plan: SamplePlan,
    request: SampleRequest,
    world: World,
    device: torch.device,
    identity: dict[str, Any],
    make_images: Callable[[SamplePlan], np.ndarray],
    progress: Progress,
    console: Console,
    sampler_line: str,
    finish: Callable[[np.ndarray], None],
) -> np.ndarray | None:
    """torchrun / --resume: shards of whole batches, resumable; rank 0 shows the global count, merges and `finish`es
    (writes the outputs)."""
    out, batch_size, shard_batches = request.out, request.batch_size, request.batches_per_shard
    from dip_export.distributed import check_settings, parts_dir, run_settings, run_sharded

    world.init(device, console)
    try:
        check_settings(parts_dir(out), run_settings(identity, plan, batch_size, shard_batches), world)  # the backend too
        if not world.is_main:
            return run_sharded(plan, out, world=world, settings=identity, batch_size=batch_size,
                               shard_batches=shard_batches, make_images=make_images)  # fmt: skip
        folder = parts_dir(out)
        say(console, sampler_line)  # every check has passed: the sampling starts now
        with progress:
            task = progress.add_task(f"{world.size} worker(s), {len(plan)} images", total=len(plan))

            def counted(part: SamplePlan) -> np.ndarray:
                images = make_images(part)
                on_disk = len(list(folder.glob("shard-*.npz"))) * batch_size * shard_batches  # all ranks' finished shards
                progress.update(task, completed=min(len(plan), on_disk + len(part)))
                return images

            images = run_sharded(plan, out, world=world, settings=identity, batch_size=batch_size,
                                 shard_batches=shard_batches, make_images=counted, finish=finish,
                                 on_images=lambda n: progress.update(task, completed=n))  # fmt: skip
            progress.update(task, completed=len(plan))
        say(console, f"shards in {folder}/ (kept for resuming; delete when done)")
        return images
    finally:
        world.close()


@dataclass(frozen=True)
class BenchRequest:
    """dip-bench: which backends, timed how, on which sampler run; or the yardstick with --samplers."""

    model: ModelRequest
    sampling: dict[str, Any]  # SamplerSettings overrides of every row (None or absent: the model's recommendation)
    backends: str | None = None  # None: DEFAULT_BACKENDS for the table, torch for the yardstick
    batch_size: int | None = None  # images per timed run (the yardstick: per solver and count); None: 1, --headline 32
    image_size: str | None = None
    variants: bool = False
    cuda_graphs: bool | None = None  # None: wherever they apply; True: asked for (refused where they cannot apply)
    warmup: int = 1
    repeats: int = 5  # timed runs at least; more while the spread is above target_spread, up to max_repeats
    max_repeats: int = 30
    target_spread: float = 0.05
    threads: int | None = None  # CPU threads of every backend (None: the physical cores)
    device: str = "auto"
    json_out: Path | None = None
    plot: Path | None = None
    samplers: str | None = None  # the yardstick: solvers against the converged reference
    nfe: str | None = None  # the yardstick's evaluation counts; None: DEFAULT_NFE
    headline: bool = False  # the release's recipe against the fast one, end to end, judged against the reference

    def __post_init__(self) -> None:
        """An option the run would ignore is refused here, before any work (`settings.BENCH_RULES`)."""
        given = {"--backends": self.backends, "--variants": self.variants, "--samplers": self.samplers, "--nfe": self.nfe,
                 "--plot": self.plot, "--headline": self.headline}  # fmt: skip
        given.update({f"--{name.replace('_', '-')}": value for name, value in self.sampling.items()})
        check_options(BENCH_RULES, given_options(given))

    @property
    def images(self) -> int:
        """Images per timed run: --batch-size, else 32 for --headline (a PSNR over few images says little), else 1."""
        return self.batch_size if self.batch_size is not None else HEADLINE_IMAGES if self.headline else 1


DEFAULT_NFE = "10,15,20,25,50,100"
HEADLINE_IMAGES = 32


def run_bench(request: BenchRequest, console: Console, progress: Progress) -> None:
    """dip-bench: every backend on the same seeds, one table; or the yardstick with --samplers."""
    from dip_export.measure.bench import BenchSettings
    from dip_export.measure.harness import RepeatPolicy

    names = _check_bench_request(request)
    policy = RepeatPolicy(request.repeats, max(request.max_repeats, request.repeats), request.target_spread)
    specs = [BackendSpec.parse(b) for b in names if b != "auto"]
    dev = resolve_device(request.device)
    _check_bench_graphs(request, dev, specs, auto="auto" in names or request.headline)
    _check_bench_runnable(request, dev, specs, auto="auto" in names or request.headline)
    if request.samplers is not None or request.headline:  # the reference cache, before a model is read
        from dip_export.measure.yardstick import check_cache_folder

        check_cache_folder()
    pipe = request.model.load(
        backend="auto" if "auto" in names or request.headline else None, device=dev, image_size=request.image_size,
        batch_size=request.images, num_samples=request.images, console=console,
    )  # fmt: skip
    loaded = pipe.source.loaded
    if loaded is None:
        raise UsageError("dip-bench runs from a checkpoint, a preset or the demo model, not an export folder")
    check_outputs_apart([("--json", request.json_out), ("--plot", request.plot), *_tool_outputs(pipe)])  # the key now
    for spec in specs:  # each backend's own estimate (ONNX Runtime's attention and arena, its export), before any work
        pipe.check_budget(request.images, backend=spec.name)
    sampler = pipe.sampler_settings(**request.sampling)
    say_assumed_size(pipe.source, request.image_size, pipe.image_size, console)
    if request.headline:
        _run_headline(pipe, sampler, policy, request, dev, console, progress)
        return
    if request.samplers is None:  # the yardstick runs its own solvers and counts: no line claims the rows' sampler
        say(console, _sampler_line(sampler, request.sampling, pipe.source.sampling))
    if request.samplers is None:  # the product of the limits, before any timing (the auto measurement too)
        from dip_export.budget import check_work

        rows = len(specs) + 1 + ("auto" in names) + (8 if request.variants else 0)  # eager fp32 is always timed
        runs = (request.warmup + max(request.repeats, request.max_repeats)) * rows
        check_work([sampler.steps] * runs, images=request.images)
    if "auto" in names:
        chosen = pipe.choose_backend()
        say(console, f"--backend auto: {pipe.reason}")
        specs = list(dict.fromkeys([*specs, chosen]))
    settings = BenchSettings(
        sampler, batch=request.images, height=pipe.image_size[0], width=pipe.image_size[1], warmup=request.warmup,
        repeats=policy, cuda_graphs=request.cuda_graphs is not False, threads=request.threads,
    )  # fmt: skip
    if request.samplers is not None:
        _run_yardstick(loaded, settings, specs[0], request, dev, console)
        return
    _run_backends(loaded, specs, settings, request, dev, console, progress)


def _check_graphs_asked(cuda_graphs: bool | None, dev: torch.device, backend: str | None) -> None:
    """An explicit --cuda-graphs on a CPU device, or with a backend named that has none, refused before the model is
    read or asked for (`settings.CUDA_GRAPHS_RULE`); where the backend is known only from the model (an export
    folder, --backend auto), the pipeline checks it again once it is (`DiPPipeline.use_cuda_graphs`)."""
    name = backend.partition(":")[0] if isinstance(backend, str) else ""
    named = [name] if name and name != "auto" else []
    check_options((CUDA_GRAPHS_RULE,), given_options({"--cuda-graphs": cuda_graphs}) | run_conditions(dev.type, named))


def _check_bench_runnable(request: BenchRequest, dev: torch.device, specs: list[BackendSpec], auto: bool) -> None:
    """A backend named that cannot run here (its device, its packages) is a row skipped with its reason beside the
    others; but where none named can (`--backends trt:fp16` on a CPU device, the yardstick's one backend), the run
    would time nothing that was asked: refused before any work, as dip-sample refuses it."""
    from dip_export.runtime.backends import unavailable_reason

    if auto or request.backends is None:
        return
    reasons = [(spec, unavailable_reason(spec, dev, from_model=True)) for spec in specs]
    if reasons and all(reason is not None for _, reason in reasons):
        spec, reason = reasons[0]
        raise UsageError(f"--backends: none named runs on {dev.type} ({spec}: {reason}); name a backend this device runs")


def _check_bench_graphs(request: BenchRequest, dev: torch.device, specs: list[BackendSpec], auto: bool) -> None:
    """An explicit --cuda-graphs where no timed backend can replay graphs (`settings.CUDA_GRAPHS_RULE`): on a CPU
    device, or when every backend named is one without them (--backend auto picks one with them on CUDA); rows that
    cannot, beside rows that can, say so in their note."""
    none_graphable = not auto and not any(spec.backend.graphable for spec in specs)
    backends = sorted({spec.name for spec in specs}) if none_graphable else []
    check_options(BENCH_RULES, given_options({"--cuda-graphs": request.cuda_graphs}) | run_conditions(dev.type, backends))


def say_assumed_size(source: Any, given: str | None, size: tuple[int, int], console: Console) -> None:
    """One line when the image size is a guess: the checkpoint stores no config and no --image-size was given."""
    loaded = source.loaded
    if given is None and loaded is not None and loaded.size_assumed:
        say(console, f"image size {size[0]}x{size[1]} assumed: {loaded.name} stores no config (give --image-size for another)")


def _sampler_line(sampler: SamplerSettings, given: dict[str, Any], stored: dict[str, Any]) -> str:
    """What every row samples with, and which settings are the model's stored recommendation."""
    dropped = given.get("cfg") is None and "cfg" in stored and stored["cfg"] != sampler.cfg  # no step in its interval
    from_model = [opt for key, opt in (("steps", "--steps"), ("cfg", "--cfg"), ("sampler", "--sampler"))
                  if given.get(key) is None and key in stored and not (key == "cfg" and dropped)]  # fmt: skip
    notes = [f"the model's guidance {stored['cfg']:g} would apply at no step of this run"] if dropped else []
    if sampler.grid is not None and given.get("steps") is None and given.get("sampler") is None:
        notes.append(f"the model's fitted grid for guidance {sampler.cfg:g}")
    elif from_model:
        notes.append(f"{', '.join(from_model)}: the model's recommendation")
    line = f"sampler: {sampler.method}, {sampler.steps} steps, guidance {sampler.cfg:g}"
    return line + (f" ({'; '.join(notes)})" if notes else "")


def _check_bench_request(request: BenchRequest) -> list[str]:
    """The backend names asked for, after the checks that need no model (matplotlib for --plot first)."""
    if request.plot is not None:
        from dip_export.measure.plotting import require_matplotlib

        require_matplotlib()
    from dip_export.runtime.catalog import BENCH_DEFAULT

    default = "torch" if request.samplers is not None else BENCH_DEFAULT
    names = list_items(default if request.backends is None else request.backends, "--backends")  # each as typed
    for name in names:
        if name != "auto":
            BackendSpec.parse(name)
    canonical = [name if name == "auto" else str(BackendSpec.parse(name)) for name in names]
    if len(set(canonical)) != len(canonical):
        raise UsageError("--backends names a backend twice; name each once")
    if request.samplers is not None:  # --variants, --steps and --sampler are refused with it (BENCH_RULES)
        if len(names) != 1 or names[0] == "auto":
            raise UsageError(f"--samplers measures on one backend; name one with --backends (got {', '.join(names)})")
        _yardstick_runs(request)
    if request.images < 1 or request.repeats < 1 or request.warmup < 0:
        raise UsageError("--batch-size and --repeats must be >= 1, --warmup >= 0")
    sampling = {OVERRIDE_NAMES.get(k, k): v for k, v in request.sampling.items() if v is not None}
    check_run_limits(steps=sampling.get("steps"), cfg=sampling.get("cfg"), batch_size=request.images,
                     cache_interval=sampling.get("cache_interval"))  # fmt: skip
    check_sampling_options(sampling)  # the names and ranges of the given settings, before any work
    if request.repeats > MAX_REPEATS or request.warmup > MAX_REPEATS or request.max_repeats > MAX_REPEATS:
        raise UsageError(f"--repeats, --max-repeats and --warmup must be at most {MAX_REPEATS}")
    if request.max_repeats < request.repeats:
        raise UsageError(f"--max-repeats ({request.max_repeats}) must be at least --repeats ({request.repeats})")
    if request.plot is not None and request.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG; name a .png file (got {request.plot.suffix or 'no suffix'})")
    if request.plot is not None and request.json_out is not None and _same_path(request.plot, request.json_out):
        raise UsageError("--json and --plot name the same file; name two files")
    if request.json_out is not None and request.json_out.suffix.lower() != ".json":
        raise UsageError(f"--json writes JSON; name a .json file (got {request.json_out.suffix or 'no suffix'})")
    if request.threads is not None and not 1 <= request.threads <= 1024:
        raise UsageError(f"--threads must be in 1..1024, got {request.threads}")
    for path, kind in ((request.json_out, "bench-report"), (request.plot, "bench-plot")):
        if path is not None:
            check_output_file(path)
            check_not_input(path, [request.model.model])
            check_replaceable_output(path, kind)
    # none in an artifact, all apart; the owner key is made once the exports made on the fly are known (`run_bench`)
    check_outputs([("--json", request.json_out), ("--plot", request.plot)], make_key=False)
    return names


def _same_path(a: Path, b: Path) -> bool:
    return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


OVERRIDE_NAMES = {"sampler": "method", "guidance_interval": "interval"}  # dip-bench's option names for SamplerSettings fields


def _run_backends(
    loaded: Any, specs: list[BackendSpec], settings: Any, request: BenchRequest, dev: torch.device, console: Console,
    progress: Progress,
) -> None:  # fmt: skip
    """The backend table: rows, the noise warning, the recommendation, the JSON and the plot."""
    from dip_export.measure.autobackend import recommend_from_bench
    from dip_export.measure.bench import plot_report, render_table, run_bench

    report = run_bench(loaded, specs, settings, dev, variants=request.variants, console=console, progress=progress)
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a file or pipe: do not squeeze the table
    if report["noise"]["warning"]:
        say(out, report["noise"]["warning"], style="yellow")
    out.print(render_table(report))
    recommendation = recommend_from_bench(report)
    if recommendation is not None:
        report["recommendation"] = recommendation
        say(out, f"fastest fp32/bf16 backend here: {recommendation}  (dip-sample --backend auto picks by measuring)")
    _write_report(report, request.json_out, request.plot, plot_report, console)


def _run_headline(
    pipe: DiPPipeline, recommended: SamplerSettings, policy: Any, request: BenchRequest, dev: torch.device,
    console: Console, progress: Progress,
) -> None:  # fmt: skip
    """dip-bench --headline: both recipes resolved and said, the work bounded, then measured; the table and the JSON."""
    from dip_export.budget import check_work
    from dip_export.measure.bench import BenchSettings
    from dip_export.measure.headline import (
        FAST,
        Recipe,
        evaluations_per_image,
        fast_sampler,
        headline_line,
        release_recipe,
        render_headline,
        run_headline,
    )  # fmt: skip
    from dip_export.measure.yardstick import REFERENCE_STEPS

    sampler = fast_sampler(recommended, pipe.source.checked_sampling())
    release = release_recipe(sampler, dev)
    runs = request.warmup + max(request.repeats, request.max_repeats) + 1  # + the stage-profiling run
    evals = [evaluations_per_image(sampler), release.evaluations()]
    check_work([n for n in evals for _ in range(runs)], images=request.images, reference=REFERENCE_STEPS)
    spec = pipe.choose_backend()  # the fast recipe's backend, as dip-sample --backend auto resolves it
    fast = Recipe(FAST, spec, sampler, f"--backend auto: {pipe.reason}")
    for recipe in (release, fast):
        say(console, f"{recipe.name}: {_recipe_text(recipe)}")
    bench = BenchSettings(
        sampler, batch=request.images, height=pipe.image_size[0], width=pipe.image_size[1], warmup=request.warmup,
        repeats=policy, cuda_graphs=request.cuda_graphs is not False, threads=request.threads,
    )  # fmt: skip
    assert pipe.source.loaded is not None
    report = run_headline(pipe.source.loaded, (release, fast), bench, dev, console=console, progress=progress)
    out = Console() if Console().is_terminal else Console(width=200)  # a file or pipe: do not squeeze the table
    if report["noise"]["warning"]:
        say(out, report["noise"]["warning"], style="yellow")
    out.print(render_headline(report))
    line, style = headline_line(report)
    say(out, line, style=style)
    _write_report(report, request.json_out, None, lambda *_: None, console)


def _recipe_text(recipe: Any) -> str:
    from dip_export.sampling.tokens import forecast_mode

    s = recipe.sampler
    tokens = "" if s.cache_interval == 1 else f", backbone every {s.cache_interval} evaluations, tokens {forecast_mode(s)}"
    grid = ", the model's fitted grid" if s.grid is not None else ""
    return f"{recipe.spec}; {recipe.why}; {s.method} {s.steps} steps{grid}{tokens}, guidance {s.cfg:g}"


def _yardstick_runs(request: BenchRequest) -> tuple[list[str], list[int]]:
    """The --samplers names and --nfe counts, checked (and the work they ask for bounded) before any work."""
    from dip_export.budget import check_work
    from dip_export.measure.yardstick import REFERENCE_STEPS
    from dip_export.sampling.rules import SOLVERS
    from dip_export.settings import choice_list

    names = choice_list(request.samplers or "", "--samplers", SOLVERS)  # before the reference is computed
    counts = parse_int_list(DEFAULT_NFE if request.nfe is None else request.nfe, "--nfe")
    counts = [exact_int(n, "--nfe", 1, MAX_STEPS) for n in counts]  # every count, before any model or work
    if len(set(counts)) != len(counts):
        raise UsageError("--nfe names a count twice; name each once")
    check_work(counts, images=request.images, reference=REFERENCE_STEPS)
    return names, counts


def _run_yardstick(
    loaded: Any, bench: Any, spec: BackendSpec, request: BenchRequest, dev: torch.device, console: Console
) -> None:
    """dip-bench --samplers: PSNR against the converged reference per solver and evaluation count, on one backend."""
    from dip_export.measure.harness import cpu_threads, physical_cores
    from dip_export.measure.yardstick import Yardstick, measure
    from dip_export.measure.yardstick import plot as plot_yardstick

    names, counts = _yardstick_runs(request)
    sampler = bench.sampler
    from dataclasses import replace

    from dip_export.measure.yardstick import heun_counts, plan_runs

    plan_runs(names, counts, replace(sampler, grid=None))  # every row's settings, before the engine and the reference
    say(console, f"yardstick on {spec}, {bench.batch} images per solver and count")
    if (note := heun_counts(names, counts)) is not None:
        say(console, note)
    with cpu_threads(bench.threads or physical_cores()) as threads:
        net = make_engine(spec, loaded, (bench.height, bench.width), dev, console, batch=bench.batch)
        y = Yardstick(
            num_samples=bench.batch, cfg=sampler.cfg, shift=sampler.shift, batch=bench.batch, height=bench.height,
            width=bench.width,
        )  # fmt: skip
        report = measure(net, loaded, y, names, counts, sampler, progress=lambda r: say(console,
            f"{r['sampler']:<9} nfe {r['nfe']:>4}  {r['psnr_db']:6.2f} dB  {1000 * r['s_per_image']:8.1f} ms/image"
        ))  # fmt: skip
    report["settings"]["backend"] = str(spec)
    report["settings"]["threads"] = threads
    _write_report(report, request.json_out, request.plot, plot_yardstick, console)


def _write_report(
    report: dict[str, Any], json_out: Path | None, plot: Path | None, plotter: Callable[[dict[str, Any], Path], None],
    console: Console,
) -> None:  # fmt: skip
    """A benchmark's JSON and plot, marked as this tool's, written together or not at all (`output_group`)."""
    from dip_export.io import save_json

    with output_group():
        if json_out is not None:
            save_json(json_out, report, "bench-report")
        if plot is not None:
            plotter(report, plot)
    for written in (json_out, plot):
        if written is not None:
            say(console, f"wrote {written}")


def run_export_onnx(
    model: ModelRequest, build: BuildSettings, image_size: str | None, output_dir: Path | None, console: Console
) -> Path:
    """dip-export onnx: the verified ONNX graphs and manifest (int8 / fp8: calibrated Q/DQ graphs)."""
    from dip_export.budget import check_export
    from dip_export.export.manifest import check_export_target
    from dip_export.export.onnx_export import export_onnx
    from dip_export.generate import check_image_size
    from dip_export.pipeline import open_source
    from dip_export.runtime.catalog import EXPORT_PACKAGES, check_packages

    check_packages(EXPORT_PACKAGES, "dip-export onnx")  # before any file is read
    if output_dir is not None:
        check_export_target(output_dir)
    check_outputs_apart([("--output-dir", output_dir)], make_key=False)  # the owner key is made once every output
    # is known: the default folder and an int8 run's fp32 export are named after the model (`check_export_run`)
    if image_size is not None:
        parse_image_size(image_size)

    def fits(config: Any, size: tuple[int, int]) -> None:  # tracing and verifying hold the weights several times: checked
        check_export(config, *(parse_image_size(image_size) if image_size is not None else size))  # before it is built

    source = open_source(model.model, preset=model.preset, weights=model.weights, trust_checkpoint=model.trust,
                         revision=model.revision, check=fits)  # fmt: skip
    if source.loaded is None:
        raise UsageError(f"{model.model} is an export folder already; export from a checkpoint")
    loaded = source.loaded
    size = parse_image_size(image_size or loaded.config.image_size)
    check_image_size(*size, loaded.config.patch_size)
    say_assumed_size(source, image_size, size, console)
    if build.precision in ("int8", "fp8"):
        from dip_export.export.quantize import export_int8

        return export_int8(loaded, image_size=size, target=build.target, output_dir=output_dir, console=console,
                           fp8=build.precision == "fp8")  # fmt: skip
    return export_onnx(loaded, precision=build.precision, image_size=size, opset=build.opset, output_dir=output_dir,
                       console=console)  # fmt: skip


def run_export_trt(
    precision: str, source: Path | None, output_dir: Path | None, batch: str, timing_cache: Path | None, opt_level: int,
    console: Console,
) -> None:  # fmt: skip
    """dip-export trt: TensorRT engines for an export folder (SOURCE, --output-dir, or the newest under engines/)."""
    from dip_export.export.onnx_export import EXPORT_ROOT
    from dip_export.export.trt_build import (
        BatchProfile,
        build_trt,
        check_build_options,
        check_precision_supported,
        check_timing_cache,
        export_for_source,
    )  # fmt: skip
    from dip_export.runtime.catalog import check_available
    from dip_export.runtime.trt_support import gpu_identity, import_tensorrt

    profile = BatchProfile.parse(batch)
    # none inside an artifact (the export it builds for too), apart; the owner key is made once the export folder is
    # known (`build_trt`, or the export made from a checkpoint SOURCE)
    check_outputs([("--timing-cache", timing_cache)], make_key=False)
    check_build_options(precision, opt_level)
    if source is not None and output_dir is not None:
        raise UsageError("give the export as SOURCE or as --output-dir, not both")
    check_outputs_apart([("--output-dir", output_dir), ("--timing-cache", timing_cache)], make_key=False)
    from_model = source is not None and source.is_file()
    check_available("trt", from_model=from_model)  # what is missing comes first, before an export is made
    if source is not None:
        import_tensorrt()
        check_precision_supported(precision, gpu_identity()[1])  # this GPU builds it: before the export it builds from
        check_timing_cache(timing_cache)
        output_dir = export_for_source(source, console, max_batch=profile.max)
    build_trt(
        precision=precision, output_dir=output_dir, root=EXPORT_ROOT, profile=profile,
        timing_cache=timing_cache, opt_level=opt_level, console=console,
    )  # fmt: skip


@dataclass(frozen=True)
class ScheduleRequest:
    """dip-export schedule: which solver grid to fit, on how many images, written where."""

    model: ModelRequest
    output: Path
    sampler: str
    nfe: int
    cfg: float
    shift: float = 1.0
    band: str | None = None  # "LO,HI": the guidance weights the stored grid serves
    train_images: int = 64
    heldout_images: int = 32
    sweeps: int = 6
    seed: int = 0
    batch: int = 32
    score: str = "pooled"  # the fit's score on the training images (sampling.reference.FIT_SCORES)
    recommend: bool = False  # also store sampler, nfe, cfg and shift as the model's recommended settings


def run_schedule(request: ScheduleRequest, console: Console, progress: Progress) -> None:
    """dip-export schedule: fit a grid (yardstick.fit_schedule) and write the model with it in its sampling defaults."""
    from dip_export.budget import RunShape, check_run
    from dip_export.checkpoint import save_checkpoint
    from dip_export.measure.yardstick import fit_schedule
    from dip_export.pipeline import open_source
    from dip_export.runtime.backends import make_torch_engine
    from dip_export.sampling.fitgrid import trial_count
    from dip_export.sampling.grids import recommended, stored_with

    fit = _check_schedule_request(request)
    m = request.model
    images = request.train_images + request.heldout_images

    def fits(config: Any, size: tuple[int, int]) -> None:  # the fit's sampler runs on the CPU: checked before it is built
        h, w = size
        batch = min(request.batch, max(request.train_images, request.heldout_images))  # the batch really run
        check_run(config, RunShape(batch, h, w, samples=images), torch.device("cpu"))

    source = open_source(m.model, preset=m.preset, weights=m.weights, trust_checkpoint=m.trust, revision=m.revision,
                         check=fits)  # fmt: skip
    if source.loaded is None:
        raise UsageError(f"{m.model} is an export folder; fit on its checkpoint (exports made from it carry the grid)")
    loaded = source.loaded
    net = make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
    size = parse_image_size(loaded.config.image_size)
    label = f"fitting {fit.sampler} {fit.nfe} at guidance {fit.cfg}"
    with progress:
        task = progress.add_task(label, total=trial_count(fit.search, fit.start()))
        entry, info = fit_schedule(net, loaded, fit, size, request.batch, lambda n, best: progress.update(
            task, completed=n, description=f"{label}: {best:.1f} dB (train)"
        ))  # fmt: skip
    say(
        console,
        f"held-out PSNR vs {info['reference']} ({info['heldout_images']} images): default grid {info['default_grid_db']:.1f} dB, "
        f"fitted {info['fitted_grid_db']:.1f} dB, Euler-100 {info['euler_100_db']:.1f} dB",
    )
    if info["fitted_grid_db"] < info["default_grid_db"]:  # overfitted to the training seeds: sampling would get worse
        raise ExportError("the fitted grid is worse than the default on held-out images; not stored (try more --train-images)")
    sampling, replaced = stored_with(loaded.sampling, entry)
    if replaced:
        say(console, f"this grid replaces {replaced} stored for {fit.sampler} {fit.nfe} at guidance it also serves",
            style="yellow")  # fmt: skip
    if request.recommend:
        sampling = recommended(sampling, fit.start())
    save_checkpoint(request.output, loaded.module(), sampling)
    say(console, f"wrote {request.output}")


def _check_schedule_request(request: ScheduleRequest) -> Any:
    """The fit's settings, after every check that needs no model (output, counts, band, seed, solver)."""
    from dip_export.budget import MAX_SCHEDULE_BATCH
    from dip_export.checkpoint import DEMO_CHECKPOINT, check_checkpoint_name
    from dip_export.measure.yardstick import GridFit
    from dip_export.sampling.fitgrid import GridFamily, SearchSettings
    from dip_export.sampling.reference import FIT_SCORES

    r = request
    if r.output.suffix != ".safetensors":
        raise UsageError(f"--output must name a .safetensors file, got {r.output}")
    check_checkpoint_name(r.output)  # what save_checkpoint will refuse after the fit, refused before it
    check_output_file(r.output)
    check_not_input(r.output, [r.model.model, DEMO_CHECKPOINT])  # never over the input, nor over the bundled model
    check_replaceable_output(r.output, "checkpoint")
    check_outputs([("--output", r.output)])  # none inside an artifact of this tool; the owner key, made or read now
    images = (r.train_images, r.heldout_images)
    if min(*images, r.sweeps) < 1 or max(images) > 1000 or r.sweeps > 100:
        raise UsageError("--train-images and --heldout-images must be in 1..1000, --sweeps in 1..100")
    exact_int(r.batch, "--batch", 1, MAX_SCHEDULE_BATCH)
    lo_hi = _parse_band(r.band)
    if lo_hi is not None and not lo_hi[0] <= r.cfg <= lo_hi[1]:
        raise UsageError(f"--band {lo_hi[0]:g},{lo_hi[1]:g} leaves out --cfg {r.cfg:g}, the guidance the grid is fitted at")
    check_seed(r.seed, "--seed")
    one_of(r.score, "--score", FIT_SCORES)
    exact_int(r.nfe, "--nfe", 1, MAX_STEPS)  # the option as typed (the solver's settings call it steps)
    GridFamily(SamplerSettings(steps=r.nfe, cfg=r.cfg, shift=r.shift, method=r.sampler))  # settings, then a fittable solver
    return GridFit(r.sampler, r.nfe, r.cfg, r.shift, lo_hi, r.train_images, r.heldout_images,
                   SearchSettings(sweeps=r.sweeps, seed=r.seed), r.score)  # fmt: skip


def _parse_band(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    lo, hi = number_list(text, "--band", decimal_text, count=2, form="LO,HI")
    if not (0 <= lo <= hi <= 100):
        raise UsageError(f"--band must be 0 <= LO <= HI <= 100, got {plain_value(text)}")
    return lo, hi
