"""The work behind the commands, as keyword-only functions (the CLI only parses and reports)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from dip_export.checkpoint import resolve_model
from dip_export.errors import UsageError
from dip_export.generate import SamplePlan, check_image_size, generate, make_plan, parse_image_size, parse_int_list
from dip_export.io import image_grid, save_npz, save_png
from dip_export.pipeline import make_engine
from dip_export.runtime.factory import GRAPH_BACKENDS, BackendSpec, make_export_engine
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
    if weights not in ("ema", "raw"):
        raise UsageError(f"--weights must be ema or raw, got {weights!r}")
    if batch_size < 1 or shard_batches < 1:
        raise UsageError("--batch-size and --shard-batches must be >= 1")
    target = Path(model) if model is not None else None
    if target is not None and target.is_dir():  # an export folder: ONNX Runtime unless told otherwise
        from dip_export.export.manifest import read_manifest

        manifest = read_manifest(target)
        spec = BackendSpec.parse(backend or ("onnx:int8" if manifest.precision == "int8" else "onnx"))
        config, name, recommended = manifest.config, manifest.name, manifest.sampling
        size = manifest.image_size
        if image_size is not None and parse_image_size(image_size) != size:
            raise UsageError(f"this export is fixed at {size[0]}x{size[1]}; another --image-size needs a new export")
    else:
        spec = BackendSpec.parse(backend or "torch")
        loaded = resolve_model(target, preset, weights=weights, trust=trust)
        config, name, recommended = loaded.config, loaded.name, loaded.sampling
        size = parse_image_size(image_size or config.image_size)
        check_image_size(*size, config.patch_size)
    settings = SamplerSettings(
        steps=steps if steps is not None else int(recommended.get("steps", 100)),
        cfg=cfg if cfg is not None else float(recommended.get("cfg", 1.0)),
        shift=shift,
        interval=interval,
        method=method if method is not None else str(recommended.get("sampler", "euler")),
        cache_interval=cache_interval if cache_interval is not None else int(recommended.get("cache_interval", 1)),
        token_forecast=token_forecast if token_forecast is not None else str(recommended.get("token_forecast", "off")),
    )
    plan = _plan(config.num_classes, classes, seeds, num_samples, seed, class_file)
    # only now the heavy part: engines, and exports made on the fly
    if target is not None and target.is_dir():
        net = make_export_engine(spec, target, dev)
    else:
        net = make_engine(spec, loaded, size, dev, console, batch=batch_size)

    def make_images(part: SamplePlan, on_step: Callable[[int], None] | None = None) -> np.ndarray:
        return generate(
            net, part, settings, null_class=config.null_class, height=size[0], width=size[1],
            batch_size=batch_size, device=dev, on_step=on_step, cuda_graphs=cuda_graphs and spec.name in GRAPH_BACKENDS,
        )  # fmt: skip

    if world.size > 1 or resume:
        identity = {
            "model": name, "source": str(target or preset or "demo"), "backend": str(spec), "weights": weights,
            "sampler": settings.__dict__, "size": list(size),
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
            save_png(png_dir / f"{i:06d}.png", image)
    console.print(f"wrote {out} ({images.shape[0]} x {size[0]}x{size[1]}) and {out.with_suffix('.png')}")


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
    from dip_export.distributed import parts_dir, run_sharded

    world.init(device)
    try:
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
    sampler: str = "euler",
    token_forecast: str = "off",
    samplers: str | None = None,
    nfe: str = "10,15,20,25,50,100",
) -> None:
    import json

    from dip_export.bench import BenchSettings, plot_report, render_table, run_bench
    from dip_export.io import atomic_path

    specs = [BackendSpec.parse(b) for b in backends.split(",") if b.strip()]
    if steps < 1 or batch < 1 or repeats < 1 or warmup < 0:
        raise UsageError("--steps, --batch and --repeats must be >= 1, --warmup >= 0")
    dev = resolve_device(device)
    loaded = resolve_model(Path(model) if model else None, preset, weights=weights, trust=trust)
    size = parse_image_size(image_size or loaded.config.image_size)
    check_image_size(*size, loaded.config.patch_size)
    settings = BenchSettings(
        steps=steps, batch=batch, cfg=cfg, height=size[0], width=size[1], warmup=warmup, repeats=repeats,
        cache_interval=cache_interval, cuda_graphs=cuda_graphs, sampler=sampler, token_forecast=token_forecast,
    )  # fmt: skip
    SamplerSettings(
        steps=steps, cfg=cfg, cache_interval=cache_interval, method=sampler, token_forecast=token_forecast
    )  # validates before any work
    if samplers is not None:
        _run_yardstick(loaded, settings, samplers, nfe, backends, dev, json_out, plot, console)
        return
    report = run_bench(loaded, specs, settings, dev, variants=variants, console=console, progress=progress)
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a file or pipe: do not squeeze the table
    out.print(render_table(report))
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if plot is not None:
        plot_report(report, plot)
        console.print(f"wrote {plot}")


def _run_yardstick(
    loaded: Any, bench: Any, samplers: str, nfe: str, backends: str, dev: torch.device,
    json_out: Path | None, plot: Path | None, console: Console,
) -> None:  # fmt: skip
    """dip-bench --samplers: PSNR against the converged reference per solver and evaluation count."""
    import json

    from dip_export.io import atomic_path
    from dip_export.runtime.factory import BackendSpec
    from dip_export.yardstick import Yardstick, measure
    from dip_export.yardstick import plot as plot_yardstick

    names = [s.strip() for s in samplers.split(",") if s.strip()]
    for name in names:
        SamplerSettings(method=name)  # validates the names
    counts = parse_int_list(nfe, "--nfe")
    spec = BackendSpec.parse(backends.split(",")[0] if backends.count(",") == 0 else "torch")
    net = make_engine(spec, loaded, (bench.height, bench.width), dev, console, batch=bench.batch)
    y = Yardstick(num_samples=max(bench.batch, 1), cfg=bench.cfg, batch=bench.batch, height=bench.height, width=bench.width)
    base = SamplerSettings(cfg=bench.cfg, cache_interval=bench.cache_interval, token_forecast=bench.token_forecast)
    report = measure(net, loaded, y, names, counts, base, progress=lambda r: console.print(
        f"{r['sampler']:>9} nfe {r['nfe']:>4}  {r['psnr_db']:6.2f} dB  {1000 * r['s_per_image']:8.1f} ms/image"
    ))  # fmt: skip
    report["settings"]["backend"] = str(spec)
    if json_out is not None:
        with atomic_path(json_out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if plot is not None:
        plot_yardstick(report, plot)
        console.print(f"wrote {plot}")
