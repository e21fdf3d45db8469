"""The work behind the commands, as keyword-only functions (the CLI only parses and reports)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from dip_export.errors import ExportError, UsageError
from dip_export.generate import SamplePlan, check_run_limits, check_seed, make_plan, parse_image_size, parse_int_list
from dip_export.io import check_output_file, check_output_folder, image_grid, save_npz, save_png
from dip_export.pipeline import DiPPipeline, make_engine
from dip_export.runtime.factory import BackendSpec
from dip_export.runtime.torch_engine import resolve_device
from dip_export.sampling import SamplerSettings

if TYPE_CHECKING:
    from dip_export.distributed import World


def run_sample(
    *,
    model: str | None,
    preset: str | None,
    classes: str | None,
    seeds: str | None,
    num_samples: int | None,
    seed: int,
    steps: int | None,
    cfg: float | None,
    shift: float,
    interval: tuple[float, float],
    method: str | None,
    cache_interval: int | None,
    image_size: str | None,
    batch_size: int,
    device: str,
    backend: str | None,
    cuda_graphs: bool,
    weights: str,
    trust: bool,
    out: Path,
    console: Console,
    progress: Progress,
    revision: str | None = None,
    class_file: Path | None = None,
    resume: bool = False,
    shard_batches: int = 4,
    png_dir: Path | None = None,
    token_forecast: str | None = None,
) -> None:
    from dip_export.distributed import World

    world = World.from_env()
    dev = world.device(resolve_device(device))
    if out.suffix != ".npz":
        raise UsageError(f"--out must end in .npz, got {out}")
    if batch_size < 1 or shard_batches < 1:
        raise UsageError("--batch-size and --shard-batches must be >= 1")
    check_run_limits(steps=steps, cfg=cfg, batch_size=batch_size, cache_interval=cache_interval)
    check_seed(seed, "--seed")
    if image_size is not None:
        parse_image_size(image_size)
    if shard_batches > MAX_SHARD_BATCHES:
        raise UsageError(f"--shard-batches must be in 1..{MAX_SHARD_BATCHES}, got {shard_batches}")
    check_output_file(out)
    check_output_file(out.with_suffix(".png"))
    if png_dir is not None and png_dir.exists() and not png_dir.is_dir():
        raise UsageError(f"--png-dir {png_dir} exists and is not a folder")
    pipe = DiPPipeline.load(
        model, preset=preset, backend=backend, device=dev, weights=weights, trust_checkpoint=trust, revision=revision,
        image_size=image_size, batch_size=batch_size, console=console,
    )  # fmt: skip
    config, name, size = pipe.config, pipe.name, pipe.image_size
    settings = pipe.sampler_settings(
        steps=steps, cfg=cfg, shift=shift, guidance_interval=interval, sampler=method, cache_interval=cache_interval,
        token_forecast=token_forecast,
    )
    plan = _plan(config.num_classes, classes, seeds, num_samples, seed, class_file)
    if png_dir is not None:
        check_output_folder(png_dir, lambda name: _png_index(name) < len(plan))
    spec = pipe.choose_backend()  # only now the heavy part: measuring (auto), engines, exports made on the fly
    if pipe.reason:
        console.print(f"backend {pipe.reason}")
    pipe.engine()

    def make_images(part: SamplePlan, on_step: Callable[[int], None] | None = None) -> np.ndarray:
        return pipe.generate(part, settings, batch_size=batch_size, cuda_graphs=cuda_graphs, on_step=on_step)

    if world.size > 1 or resume:
        identity = {
            "model": name, "source": str(pipe.source.path or preset or "demo"), "backend": str(spec), "weights": weights,
            "sampler": settings.__dict__, "size": list(size), "content": pipe.source.identity,
        }  # fmt: skip
        images = _run_sharded(plan, out, world, dev, identity, batch_size, shard_batches, make_images, progress, console)
        if images is None:
            return
    else:
        with progress:
            task = progress.add_task(f"{name} {spec} {len(plan)} images", total=settings.steps * -(-len(plan) // batch_size))
            images = make_images(plan, lambda _: progress.advance(task))
        save_npz(out, images)
    save_png(out.with_suffix(".png"), image_grid(images[:256]))
    if png_dir is not None:
        for i, image in enumerate(images):
            save_png(png_dir / _png_name(i), image)
    console.print(f"wrote {out} ({images.shape[0]} x {size[0]}x{size[1]}) and {out.with_suffix('.png')}")


MAX_SHARD_BATCHES = 10_000


def _png_name(index: int) -> str:
    return f"{index:06d}.png"


def _png_index(name: str) -> float:
    """The sample index of a file this command names `NNNNNN.png`; infinity for any other name."""
    stem = name.removesuffix(".png")
    return int(stem) if name.endswith(".png") and stem.isdigit() and _png_name(int(stem)) == name else float("inf")


def _plan(
    num_classes: int, classes: str | None, seeds: str | None, num_samples: int | None, seed: int, class_file: Path | None
) -> SamplePlan:
    if class_file is None:
        return make_plan(
            num_classes,
            classes=parse_int_list(classes, "--classes") if classes is not None else None,
            seeds=parse_int_list(seeds, "--seeds") if seeds is not None else None,
            num_samples=num_samples,
            seed=seed,
        )
    from dip_export.distributed import read_class_file

    if classes is not None or num_samples is None:
        raise UsageError("--class-file goes with --num-samples (and not with --classes)")
    return make_plan(num_classes, classes=read_class_file(class_file, num_classes, num_samples),
                     seeds=[seed + i for i in range(num_samples)])  # fmt: skip


def _run_sharded(
    plan: SamplePlan,
    out: Path,
    world: World,
    device: torch.device,
    identity: dict[str, Any],
    batch_size: int,
    shard_batches: int,
    make_images: Callable[[SamplePlan], np.ndarray],
    progress: Progress,
    console: Console,
) -> np.ndarray | None:
    """torchrun / --resume: shards of whole batches, resumable; rank 0 shows the global count and merges."""
    from dip_export.distributed import check_finished_shards, check_settings, parts_dir, run_settings, run_sharded

    world.init(device)
    try:
        check_settings(parts_dir(out), run_settings(identity, plan, batch_size, shard_batches), world)  # before any output
        check_finished_shards(out, len(plan), batch_size * shard_batches, (*identity["size"], 3))
        if not world.is_main:
            return run_sharded(plan, out, world=world, settings=identity, batch_size=batch_size,
                               shard_batches=shard_batches, make_images=make_images)  # fmt: skip
        folder = parts_dir(out)
        with progress:
            task = progress.add_task(f"{world.size} worker(s), {len(plan)} images", total=len(plan))

            def counted(part: SamplePlan) -> np.ndarray:
                images = make_images(part)
                on_disk = len(list(folder.glob("shard-*.npz"))) * batch_size * shard_batches  # all ranks' finished shards
                progress.update(task, completed=min(len(plan), on_disk + len(part)))
                return images

            images = run_sharded(plan, out, world=world, settings=identity, batch_size=batch_size,
                                 shard_batches=shard_batches, make_images=counted,
                                 on_images=lambda n: progress.update(task, completed=n))  # fmt: skip
            progress.update(task, completed=len(plan))
        console.print(f"shards in {folder}/ (kept for resuming; delete when done)")
        return images
    finally:
        world.close()


MAX_REPEATS = 1000


def run_bench_cmd(
    *,
    model: str | None,
    preset: str | None,
    steps: int,
    batch: int,
    cfg: float,
    image_size: str | None,
    backends: str,
    variants: bool,
    cache_interval: int,
    cuda_graphs: bool,
    warmup: int,
    repeats: int,
    device: str,
    json_out: Path | None,
    plot: Path | None,
    weights: str,
    trust: bool,
    console: Console,
    progress: Progress,
    revision: str | None = None,
    sampler: str = "euler",
    token_forecast: str = "off",
    samplers: str | None = None,
    nfe: str = "10,15,20,25,50,100",
    shift: float = 1.0,
) -> None:

    from dip_export.autobackend import recommend_from_bench
    from dip_export.bench import BenchSettings, plot_report, render_table, run_bench

    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        raise UsageError("--backends is empty; name at least one, e.g. torch")
    specs = [BackendSpec.parse(b) for b in names if b != "auto"]
    if steps < 1 or batch < 1 or repeats < 1 or warmup < 0:
        raise UsageError("--steps, --batch and --repeats must be >= 1, --warmup >= 0")
    check_run_limits(steps=steps, cfg=cfg, batch_size=batch, cache_interval=cache_interval)
    if repeats > MAX_REPEATS or warmup > MAX_REPEATS:
        raise UsageError(f"--repeats and --warmup must be at most {MAX_REPEATS}")
    for path in (json_out, plot):
        if path is not None:
            check_output_file(path)
    dev = resolve_device(device)
    pipe = DiPPipeline.load(
        model, preset=preset, backend="auto" if "auto" in names else None, device=dev, weights=weights,
        trust_checkpoint=trust, revision=revision, image_size=image_size, batch_size=batch, console=console,
    )  # fmt: skip
    loaded = pipe.source.loaded
    if loaded is None:
        raise UsageError("dip-bench runs from a checkpoint, a preset or the demo model, not an export folder")
    size = pipe.image_size
    if "auto" in names:
        chosen = pipe.choose_backend()
        console.print(f"--backend auto: {pipe.reason}")
        specs = list(dict.fromkeys([*specs, chosen]))
    settings = BenchSettings(
        steps=steps, batch=batch, cfg=cfg, height=size[0], width=size[1], warmup=warmup, repeats=repeats,
        cache_interval=cache_interval, cuda_graphs=cuda_graphs, sampler=sampler, token_forecast=token_forecast,
    )  # fmt: skip
    SamplerSettings(
        steps=steps, cfg=cfg, shift=shift, cache_interval=cache_interval, method=sampler, token_forecast=token_forecast
    )  # validates before any work
    if samplers is not None:
        _run_yardstick(loaded, settings, samplers, nfe, backends, dev, json_out, plot, console, shift)
        return
    report = run_bench(loaded, specs, settings, dev, variants=variants, console=console, progress=progress)
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a file or pipe: do not squeeze the table
    out.print(render_table(report))
    recommendation = recommend_from_bench(report)
    if recommendation is not None:
        report["recommendation"] = recommendation
        out.print(f"fastest fp32/bf16 backend here: {recommendation}  (dip-sample --backend auto picks by measuring)")
    _write_report(report, json_out, plot, plot_report, console)


def _run_yardstick(
    loaded: Any, bench: Any, samplers: str, nfe: str, backends: str, dev: torch.device,
    json_out: Path | None, plot: Path | None, console: Console, shift: float = 1.0,
) -> None:  # fmt: skip
    """dip-bench --samplers: PSNR against the converged reference per solver and evaluation count."""

    from dip_export.runtime.factory import BackendSpec
    from dip_export.yardstick import Yardstick, measure
    from dip_export.yardstick import plot as plot_yardstick

    names = [s.strip() for s in samplers.split(",") if s.strip()]
    for name in names:
        SamplerSettings(method=name)  # validates the names
    counts = parse_int_list(nfe, "--nfe")
    spec = BackendSpec.parse(backends.split(",")[0] if backends.count(",") == 0 else "torch")
    net = make_engine(spec, loaded, (bench.height, bench.width), dev, console, batch=bench.batch)
    y = Yardstick(
        num_samples=max(bench.batch, 1), cfg=bench.cfg, shift=shift, batch=bench.batch, height=bench.height, width=bench.width
    )
    base = SamplerSettings(cfg=bench.cfg, shift=shift, cache_interval=bench.cache_interval, token_forecast=bench.token_forecast)
    report = measure(net, loaded, y, names, counts, base, progress=lambda r: console.print(
        f"{r['sampler']:>9} nfe {r['nfe']:>4}  {r['psnr_db']:6.2f} dB  {1000 * r['s_per_image']:8.1f} ms/image"
    ))  # fmt: skip
    report["settings"]["backend"] = str(spec)
    _write_report(report, json_out, plot, plot_yardstick, console)


def _write_report(
    report: dict[str, Any], json_out: Path | None, plot: Path | None, plotter: Callable[[dict[str, Any], Path], None],
    console: Console,
) -> None:  # fmt: skip
    """A benchmark's JSON and plot, each written atomically."""
    import json

    from dip_export.io import atomic_path

    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if plot is not None:
        plotter(report, plot)
        console.print(f"wrote {plot}")


def run_schedule(
    *, model: str | None, output: Path, sampler: str, nfe: int, cfg: float, shift: float, band: str | None,
    train_images: int, heldout_images: int, sweeps: int, seed: int, batch: int, weights: str, trust: bool,
    revision: str | None, console: Console, progress: Progress,
) -> None:  # fmt: skip
    """dip-export schedule: fit a grid (yardstick.fit_schedule) and write the model with it in its sampling defaults."""
    from dip_export.checkpoint import save_checkpoint
    from dip_export.pipeline import open_source
    from dip_export.runtime.factory import make_torch_engine
    from dip_export.sampling.fitgrid import SearchSettings, trial_count
    from dip_export.sampling.grids import stored_with
    from dip_export.yardstick import GridFit, fit_schedule

    if output.suffix != ".safetensors":
        raise UsageError(f"--output must name a .safetensors file, got {output}")
    check_output_file(output)
    if min(train_images, heldout_images, sweeps, batch) < 1 or max(train_images, heldout_images) > 1000 or sweeps > 100:
        raise UsageError("--train-images and --heldout-images must be in 1..1000, --sweeps in 1..100, --batch >= 1")
    lo_hi = _parse_band(band)
    check_seed(seed, "--seed")
    fit = GridFit(sampler, nfe, cfg, shift, lo_hi, train_images, heldout_images, SearchSettings(sweeps=sweeps, seed=seed))
    SamplerSettings(steps=nfe, cfg=cfg, shift=shift, method=sampler, grid=tuple(i / nfe for i in range(nfe + 1)))
    source = open_source(model, weights=weights, trust_checkpoint=trust, revision=revision)
    if source.loaded is None:
        raise UsageError(f"{model} is an export folder; fit on its checkpoint (exports made from it carry the grid)")
    loaded = source.loaded
    net = make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
    size = parse_image_size(loaded.config.image_size)
    with progress:
        task = progress.add_task(f"fitting {sampler} {nfe} at guidance {cfg}", total=trial_count(fit.search, nfe))
        entry, info = fit_schedule(net, loaded, fit, size, batch, lambda n, best: progress.update(
            task, completed=n, description=f"fitting {sampler} {nfe} at guidance {cfg}: {best:.1f} dB (train)"
        ))  # fmt: skip
    console.print(
        f"held-out PSNR vs {info['reference']} ({info['heldout_images']} images): default grid {info['default_grid_db']:.1f} dB, "
        f"fitted {info['fitted_grid_db']:.1f} dB, Euler-100 {info['euler_100_db']:.1f} dB"
    )
    if info["fitted_grid_db"] < info["default_grid_db"]:  # overfitted to the training seeds: sampling would get worse
        raise ExportError("the fitted grid is worse than the default on held-out images; not stored (try more --train-images)")
    save_checkpoint(output, loaded.model, stored_with(loaded.sampling, entry))
    console.print(f"wrote {output}")


def _parse_band(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--band must be LO,HI, got {text!r}") from None
    if not (0 <= lo <= hi <= 100):
        raise UsageError(f"--band must be 0 <= LO <= HI <= 100, got {text!r}")
    return lo, hi
