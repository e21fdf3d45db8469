"""`dip-export onnx`: the backbone and the detailer as two ONNX files, verified against PyTorch.

Reduced precision lives inside the graph (what a strongly typed TensorRT build takes): weights and
matmul/conv work in fp16 or bf16, while RMSNorm statistics, the timestep sinusoid and RoPE stay in
float32 (the model computes them so), and the graph's I/O is float32.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from dip_export.budget import check_export
from dip_export.checkpoint import LoadedModel
from dip_export.errors import ExportError, UsageError
from dip_export.export.manifest import MANIFEST, Manifest, graph_opset, ownership_problem, read_manifest, write_manifest
from dip_export.export.naming import VARIANTS, export_folder_name
from dip_export.export.spec import SubModelSpec, backbone_inputs, io_specs
from dip_export.io import EXPORT_ROOT, atomic_dir, settle_swap
from dip_export.messages import say, say_lines
from dip_export.model import DiP
from dip_export.settings import OPSETS, exact_int, exact_str, one_of, path_text

if TYPE_CHECKING:
    from dip_export.export.calibration import CalibrationSettings

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Max |onnx - torch fp32| / max |torch fp32| per output, by precision of the export.
TOLERANCES = {"fp32": 1e-4, "fp16": 3e-2, "bf16": 6e-2}
VERIFY_BATCHES = (1, 2)  # dynamic batch is checked at two sizes (2 = one CFG pair)
DEFAULT_OPSET = 18
EXTERNAL_DATA_BYTES = 1 << 30  # above this, weights go to a .onnx.data file (protobuf caps at 2 GB)
GRAPH_BYTES = 8 << 20  # the graphs, manifest and verification beside the weights, at most (measured: under 1 MiB)


class _Backbone(nn.Module):
    def __init__(self, model: DiP, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.model.backbone(x.to(self.dtype), t, y).float()


class _Detailer(nn.Module):
    def __init__(self, model: DiP, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        return self.model.detailer(x.to(self.dtype), tokens.to(self.dtype)).float()


def default_export_dir(name: str, precision: str, size: tuple[int, int]) -> Path:
    return EXPORT_ROOT / export_folder_name(name, size, precision)


def managed_folders(name: str, size: tuple[int, int]) -> list[Path]:
    """Every folder the tool makes on the fly under EXPORT_ROOT for a model and size: its exports (each precision,
    quantized ones for ONNX Runtime and TensorRT) and its calibration cache. A run's other outputs stay out of them."""
    return [default_export_dir(name, variant, size) for variant in VARIANTS]


def source_info(loaded: LoadedModel) -> dict[str, str]:
    """The manifest's `source`: the checkpoint (path and sha256), the weights taken from it, and the model's
    identity (`LoadedModel.identity`), which decides whether an export may stand in for the model."""
    path = Path(loaded.source)
    found = {"path": loaded.source, "sha256": ""}
    if path.is_file() or loaded.stamp is not None:
        found = {"path": str(path.resolve()), "sha256": loaded.source_sha256()}
    return {**found, "weights": loaded.weights, "identity": loaded.identity}


def export_file_bytes(config: Any, precision: str) -> int:
    """What an export of this config writes at its peak, from the config alone (before anything is built): the
    weights at the precision's bytes, a quarter more for the exporter's stray files while one graph is re-saved,
    plus the graphs. A quantized export (int8, fp8) holds a pre-processed fp32 copy of one graph while the
    quantized one is written (float parts fp32 at worst): six bytes a weight."""
    from dip_export.budget import parameter_count

    weights = parameter_count(config)
    if precision in ("int8", "fp8"):
        return 6 * weights + GRAPH_BYTES
    return DTYPES[precision].itemsize * weights * 5 // 4 + GRAPH_BYTES


def _check_export_options(precision: str, opset: int) -> tuple[str, int]:
    """The two as plain values (a subclass's own methods never run again). An int8 export is quantized from the fp32
    one (`quantize.ensure_int8_export`, `dip-export onnx --precision int8`): export_onnx itself writes float graphs."""
    precision = exact_str(precision)
    if precision == "int8":
        raise UsageError("export_onnx writes fp32, fp16 or bf16 graphs; an int8 export is quantized from the fp32 one "
                         "(dip_export.export.quantize.ensure_int8_export, or dip-export onnx --precision int8)")  # fmt: skip
    return one_of(precision, "--precision", list(DTYPES)), exact_int(opset, "--opset", OPSETS.start, OPSETS.stop - 1)


def _check_export_arguments(loaded: Any, image_size: Any, output_dir: Any, console: Any) -> tuple[tuple[int, int], Path | None]:
    """export_onnx's other arguments, before any tracing: a LoadedModel, a Console or None, a folder path that is not
    empty (read once: the path returned is the one checked), and an image size of exact whole numbers the patch
    divides (returned as a pair)."""
    from dip_export.generate import check_image_size, parse_image_size

    if not isinstance(loaded, LoadedModel):
        raise UsageError(f"export_onnx takes a LoadedModel (dip_export.checkpoint.resolve_model), got {type(loaded).__name__}")
    if console is not None and not isinstance(console, Console):
        raise UsageError(f"console must be a rich Console or None, got {type(console).__name__}")
    loaded.module()  # its module still of its config, its fields (the sampling written into the manifest) as set
    out = None
    if output_dir is not None:  # "" would read as the working folder
        out = Path(path_text(output_dir, "output_dir (a folder, or None for the default under engines/)"))
    size = parse_image_size(image_size)  # exact whole numbers, both sides bounded: (True, 32) is no size
    check_image_size(*size, loaded.config.patch_size)
    return size, out


def export_onnx(
    loaded: LoadedModel,
    *,
    precision: str = "fp32",
    image_size: tuple[int, int],
    opset: int = DEFAULT_OPSET,
    output_dir: Path | None = None,
    console: Console | None = None,
) -> Path:
    """Write backbone.onnx, detailer.onnx and manifest.json into a folder, or nothing at all."""
    image_size, given = _check_export_arguments(loaded, image_size, output_dir, console)
    precision, opset = _check_export_options(precision, opset)
    check_export(loaded.config, *image_size)  # every export (dip-export, made on the fly, a sub-export) before tracing
    console = console or Console(stderr=True)
    out = given if given is not None else default_export_dir(loaded.name, precision, image_size)
    check_export_run(loaded, image_size, out, precision=precision)
    source = source_info(loaded)  # before tracing: a checkpoint changed since it was read is refused now, not after
    specs = io_specs(loaded.config, *image_size)
    module = loaded.module()  # checked once, here: the module traced and verified against
    wrappers = _wrappers(module, precision)
    started = time.perf_counter()
    with atomic_dir(out, problem_of=ownership_problem) as tmp:
        files = {}
        for role, spec in specs.items():
            with console.status(f"exporting {role} ({precision}) ..."):
                files[role] = export_submodel(wrappers[role], spec, loaded, tmp, opset)
        del wrappers  # a reduced-precision copy of the network is freed before verifying
        with console.status("verifying against PyTorch with ONNX Runtime ..."):
            report = verify_export(tmp, files, module, specs, precision)
        say_lines(console, format_report(report))
        manifest = Manifest(
            name=loaded.name,
            precision=precision,
            image_size=image_size,
            config=loaded.config,
            files=files,
            source=source,
            versions=tool_versions(),
            opset=opset,
            verification=report,
            sampling=dict(loaded.sampling),
            extra={"export_seconds": round(time.perf_counter() - started, 2)},
        )
        if not report["passed"]:
            raise ExportError(
                f"verification failed: relative error {report['worst_rel']:.3g} > tolerance "
                f"{report['tolerance']:.3g} for {precision}; nothing was written to {out}"
            )
        write_manifest(tmp, manifest)
    say(console, f"wrote {out}/ ({', '.join(files.values())}, {MANIFEST})")
    return out


def _wrappers(model: DiP, precision: str) -> dict[str, nn.Module]:
    """The two sub-models to trace, in eval mode, over the network at `precision` (a copy unless fp32)."""
    dtype = DTYPES[precision]
    net = model if precision == "fp32" else copy.deepcopy(model).to(dtype)
    return {"backbone": _Backbone(net, dtype).eval(), "detailer": _Detailer(net, dtype).eval()}


def export_submodel(module: nn.Module, spec: SubModelSpec, loaded: LoadedModel, folder: Path, opset: int) -> str:
    """torch.onnx.export of one sub-model; weights external when the file would be large."""
    import onnx

    cfg = loaded.config
    h, w = spec.inputs[0].shape[2], spec.inputs[0].shape[3]
    feeds = backbone_inputs(cfg, int(h), int(w), batch=2)
    args: tuple[Tensor, ...]
    if spec.name == "backbone":
        args = tuple(torch.from_numpy(feeds[k]) for k in spec.input_names)
    else:
        x = torch.from_numpy(feeds["x"])
        with torch.no_grad():
            tokens = loaded.module().backbone(x, torch.from_numpy(feeds["t"]), torch.from_numpy(feeds["y"]))
        args = (x, tokens)
    path = folder / f"{spec.name}.onnx"
    before = set(folder.iterdir())
    # torch.export-based exporter (the TorchScript one is deprecated). Measured against it on DiP-B/16 at
    # 256 px: 1223 backbone nodes instead of 3075, 49 detailer nodes instead of 150, the same error against
    # PyTorch; fp32, fp16 and bf16 all export and verify, so the TorchScript exporter is not kept.
    with _quiet_exporter(), _interrupts_kept():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=spec.dynamic_shapes(torch.export.Dim("batch", min=1)),
            opset_version=opset,
            dynamo=True,
            external_data=True,
            optimize=True,
            verbose=False,
        )
    model = onnx.load(str(path))
    check_opset(model, opset, spec.name)
    _name_nodes_by_module(model)
    _pin_io_shapes(model, spec)
    large = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    model.producer_name = "dip-export"
    for stray in set(folder.iterdir()) - before - {path}:  # the exporter may write one file per tensor
        stray.unlink()
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{spec.name}.onnx.data",
    )
    return path.name


def check_opset(model: Any, opset: int, role: str) -> None:
    """The graph imports exactly the opset asked for. The exporter writes opset 18 and converts to the one asked;
    where a conversion fails it leaves the graph as it was (and says so only in its log), so the result is read."""
    got = graph_opset(model)
    if got != opset:
        raise ExportError(
            f"--opset {opset} is not reachable for this model (its {role} comes out as opset {got}); "
            f"use {OPSETS.start}..{OPSETS.stop - 1}"
        )


def files_opset(folder: Path, files: dict[str, str]) -> int:
    """The opset the graphs of an export import, for its manifest (what the files hold, never what was asked)."""
    import onnx

    found = {graph_opset(onnx.load(str(folder / rel), load_external_data=False)) for rel in files.values()}
    if len(found) != 1:
        raise ExportError(f"the graphs of {folder.name} import different opsets ({', '.join(map(str, sorted(found)))})")
    return found.pop()


QUIET_LOGGERS = ("torch", "onnxscript", "onnx_ir")  # the exporter's libraries: their notes and tracebacks


def _quiet_loggers() -> list[logging.Logger]:
    """The loggers of QUIET_LOGGERS and every child of theirs that has a level of its own (torch sets some): a child
    left at its own level would still print through its parent's handler."""
    found = [logging.getLogger(name) for name in QUIET_LOGGERS]
    children = tuple(f"{name}." for name in QUIET_LOGGERS)
    for name, log in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(log, logging.Logger) and log.level != logging.NOTSET and name.startswith(children):
            found.append(log)
    return found


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's libraries log optional-package notes (torchvision ops), a note per shared dim name, the
    traceback of an opset conversion that failed (`check_opset` then refuses the result), and torch's own tracing
    errors (a Ctrl-C caught mid-trace comes back as a logged TypeError, then a ConversionError): none reach the
    terminal. Each logger's level is restored afterwards."""
    logs = _quiet_loggers()
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            # torch.export's own pytree use of a deprecated spec class (torch 2.13): a note to torch's developers
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


@contextlib.contextmanager
def _interrupts_kept() -> Iterator[None]:
    """A Ctrl-C during the export ends it as an interrupt, whatever the exporter makes of it: torch.export catches
    the KeyboardInterrupt where it lands (an import mid-trace) and raises its own error, many lines long. A SIGINT
    seen in the block turns any error out of it back into KeyboardInterrupt (the CLI's line and exit 130; an API
    caller's KeyboardInterrupt). Off the main thread, or with SIGINT not handled in Python, nothing changes."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    seen: list[int] = []

    def noting(signum: int, frame: Any) -> None:
        seen.append(signum)
        previous(signum, frame)  # type: ignore[operator]

    signal.signal(signal.SIGINT, noting)
    try:
        yield
    except Exception:
        if seen:
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _name_nodes_by_module(model: Any) -> None:
    """Node names from the module path, as the TorchScript exporter wrote them: "/blocks.0/attn/qkv/MatMul".

    The dynamo exporter names nodes after aten ops ("node_linear_4") and keeps the module path in
    metadata; quantization and the fp16 conversion choose their float32 parts by module path.
    """
    import ast

    used: set[str] = set()
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]")) or [""]
        parts, prev = [], ""
        for scope in scopes[1:-1]:  # the last entry is the op itself
            parts.append(scope[len(prev) + 1 :] if prev else scope.removeprefix("model."))
            prev = scope
        base = "/" + "/".join([*parts, node.op_type])
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        node.name = name


def _pin_io_shapes(model: Any, spec: SubModelSpec) -> None:
    """Write the contract's I/O shapes into the graph: only the batch is symbolic (the tracer may leave more)."""
    declared = {t.name: t for t in spec.inputs + spec.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        tspec = declared[value.name]
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, tspec.shape, strict=True):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def verify_export(
    folder: Path, files: dict[str, str], reference: DiP, specs: dict[str, SubModelSpec], precision: str
) -> dict[str, Any]:
    """Run the ONNX files with ONNX Runtime at two batch sizes against the fp32 PyTorch model."""
    runners = {role: onnx_runner(folder / rel, precision) for role, rel in files.items()}
    cfg = reference.cfg
    _, _, h, w = specs["backbone"].inputs[0].concrete(1)
    rows = []
    for batch in VERIFY_BATCHES:
        feeds = backbone_inputs(cfg, h, w, batch, seed=batch)
        with torch.no_grad():
            tokens = reference.backbone(*(torch.from_numpy(feeds[k]) for k in ("x", "t", "y")))
            v = reference.detailer(torch.from_numpy(feeds["x"]), tokens)
        got_tokens = runners["backbone"](feeds)
        got_v = runners["detailer"]({"x": feeds["x"], "tokens": tokens.numpy()})
        rows.append(_error_row("backbone", "tokens", batch, got_tokens, tokens.numpy()))
        rows.append(_error_row("detailer", "v", batch, got_v, v.numpy()))
    worst = max(r["rel_err"] for r in rows)
    return {
        "rows": rows,
        "metric": "rel_err",
        "worst_rel": worst,
        "tolerance": TOLERANCES[precision],
        "passed": worst <= TOLERANCES[precision],
    }


def onnx_runner(path: Path, precision: str) -> Any:
    """ONNX Runtime where it has kernels; ONNX's reference evaluator for bf16 (no ORT CPU kernels)."""
    if precision == "bf16":
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(path))

        def evaluate(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with np.errstate(all="ignore"):  # exp overflow inside a bf16 sigmoid is harmless
                outputs: list[Any] = evaluator.run(None, feeds)  # type: ignore[arg-type,assignment]
                return np.asarray(outputs[0], dtype=np.float32)

        return evaluate
    from dip_export.runtime.ort_engine import make_session

    session = make_session(path)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            return session.run(None, feeds)[0]
        except Exception as err:  # ONNX Runtime's own text quotes the graph's names: never shown
            raise ExportError(f"{path}: ONNX Runtime failed running this graph ({type(err).__name__})") from None

    return run


def _error_row(role: str, output: str, batch: int, got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    diff = np.abs(got.astype(np.float64) - want)
    if not np.isfinite(got).all():
        inf = float("inf")
        return {"model": role, "output": output, "batch": batch, "max_abs": inf, "rel_err": inf, "rel_rms": inf}
    scale = float(np.abs(want).max()) or 1.0
    rms = float(np.sqrt(np.mean(diff**2)) / (np.sqrt(np.mean(want.astype(np.float64) ** 2)) or 1.0))
    return {
        "model": role,
        "output": output,
        "batch": batch,
        "max_abs": float(diff.max()),
        "rel_err": float(diff.max()) / scale,
        "rel_rms": rms,
    }


def format_report(report: dict[str, Any]) -> Any:
    from rich.table import Table

    metric = "max" if report.get("metric", "rel_err") == "rel_err" else "rms"
    table = Table(title=f"ONNX vs PyTorch fp32 (tolerance: {metric} relative error <= {report['tolerance']:.0e})")
    metric = report.get("metric", "rel_err")
    for col in ("model", "output", "batch", "max abs", "max rel", "rms rel"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for r in report["rows"]:
        ok = r[metric] <= report["tolerance"]
        cells = {m: f"{r[m]:.2e}" for m in ("rel_err", "rel_rms")}
        cells[metric] = f"[{'green' if ok else 'red'}]{cells[metric]}[/]"
        table.add_row(r["model"], r["output"], str(r["batch"]), f"{r['max_abs']:.2e}", cells["rel_err"], cells["rel_rms"])
    return table


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import dip_export

    return {
        "dip_export": dip_export.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def is_current(
    folder: Path, loaded: LoadedModel, *, precision: str, image_size: tuple[int, int], opset: int | None = DEFAULT_OPSET,
    extra: dict[str, Any] | None = None,
) -> bool:  # fmt: skip
    """A complete export in `folder` that computes what this run needs: the same model (`LoadedModel.identity`:
    content, weights taken, config), image size, precision and opset (None: whichever its graphs import), and the
    stage's own settings (`extra`, e.g. a quantized export's target and calibration). Anything else is made again
    in its place (the ownership rules of `atomic_dir` decide whether it may be replaced).

    Only an export this tool wrote is reused: its manifest carries this user's mark and every file it lists is
    the one written (`ownership_problem`, which hashes them all). A manifest's own words (its `source`) are never
    enough: a folder made by hand or by another user is never run, quantized or calibrated on."""
    from dip_export.export.manifest import ownership_problem

    if not (folder / MANIFEST).is_file() or ownership_problem(folder) is not None:
        return False
    try:
        manifest = read_manifest(folder)
    except ExportError:
        return False  # damaged: the next export replaces it
    return (
        manifest.source == source_info(loaded) and manifest.config == loaded.config
        and manifest.precision == precision and tuple(manifest.image_size) == tuple(image_size)
        and opset in (None, manifest.opset) and all(manifest.extra.get(k) == v for k, v in (extra or {}).items())
    )  # fmt: skip


def check_export_run(
    loaded: LoadedModel, image_size: tuple[int, int], out: Path, *, precision: str,
    calibration: CalibrationSettings | None = None, calibration_dir: Path | None = None,
) -> None:  # fmt: skip
    """Before the first export of a run starts: every folder it writes and every cache it reads.

    The output folder; for a quantized run (`calibration`) also the fp32 export it quantizes, which it makes
    when missing or stale (then an output too, and never the output itself nor around it), and the calibration
    cache it reads. Each output may be new or replace an export of this tool (a swap a killed run left settled
    first), never lies inside an export, and no two are nested; its file system has room for it
    (`export_file_bytes`, `io.check_space`); a cache file is read and checked whole now."""
    from dip_export.export.calibration import check_cache
    from dip_export.export.manifest import check_export_target
    from dip_export.io import check_space
    from dip_export.ownership import check_not_input, check_outputs_apart

    outputs = [("the output folder", out)]
    sizes = [export_file_bytes(loaded.config, precision)]
    if calibration is not None:
        fp32 = default_export_dir(loaded.name, "fp32", image_size)
        check_not_input(out, [fp32], what="output folder")  # the fp32 export is what the run quantizes
        if not is_current(fp32, loaded, precision="fp32", image_size=image_size):
            outputs.append(("the fp32 export", fp32))
            sizes.append(export_file_bytes(loaded.config, "fp32"))
    cache = [("the calibration cache", calibration_dir)] if calibration is not None else []  # written when missing
    check_outputs_apart([*outputs, *cache])  # every output known: the owner key is made now, apart from them all
    for _, path in outputs:
        settle_swap(path, ownership_problem)  # what atomic_dir does first, done before any export
        check_export_target(path)
    check_space([(path, size) for (_, path), size in zip(outputs, sizes, strict=True)])
    if calibration is not None and calibration_dir is not None:
        check_cache(loaded, image_size, calibration, calibration_dir)


def ensure_export(loaded: LoadedModel, *, precision: str, image_size: tuple[int, int], console: Console | None = None) -> Path:
    """The cached export for this model, precision and size under engines/, made when missing or stale."""
    folder = default_export_dir(loaded.name, precision, image_size)
    settle_swap(folder, ownership_problem)  # a swap a killed run left is finished or undone, its leftovers gone
    if is_current(folder, loaded, precision=precision, image_size=image_size):
        return folder
    return export_onnx(loaded, precision=precision, image_size=image_size, output_dir=folder, console=console)
