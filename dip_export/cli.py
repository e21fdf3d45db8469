"""Command-line entry points: thin typer commands over the stage modules.

Only this module prints errors and chooses exit codes; the library raises `DipError`s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dip_export.errors import DipError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn library errors and Ctrl-C into one red line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DipError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]: nothing partial was kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _app(help_text: str) -> typer.Typer:
    return typer.Typer(help=help_text, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False)


# ---------------------------------------------------------------- dip-sample
sample_app = _app("Generate images from a DiP checkpoint or export.")

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Checkpoint file (.pt/.ckpt/.safetensors) or, for --backend onnx/trt, an export folder. "
        "Omitted: the bundled demo model.",
        show_default=False,
    ),
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="Random-weight architecture: dip-xl-16, dip-l-16, dip-b-16, dip-s-16.")
]
WeightsOpt = Annotated[str, typer.Option("--weights", help="Which weights of a training checkpoint: ema or raw.")]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-checkpoint", help="Allow a pickle that needs arbitrary code to load (only for files you trust)."
    ),
]


@sample_app.command()
@handle_errors
def sample(
    model: ModelArg = None,
    preset: PresetOpt = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class ids, e.g. 207,360.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, one per class.")] = None,
    num_samples: Annotated[int | None, typer.Option(help="N samples: seed S+i, class i % num_classes.")] = None,
    seed: Annotated[int, typer.Option(help="First seed for --num-samples.")] = 0,
    steps: Annotated[int | None, typer.Option(help="Sampling steps [default: the model's, else 100].")] = None,
    cfg: Annotated[float | None, typer.Option(help="Guidance scale [default: the model's, else 1.0].")] = None,
    shift: Annotated[float, typer.Option(help="Time shift (1 = none).")] = 1.0,
    guidance_interval: Annotated[str, typer.Option(help="Guidance applies for lo < t < hi.")] = "0.1,1.0",
    sampler: Annotated[str, typer.Option(help="euler or heun.")] = "euler",
    cache_interval: Annotated[int, typer.Option(help="Run the backbone every K steps, reuse tokens between.")] = 1,
    image_size: Annotated[
        str | None, typer.Option(help="Image size: 256 or HxW, e.g. 256x384 [default: the model's].")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per sampler batch.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(help="torch[:bf16], compile[:bf16], onnx, trt[:fp16|int8].")] = "torch",
    weights: WeightsOpt = "ema",
    trust_checkpoint: TrustOpt = False,
    out: Annotated[Path, typer.Option(help="Output .npz (ADM layout); a PNG grid is written beside it.")] = Path(
        "samples.npz"
    ),
) -> None:
    """Sample images with the flow-matching Euler/Heun sampler and classifier-free guidance.

    Writes OUT (.npz, arr_0 uint8 N x H x W x 3) and OUT with .png (a grid), atomically.
    """
    from dip_export.app import run_sample

    interval = _parse_interval(guidance_interval)
    run_sample(
        model=model, preset=preset, classes=classes, seeds=seeds, num_samples=num_samples, seed=seed,
        steps=steps, cfg=cfg, shift=shift, interval=interval, method=sampler, cache_interval=cache_interval,
        image_size=image_size, batch_size=batch_size, device=device, backend=backend, weights=weights,
        trust=trust_checkpoint, out=out, console=console, progress=progress_bar(),
    )  # fmt: skip


def _parse_interval(text: str) -> tuple[float, float]:
    from dip_export.errors import UsageError

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--guidance-interval must be two numbers lo,hi; got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UsageError(f"--guidance-interval must be finite, got {text!r}")
    return lo, hi


def sample_main() -> None:
    sample_app()


# ---------------------------------------------------------------- dip-export
export_app = _app("Export a DiP to ONNX (backbone and detailer separately) and build TensorRT engines.")


@export_app.callback()
def _export_group() -> None:
    """Export a DiP to ONNX (backbone and detailer separately) and build TensorRT engines from it."""


@export_app.command("onnx")
@handle_errors
def export_onnx_cmd(
    model: Annotated[
        str | None,
        typer.Argument(help="Checkpoint file; omitted: --preset or the bundled demo model.", show_default=False),
    ] = None,
    preset: PresetOpt = None,
    image_size: Annotated[str | None, typer.Option(help="Fixed at export: 256 or HxW [default: the model's].")] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 inside the graph (I/O stays float32).")] = "fp32",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    output_dir: Annotated[
        Path | None, typer.Option(help="Folder to write [default: engines/<model>-<HxW>-<precision>].")
    ] = None,
    weights: WeightsOpt = "ema",
    trust_checkpoint: TrustOpt = False,
) -> None:
    """Write backbone.onnx, detailer.onnx and manifest.json, verified with ONNX Runtime.

    Verification against PyTorch at two batch sizes is a hard error: above the tolerance for the
    precision, nothing is written (an earlier export in the folder is left as it was).
    """
    from dip_export.checkpoint import resolve_model
    from dip_export.export.onnx_export import export_onnx
    from dip_export.generate import check_image_size, parse_image_size

    loaded = resolve_model(Path(model) if model else None, preset, weights=weights, trust=trust_checkpoint)
    size = parse_image_size(image_size or loaded.config.image_size)
    check_image_size(*size, loaded.config.patch_size)
    export_onnx(loaded, precision=precision, image_size=size, opset=opset, output_dir=output_dir, console=console)


def export_main() -> None:
    export_app()
