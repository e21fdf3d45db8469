"""The work behind the commands, as keyword-only functions (the CLI only parses and reports)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from dip_export.bench import GRAPH_BACKENDS
from dip_export.checkpoint import resolve_model
from dip_export.errors import UsageError
from dip_export.generate import check_image_size, generate, make_plan, parse_image_size, parse_int_list
from dip_export.io import image_grid, save_npz, save_png
from dip_export.runtime.factory import BackendSpec, make_export_engine, make_torch_engine
from dip_export.runtime.torch_engine import resolve_device
from dip_export.sampling import SamplerSettings


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
    method: str,
    cache_interval: int,
    image_size: str | None,
    batch_size: int,
    device: str,
    backend: str,
    cuda_graphs: bool,
    weights: str,
    trust: bool,
    out: Path,
    console: Console,
    progress: Progress,
) -> None:
    spec = BackendSpec.parse(backend)
    dev = resolve_device(device)
    if out.suffix != ".npz":
        raise UsageError(f"--out must end in .npz, got {out}")
    if weights not in ("ema", "raw"):
        raise UsageError(f"--weights must be ema or raw, got {weights!r}")
    target = Path(model) if model is not None else None
    if target is not None and target.is_dir():
        from dip_export.export.manifest import read_manifest

        manifest = read_manifest(target)
        net = make_export_engine(spec, target, dev)
        config, name, recommended = manifest.config, manifest.name, manifest.sampling
        size = manifest.image_size
        if image_size is not None and parse_image_size(image_size) != size:
            raise UsageError(f"this export is fixed at {size[0]}x{size[1]}; another --image-size needs a new export")
    else:
        loaded = resolve_model(target, preset, weights=weights, trust=trust)
        config, name, recommended = loaded.config, loaded.name, loaded.sampling
        size = parse_image_size(image_size or config.image_size)
        check_image_size(*size, config.patch_size)
        if spec.name in ("onnx", "trt"):
            from dip_export.export.onnx_export import ensure_export

            export_dir = ensure_export(loaded, precision=_export_precision(spec), image_size=size, console=console)
            net = make_export_engine(spec, export_dir, dev)
        else:
            net = make_torch_engine(spec, loaded, dev)
    settings = SamplerSettings(
        steps=steps if steps is not None else int(recommended.get("steps", 100)),
        cfg=cfg if cfg is not None else float(recommended.get("cfg", 1.0)),
        shift=shift,
        interval=interval,
        method=method,
        cache_interval=cache_interval,
    )
    plan = make_plan(
        config.num_classes,
        classes=parse_int_list(classes, "--classes") if classes is not None else None,
        seeds=parse_int_list(seeds, "--seeds") if seeds is not None else None,
        num_samples=num_samples,
        seed=seed,
    )
    batches = -(-len(plan) // batch_size) if batch_size > 0 else 0
    with progress:
        task = progress.add_task(f"{name} {spec} {len(plan)} images", total=settings.steps * batches)
        images = generate(
            net, plan, settings, null_class=config.null_class, height=size[0], width=size[1],
            batch_size=batch_size, device=dev, on_step=lambda _: progress.advance(task),
            cuda_graphs=cuda_graphs and spec.name in GRAPH_BACKENDS,
        )  # fmt: skip
    save_npz(out, images)
    save_png(out.with_suffix(".png"), image_grid(images))
    console.print(f"wrote {out} ({images.shape[0]} x {size[0]}x{size[1]}) and {out.with_suffix('.png')}")


def _export_precision(spec: BackendSpec) -> str:
    """The ONNX an engine of this spec is built from (TensorRT int8/fp8 start from the fp32 graph)."""
    if spec.name == "trt" and spec.precision in ("int8", "fp8"):
        return "fp32"
    return spec.precision


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
        cache_interval=cache_interval, cuda_graphs=cuda_graphs,
    )  # fmt: skip
    SamplerSettings(steps=steps, cfg=cfg, cache_interval=cache_interval)  # validates before any work
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
