"""Command-line entry points: thin typer commands over the stage modules.

Only this module prints errors and chooses exit codes; the library raises `DipError`s.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sys
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dip_export.errors import DipError, KeptFilesWarning
from dip_export.messages import safe_progress, say
from dip_export.ownership import check_file_text
from dip_export.runtime.catalog import BENCH_DEFAULT, backend_help
from dip_export.settings import decimal_text, number_list, whole_text
from dip_export.signals import OUTCOME, dropped

try:  # typer >= 0.20 carries its own click
    from typer._click.exceptions import ClickException
    from typer._click.exceptions import UsageError as ClickUsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException  # type: ignore[no-redef,assignment]
    from click.exceptions import UsageError as ClickUsageError  # type: ignore[no-redef,assignment]

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def print_error(message: str) -> None:
    """Every error is one line: `error: ...` on stderr."""
    say(console, message, prefix="[red]error:[/red] ")


def run_app(app: typer.Typer) -> None:
    """Run a command; parse errors of typer/click become one line too (exit 2), not a box."""
    try:
        refuse_repeated_options(typer.main.get_command(app), sys.argv[1:])
        code = app(standalone_mode=False)
    except ClickException as err:
        hint = " (see --help)" if err.exit_code == 2 else ""
        print_error(err.format_message() + hint)
        sys.exit(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C while the command line is read, before a command runs
        _say_interrupted(exit=sys.exit)
    sys.exit(code if isinstance(code, int) else 0)


# Options meant to be given more than once (by their first spelling); none today: every option holds one value.
REPEATABLE: frozenset[str] = frozenset()


def refuse_repeated_options(command: Any, args: list[str]) -> None:
    """An option given twice (by any of its spellings: an old name, --no-X) is refused, naming it, before any work:
    the parser would keep the last value and drop the others without a word. So is an option or argument given an
    empty value (`--out ""` would be read as the current folder)."""
    seen: dict[int, str] = {}
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            return  # the rest are arguments
        if token == "":  # an argument given empty (`dip-sample ""`): never read as the current folder
            raise ClickUsageError("an argument is given empty; give a value or leave it out")
        if not token.startswith("-") or token == "-":
            sub = getattr(command, "commands", {}).get(token)  # a group's subcommand: its own options follow
            command = sub if sub is not None else command
            continue
        given, equals, value = token.partition("=")
        param = _option_named(command, given)
        if param is None:
            continue  # an unknown name: the parser says so
        if not (param.is_flag or param.count):
            taken = value if equals else next(tokens, None)  # its value, whatever it looks like
            if taken == "":
                raise ClickUsageError(f"{param.opts[0]} is given an empty value; give one or leave the option out")
        if getattr(param, "multiple", False) or param.opts[0] in REPEATABLE:
            continue
        if id(param) in seen:
            first = seen[id(param)]
            also = "" if given == first else f" (as {first} and {given})"
            raise ClickUsageError(f"{param.opts[0]} is given twice{also}; give each option once")
        seen[id(param)] = given


def _option_named(command: Any, name: str) -> Any:
    for param in getattr(command, "params", []):
        if name in (*getattr(param, "opts", ()), *getattr(param, "secondary_opts", ())) and name.startswith("-"):
            return param
    return None


class _Interrupt:
    """Whether Ctrl-C (SIGINT) or SIGTERM came during the running command, and which. The handler the CLI installs
    sets it, then raises KeyboardInterrupt as Python's own does for Ctrl-C (SIGTERM too: the command's clean-up runs,
    no partial output is left); a library that catches that and raises something else instead (torch's exporter: a
    TypeError, then its ConversionError) still ends the command as interrupted."""

    received = False
    raised = False  # the command is ending: a later signal changes nothing (it would break into the ending)
    signum = signal.SIGINT

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        if cls.raised:
            return
        if not cls.received:
            cls.received, cls.signum = True, signal.Signals(signum)
        if _swallowing(frame):  # raised there, it would be printed and dropped: the signal comes again shortly
            again = threading.Timer(0.005, os.kill, (os.getpid(), signum))
            again.daemon = True
            again.start()
            return
        cls.raised = True
        raise KeyboardInterrupt

    @classmethod
    @contextlib.contextmanager
    def watched(cls) -> Iterator[None]:
        """Install the handler for one command: for SIGINT where a Python handler is in place, for SIGTERM where the
        OS default or a Python handler is, each on its own (a command started in the background of a script has SIGINT
        ignored and SIGTERM still to handle); not where a signal is ignored or handled outside Python, nor off the main
        thread. The previous handlers are back afterwards, the flag down."""
        main = threading.current_thread() is threading.main_thread()
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)} if main else {}
        taken = {signum: handler for signum, handler in previous.items()
                 if callable(handler) or (signum == signal.SIGTERM and handler == signal.SIG_DFL)}  # fmt: skip
        if not taken:  # off the main thread, or each signal ignored (SIG_IGN) or set outside Python
            yield
            return
        cls.received, cls.raised, cls.signum = False, False, signal.SIGINT
        for signum in taken:
            signal.signal(signum, cls.handler)
        try:
            yield
        finally:
            for signum, handler in taken.items():
                signal.signal(signum, handler)
            cls.received = cls.raised = False


def _swallowing(frame: Any) -> bool:
    """The frame runs inside one whose exceptions the interpreter prints as 'Exception ignored' and drops (the
    weakref callback of an import lock, an object's finaliser, or the constructor of an object that has one), or
    inside an import (imports run all through a
    command: a module's code may run under a C++ extension, torch's, which aborts on an exception it cannot pass)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.startswith("<frozen importlib") or _finalised_init(frame):
            return True
        frame = frame.f_back
    return False


def _finalised_init(frame: Any) -> bool:
    """The frame is the constructor of an object with a finaliser (a ZipFile that np.savez opens): interrupted
    there, the half-made object's finaliser fails later and prints 'Exception ignored' with its traceback."""
    if frame.f_code.co_name != "__init__" or frame.f_code.co_argcount < 1:
        return False
    first = frame.f_locals.get(frame.f_code.co_varnames[0])
    return first is not None and getattr(type(first), "__del__", None) is not None


def _warnings_said() -> Callable[..., None]:
    """A `warnings.showwarning` that says the tool's own warnings (`KeptFilesWarning`) as one line through `say`,
    and shows any other as it was shown before."""
    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, KeptFilesWarning):
            say(console, str(message), prefix="[yellow]warning:[/yellow] ")
        else:
            shown(message, category, filename, lineno, file, line)

    return show


def handle_errors(func: F) -> F:
    """Turn library errors and Ctrl-C into one red line and an exit code. After a Ctrl-C, any exception that reaches
    here is the interruption (whatever a library turned the KeyboardInterrupt into): one line, exit 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _Interrupt.watched(), warnings.catch_warnings():
            warnings.simplefilter("always", KeptFilesWarning)
            warnings.showwarning = _warnings_said()
            try:
                done = func(*args, **kwargs)
            except Exception as err:
                if _Interrupt.received:
                    _say_interrupted()
                if isinstance(err, DipError):
                    print_error(str(err))
                    raise typer.Exit(err.exit_code) from None
                if isinstance(err, OSError):  # a file that vanished or cannot be read mid-run: still one line
                    where = f"{err.filename}: " if err.filename else ""
                    print_error(f"{where}{err.strerror or err}")
                    raise typer.Exit(1) from None
                raise
            except KeyboardInterrupt:
                _say_interrupted()
            if _Interrupt.received:  # a library caught the KeyboardInterrupt and went on to the end
                _say_interrupted()
            return done

    return wrapper  # type: ignore[return-value]


def _say_interrupted(exit: Callable[[int], Any] | None = None) -> typing.NoReturn:
    """The one line, with further Ctrl-C ignored while it is written (a second one would break into the write);
    the handler in place before is back once it is out."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for signum in previous:
            signal.signal(signum, dropped)
    except ValueError:  # off the main thread: signals are the main thread's
        previous = {}
    terminated = _Interrupt.received and _Interrupt.signum == signal.SIGTERM
    try:
        say(console, OUTCOME, prefix="[red]terminated[/red]: " if terminated else "[red]interrupted[/red]: ")
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
    code = 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    if exit is not None:
        exit(code)
    raise typer.Exit(code) from None


def progress_bar() -> Progress:
    return safe_progress(  # type: ignore[no-any-return]
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def whole_number(text: str) -> int:
    """The parser of every int option (`settings.whole_text`): no `1.0`, `1_0`, `1e3` or spaces."""
    return _as_option_value(whole_text, text)


def decimal_number(text: str) -> float:
    """The parser of every float option (`settings.decimal_text`): a finite decimal; no `nan`, `inf` or `1_5`."""
    return _as_option_value(decimal_text, text)


def _as_option_value(parse: Callable[[Any, str], Any], text: Any) -> Any:
    if isinstance(text, (int, float)) and not isinstance(text, bool):  # a default, not typed by the user
        return text
    try:
        return parse(text, "")
    except DipError as err:
        raise typer.BadParameter(str(err).strip()) from None


def _number_parser(annotation: Any) -> Callable[[str], Any] | None:
    """whole_number for an int (or int | None) parameter, decimal_number for a float one, else None."""
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    if annotation is int:
        return whole_number
    if annotation is float:
        return decimal_number
    return None


# the Path parameters that name one file (read or written) and those that name a folder: each is one or the other
FILE_PARAMS = frozenset({"out", "class_file", "output", "json_out", "plot", "timing_cache"})
FOLDER_PARAMS = frozenset({"png_dir", "output_dir", "source"})


def file_path(text: Any) -> Path:
    """The parser of every option naming a file: a name ending in '/' names a folder (a Path would drop the '/')."""
    if isinstance(text, Path):  # a default, not typed by the user
        return text
    try:
        check_file_text(text, "")
    except DipError as err:
        raise typer.BadParameter(str(err).strip()) from None
    return Path(text)


def _path_parser(name: str, annotation: Any) -> Callable[[str], Any] | None:
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        kinds = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else None
    if annotation is not Path:
        return None
    if name not in FILE_PARAMS | FOLDER_PARAMS:
        raise TypeError(f"the Path parameter {name} is neither in FILE_PARAMS nor in FOLDER_PARAMS")
    return file_path if name in FILE_PARAMS else None


def strict_numbers(func: F) -> F:
    """Give every int and float parameter of a command its strict parser (typer's own rounds "2.0" and takes "1_0"),
    and every parameter naming a file its own (`file_path`)."""
    hints = typing.get_type_hints(inspect.unwrap(func), include_extras=True)  # evaluated once: typer sees these objects
    for name, hint in hints.items():
        if typing.get_origin(hint) is not Annotated:
            continue
        base, *metadata = typing.get_args(hint)
        parser = _number_parser(base) or _path_parser(name, base)
        for info in metadata:
            if parser is not None and isinstance(info, typer.models.ParameterInfo) and info.parser is None:
                info.parser = parser
                if parser is file_path and info.metavar is None:
                    info.metavar = "<path>"  # as click shows a path it parses itself
    for target in {func, inspect.unwrap(func)}:
        target.__annotations__ = dict(hints)
    return func


class _Typer(typer.Typer):
    """A Typer whose commands all parse numbers strictly (one parser for every int, one for every float)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)
        return lambda func: register(strict_numbers(func))


def _app(help_text: str) -> typer.Typer:
    # no markup in help texts: "[default: ...]" and "org/name(/FILE)" are meant literally
    return _Typer(
        help=help_text, add_completion=False, pretty_exceptions_enable=False, no_args_is_help=False, rich_markup_mode=None
    )


# ---------------------------------------------------------------- dip-sample
sample_app = _app("Generate images from a DiP checkpoint or export.")

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="Checkpoint file (.pt/.ckpt/.safetensors), an export folder (dip-export onnx), or a Hugging Face Hub repo "
        "org/name (or org/name/FILE). Omitted: the bundled demo model.",
        show_default=False,
    ),
]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", help="Random-weight architecture: dip-xl-16, dip-l-16, dip-b-16, dip-s-16.")
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="Which weights of a training checkpoint: ema or raw [default: ema; given, it needs a checkpoint that holds both].",
        show_default=False,
    ),
]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", help="Hub branch, tag or commit, with an org/name checkpoint.", show_default=False)
]
TrustOpt = Annotated[
    bool,
    typer.Option("--trust-checkpoint", help="Allow a pickle that needs arbitrary code to load (only for files you trust)."),
]


@sample_app.command()
@handle_errors
def sample(
    model: ModelArg = None,
    preset: PresetOpt = None,
    classes: Annotated[str | None, typer.Option(help="Comma-separated class ids, e.g. 207,360.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, one per class (0..2^63-1).")] = None,
    num_samples: Annotated[int | None, typer.Option(help="N samples: seed S+i, class i % num_classes.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="First seed for --num-samples, or for --classes without --seeds (0..2^63-1) [default: 0]."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Sampling steps [default: the model's, else 100].")] = None,
    cfg: Annotated[float | None, typer.Option(help="Guidance scale [default: the model's, else 1.0].")] = None,
    shift: Annotated[float | None, typer.Option(help="Time shift (1 = none) [default: the model's, else 1].")] = None,
    guidance_interval: Annotated[
        str | None, typer.Option(help="Guidance applies for lo < t < hi [default: the model's, else 0.1,1.0].")
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="euler, heun, ab2, ab3, dpmpp_2m or unipc [default: the model's, else euler]. --steps counts network"
            " evaluations per image for all but heun, whose N steps make 2N - 1."
        ),
    ] = None,
    cache_interval: Annotated[
        int | None, typer.Option(help="Run the backbone every K evaluations; tokens between are reused or forecast.")
    ] = None,
    token_forecast: Annotated[
        str | None,
        typer.Option(help="Tokens between backbone runs: off (reuse), linear, quadratic, auto [default: the model's: off]."),
    ] = None,
    image_size: Annotated[str | None, typer.Option(help="Image size: 256 or HxW, e.g. 256x384 [default: the model's].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per sampler batch [default: 16].")] = None,
    batch_alias: Annotated[int | None, typer.Option("--batch", hidden=True)] = None,  # the old name of --batch-size
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    backend: Annotated[
        str | None,
        typer.Option(
            help=f"name[:precision] of {backend_help()}; or auto: the fastest fp32/bf16 backend of "
            "this machine, measured once and cached under engines/ [default: torch; onnx for an export folder]."
        ),
    ] = None,
    cuda_graphs: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="Replay each step as one CUDA graph; --cuda-graphs is refused where it "
            "cannot apply [default: wherever it applies: CUDA; torch, compile, trt].",
            show_default=False,
        ),
    ] = None,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    revision: RevisionOpt = None,
    out: Annotated[Path, typer.Option(help="Output .npz (ADM layout); a PNG grid is written beside it.")] = Path("samples.npz"),
    class_file: Annotated[Path | None, typer.Option(help="Class of sample i on line i (with --num-samples).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Write shards next to OUT and skip finished ones on rerun (always on under torchrun).")
    ] = False,
    shard_batches: Annotated[
        int | None, typer.Option(help="Batches per shard file (with --resume or under torchrun) [default: 4].")
    ] = None,
    png_dir: Annotated[Path | None, typer.Option(help="Also write every image as PNG into this folder.")] = None,
) -> None:
    """Sample images with the flow-matching sampler (Euler, Heun or a multistep solver) and classifier-free guidance.

    Writes OUT (.npz, arr_0 uint8 N x H x W x 3) and OUT with .png (a grid), atomically.

    Under torchrun each rank samples its share into shards (OUT.parts/); rank 0 merges them.

    The result is the same for any number of workers, and a rerun resumes.
    """
    from dip_export.app import ModelRequest, SampleRequest, run_sample

    interval = _parse_interval(guidance_interval)
    sampling = {"steps": steps, "cfg": cfg, "shift": shift, "guidance_interval": interval, "sampler": sampler,
                "cache_interval": cache_interval, "token_forecast": token_forecast}  # fmt: skip
    request = SampleRequest(
        ModelRequest(model, preset, weights, trust_checkpoint, revision), out, sampling, classes=classes, seeds=seeds,
        num_samples=num_samples, seed=seed, class_file=class_file, image_size=image_size,
        batch_size=_or_default(_old_name(batch_size, batch_alias, "--batch-size"), 16),
        device=device, backend=backend, cuda_graphs=cuda_graphs, resume=resume, shard_batches=shard_batches, png_dir=png_dir,
    )  # fmt: skip
    run_sample(request, console, progress_bar())


def _parse_interval(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    lo, hi = number_list(text, "--guidance-interval", decimal_text, count=2, form="two numbers lo,hi")
    return lo, hi


def sample_main() -> None:
    run_app(sample_app)


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
        typer.Argument(help="Checkpoint file or Hub repo org/name(/FILE); omitted: --preset or the demo.", show_default=False),
    ] = None,
    preset: PresetOpt = None,
    image_size: Annotated[str | None, typer.Option(help="Fixed at export: 256 or HxW [default: the model's].")] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, fp16 or bf16 inside the graph (I/O stays float32), or int8 / fp8 (calibrated).")
    ] = "fp32",
    target: Annotated[
        str, typer.Option(help="int8/fp8 graph for: onnx (ONNX Runtime CPU) or trt (Q/DQ + fp16 for `trtexec --stronglyTyped`).")
    ] = "onnx",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    output_dir: Annotated[Path | None, typer.Option(help="Folder to write [default: engines/<model>-<HxW>-<precision>].")] = None,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    revision: RevisionOpt = None,
) -> None:
    """Write backbone.onnx, detailer.onnx and manifest.json, verified with ONNX Runtime.

    Verification against PyTorch at two batch sizes is a hard error: above the tolerance for the
    precision, nothing is written (an earlier export in the folder is left as it was).
    """
    from dip_export.app import ModelRequest, run_export_onnx
    from dip_export.settings import BuildSettings

    build = BuildSettings(precision=precision, target=target, opset=opset)
    run_export_onnx(ModelRequest(model, preset, weights, trust_checkpoint, revision), build, image_size, output_dir, console)


@export_app.command("schedule")
@handle_errors
def export_schedule_cmd(
    model: Annotated[
        str | None,
        typer.Argument(help="Checkpoint file or Hub repo org/name(/FILE); omitted: the demo.", show_default=False),
    ] = None,
    output: Annotated[Path, typer.Option(help="The model file to write (.safetensors; not the input, not the demo).")] = ...,  # type: ignore[assignment]
    sampler: Annotated[str, typer.Option(help="Solver whose grid is fitted (one evaluation per step).")] = "ab2",
    nfe: Annotated[int, typer.Option(help="Network evaluations per image (= steps).")] = 15,
    cfg: Annotated[float, typer.Option(help="Guidance scale the grid is fitted at.")] = 1.5,
    shift: Annotated[float, typer.Option(help="Time shift (1 = none).")] = 1.0,
    band: Annotated[
        str | None, typer.Option(help="Guidance weights LO,HI that use the grid [default: cfg/1.25,cfg*1.25].")
    ] = None,
    train_images: Annotated[int, typer.Option(help="Training images (seeds 1000000 + 1000 * seed ...).")] = 64,
    heldout_images: Annotated[int, typer.Option(help="Held-out images for the report (seeds 0..N-1).")] = 32,
    sweeps: Annotated[int, typer.Option(help="Passes of the search over the family's coordinates.")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the fit (training seeds, search order): same seed, same grid.")] = 0,
    batch: Annotated[int, typer.Option(help="Images per sampler run.")] = 32,
    score: Annotated[
        str, typer.Option(help="Fit score on the training images: pooled (PSNR of the pooled MSE) or mean (mean per-image PSNR).")
    ] = "pooled",
    recommend: Annotated[
        bool, typer.Option("--recommend", help="Also make --sampler, --nfe, --cfg, --shift the model's recommended settings.")
    ] = False,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    revision: RevisionOpt = None,
) -> None:
    """Fit a solver's time grid for one model and guidance, and store it with the model.

    The grid of --sampler at --nfe evaluations is chosen from a small family (the default warp with
    a chosen number of steps under the guidance bound, and a tilt and a bend of the step widths on
    each side of it) by its PSNR against the converged reference on training seeds; the held-out
    PSNR (default grid, fitted grid, Euler-100) is printed, and a grid worse than the default is not
    stored. The grid goes into the model's sampling defaults (exports made from the file carry it in
    their manifest); sampling with the same solver, count, shift and a guidance weight in the band
    uses it.
    """
    from dip_export.app import ModelRequest, ScheduleRequest, run_schedule

    request = ScheduleRequest(
        ModelRequest(model, None, weights, trust_checkpoint, revision), output, sampler, nfe, cfg, shift=shift, band=band,
        train_images=train_images, heldout_images=heldout_images, sweeps=sweeps, seed=seed, batch=batch,
        score=score, recommend=recommend,
    )  # fmt: skip
    run_schedule(request, console, progress_bar())


def export_main() -> None:
    run_app(export_app)


# ---------------------------------------------------------------- dip-bench
bench_app = _app("Benchmark every backend on the same seeds: speed, quality, memory, FLOPs.")


@bench_app.command()
@handle_errors
def bench(
    model: Annotated[
        str | None,
        typer.Argument(help="Checkpoint file or Hub repo org/name(/FILE); omitted: --preset or the demo.", show_default=False),
    ] = None,
    preset: PresetOpt = None,
    steps: Annotated[
        int | None, typer.Option(help="Steps per run (network evaluations; heun: 2N - 1) [default: the model's, else 100].")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Images per timed run (CFG doubles the network batch) [default: 1; with --headline 32].", show_default=False
        ),
    ] = None,
    batch_alias: Annotated[int | None, typer.Option("--batch", hidden=True)] = None,  # the old name of --batch-size
    cfg: Annotated[
        float | None, typer.Option(help="Guidance scale (1 = no guidance, half the work) [default: the model's, else 1.0].")
    ] = None,
    image_size: Annotated[str | None, typer.Option(help="256 or HxW [default: the model's].")] = None,
    backends: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated name[:precision] list; 'auto' adds the backend --backend auto picks. Backends: "
            f"{backend_help()} [default: {BENCH_DEFAULT}; with --samplers: torch].",
            show_default=False,
        ),
    ] = None,
    variants: Annotated[bool, typer.Option(help="Also time the sampler savings (token reuse, guidance-1 skip).")] = False,
    cache_interval: Annotated[
        int | None, typer.Option(help="Backbone every K steps in every row [default: the model's: 1].")
    ] = None,
    sampler: Annotated[
        str | None, typer.Option(help="Solver of every row; --steps = evaluations (heun: 2N - 1) [default: the model's: euler].")
    ] = None,
    token_forecast: Annotated[
        str | None, typer.Option(help="off, linear, quadratic or auto (with --cache-interval) [default: the model's: off].")
    ] = None,
    samplers: Annotated[
        str | None,
        typer.Option(help="Yardstick instead of backends: e.g. euler,heun,ab2 against a cached converged reference."),
    ] = None,
    nfe: Annotated[
        str | None, typer.Option(help="Evaluation counts for --samplers [default: 10,15,20,25,50,100].", show_default=False)
    ] = None,
    headline: Annotated[
        bool,
        typer.Option(
            help="The end-to-end speed-up a user gets, in one run: the release's recipe (eager PyTorch, bf16 where the "
            "CPU has it, Euler 100 steps) against the fast one (--backend auto, the model's recommended solver, steps, "
            "stored grid and token forecast), both judged against the converged reference. Takes the model, --cfg, "
            "--shift, --batch-size (images), --image-size and the timing options."
        ),
    ] = False,
    shift: Annotated[
        float | None,
        typer.Option(help="Time shift of every row, of the --samplers runs and their reference [default: the model's, else 1]."),
    ] = None,
    cuda_graphs: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="Whole-step CUDA graphs; --cuda-graphs is refused where no row can use "
            "them [default: wherever they apply: CUDA; torch, compile, trt].",
            show_default=False,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads of every backend: torch and ONNX Runtime intra-op, torch.compile's kernels "
            "[default: the physical cores]."
        ),
    ] = None,
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed runs at least; the median is reported.")] = 5,
    max_repeats: Annotated[
        int | None,
        typer.Option(
            help="Timed runs at most, added one by one while the spread is high [default: 30, or --repeats if more].",
            show_default=False,
        ),
    ] = None,
    target_spread: Annotated[
        float, typer.Option(help="Stop adding runs when the interquartile range / median is below this.")
    ] = 0.05,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG: ms/step on a log axis with spread bars, speed-up against PSNR.")
    ] = None,
    weights: WeightsOpt = None,
    trust_checkpoint: TrustOpt = False,
    revision: RevisionOpt = None,
) -> None:
    """Time eager PyTorch, torch.compile, ONNX Runtime and TensorRT on the same sampler run.

    Speed-ups are against eager PyTorch fp32 doing the same network evaluations, each with its
    spread; PSNR compares the final uint8 images with eager fp32 (and for the demo model at 50 or
    more images per run, a digit classifier scores them). Every backend runs with the same CPU
    thread count, recorded in the JSON with the CPU flags. Sampling settings not given are the
    model's recommendation. Backends that cannot run here are listed as skipped with the reason.
    Exports are cached in engines/.

    --headline instead times the release's recipe against the fast one per image, on the same
    images, each judged against the converged reference; a less accurate fast recipe is flagged.
    """
    from dip_export.app import BenchRequest, ModelRequest, run_bench

    sampling = {"steps": steps, "cfg": cfg, "cache_interval": cache_interval, "sampler": sampler,
                "token_forecast": token_forecast, "shift": shift}  # fmt: skip
    request = BenchRequest(
        ModelRequest(model, preset, weights, trust_checkpoint, revision), sampling, backends=backends,
        batch_size=_old_name(batch_size, batch_alias, "--batch-size"), image_size=image_size, variants=variants,
        cuda_graphs=cuda_graphs, warmup=warmup, repeats=repeats,
        max_repeats=max(30, repeats) if max_repeats is None else max_repeats, target_spread=target_spread,
        threads=threads, device=device, json_out=json_out, plot=plot, samplers=samplers, nfe=nfe, headline=headline,
    )  # fmt: skip
    run_bench(request, console, progress_bar())


def _old_name(value: T | None, old: T | None, name: str) -> T | None:
    """An option given by its new name or its old one (`--batch`), never both (one would be dropped)."""
    if value is not None and old is not None:
        from dip_export.errors import UsageError

        raise UsageError(f"--batch is the old name of {name}; give one of them")
    return old if old is not None else value


def _or_default(value: T | None, default: T) -> T:
    return default if value is None else value


def bench_main() -> None:
    run_app(bench_app)


@export_app.command("trt")
@handle_errors
def export_trt_cmd(
    source: Annotated[
        Path | None,
        typer.Argument(help="Checkpoint file or export folder (default: the most recent export under engines/)."),
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine from the fp16 export (the default).")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="BF16 engine from the bf16 export (Ampere or newer).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine from a symmetric Q/DQ export (calibrated).")] = False,
    fp8: Annotated[bool, typer.Option("--fp8", help="FP8 engine from an E4M3 Q/DQ export (Ada/Hopper or newer).")] = False,
    output_dir: Annotated[
        Path | None, typer.Option(help="Export folder to build from and into [default: the one under engines/].")
    ] = None,
    batch_profile: Annotated[
        str | None,
        typer.Option(
            help="Images per batch MIN,OPT,MAX the engine's profile covers (CFG doubles the rows) [default: 1,1,8].",
            show_default=False,
        ),
    ] = None,
    batch_alias: Annotated[str | None, typer.Option("--batch", hidden=True)] = None,  # the old name of --batch-profile
    timing_cache: Annotated[Path | None, typer.Option(help="Timing cache file, read and updated.")] = None,
    opt_level: Annotated[int, typer.Option(help="Builder optimisation level 0-5 (4-5 help int8/fp8).")] = 3,
) -> None:
    """Build strongly typed TensorRT engines (needs an NVIDIA GPU and the gpu extra).

    SOURCE is a checkpoint (its fp32 export is made under engines/ when missing) or an export folder;
    without it the most recent export under engines/ is used, and named. Precision comes from the ONNX
    graph (TensorRT 11 has no precision flags); the matching export is made inside the export folder
    when missing. Engines are named with TensorRT version, GPU and
    precision and recorded in manifest.json; engines for another GPU or version are rebuilt.
    """
    from dip_export.app import run_export_trt
    from dip_export.errors import UsageError

    chosen = [name for name, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8), ("fp8", fp8)) if on] or ["fp16"]
    if len(chosen) > 1:
        raise UsageError(f"choose one precision, got {', '.join('--' + c for c in chosen)}")
    profile = _old_name(batch_profile, batch_alias, "--batch-profile") or "1,1,8"
    run_export_trt(chosen[0], source, output_dir, profile, timing_cache, opt_level, console)
