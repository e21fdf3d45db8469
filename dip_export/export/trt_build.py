"""`dip-export trt`: strongly typed TensorRT engines from an export folder's ONNX files.

Precision lives in the ONNX (TensorRT 11 removed the FP16/BF16/INT8/FP8 builder flags and the
INT8 calibrator): fp16/bf16 engines are built from the reduced-precision export, int8/fp8 from a
symmetric Q/DQ export made from the model's own calibration trajectories. The `tensorrt` module is
imported only inside the functions that talk to it; everything else here runs on any machine.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from dip_export.budget import check_trt_build
from dip_export.errors import ExportError, UsageError
from dip_export.export.manifest import MANIFEST, Manifest, read_manifest, settle_export_swap, write_manifest
from dip_export.export.spec import BATCH, SubModelSpec, io_specs
from dip_export.io import atomic_path
from dip_export.messages import say, where
from dip_export.ownership import check_outputs_apart
from dip_export.runtime.backends import BACKENDS
from dip_export.runtime.trt_support import engine_matches, gpu_identity
from dip_export.runtime.trt_support import import_tensorrt as _tensorrt
from dip_export.settings import MAX_BATCH, exact_int, number_list, one_of, plain_value, whole_text
from dip_export.untrusted import sha256_file

TRT_PRECISIONS = BACKENDS["trt"].precisions
DEFAULT_WORKSPACE = 8 << 30


@dataclass(frozen=True)
class BatchProfile:
    """Image batch sizes; the network sees up to twice as many rows (CFG runs [uncond, cond])."""

    min: int = 1
    opt: int = 1
    max: int = 8

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        lo, opt, hi = number_list(text, "--batch-profile", whole_text, count=3, form="MIN,OPT,MAX (image batch sizes)")
        if not 1 <= lo <= opt <= hi <= MAX_BATCH:
            raise UsageError(f"--batch-profile needs 1 <= MIN <= OPT <= MAX <= {MAX_BATCH}, got {plain_value(text)}")
        return cls(lo, opt, hi)

    def network_batches(self) -> tuple[int, int, int]:
        """(min, opt, max) rows: a guidance-1 step runs B rows, a CFG step 2B."""
        return self.min, 2 * self.opt, 2 * self.max


def check_build_options(precision: Any, opt_level: Any) -> None:
    """The engine's precision and builder level, checked before anything else (the TensorRT package included)."""
    one_of(precision, "TensorRT precision", TRT_PRECISIONS)
    exact_int(opt_level, "--opt-level", 0, 5)


def profile_shapes(spec: SubModelSpec, profile: BatchProfile) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min/opt/max shape of every input of one sub-model, for IOptimizationProfile.set_shape."""
    return {t.name: tuple(t.concrete(b) for b in profile.network_batches()) for t in spec.inputs if BATCH in t.shape}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def engine_file(
    role: str, precision: str, trt_version: str, gpu: str, profile: BatchProfile | None = None, opt_level: int | None = None
) -> str:
    """Plans only run on the GPU model and TensorRT version that built them: both are in the name, and so are
    the batch profile and optimisation level, so an engine built for other ones is never overwritten."""
    shape = f".b{profile.min}-{profile.opt}-{profile.max}" if profile is not None else ""
    level = f".o{opt_level}" if opt_level is not None else ""
    return f"{role}.{precision}{shape}{level}.trt{trt_version}.{slug(gpu)}.plan"


def source_onnx_precision(precision: str) -> str:
    """Which export an engine of this precision is built from."""
    return {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32", "int8": "int8-trt", "fp8": "fp8-trt"}[precision]


def find_export(root: Path, output_dir: Path | None) -> Path:
    """The export folder to build from: the one given, or the most recent one under `root` (by its manifest)."""
    if output_dir is not None:
        settle_export_swap(output_dir)  # a swap a killed run left is finished or undone first, as readers all do
        read_manifest(output_dir)
        return output_dir
    found = [p.parent for p in root.glob(f"*/{MANIFEST}")] if root.is_dir() else []
    if not found:
        raise UsageError(f"no export under {root}/; run `dip-export onnx CKPT` first or pass a checkpoint or export folder")
    return max(found, key=lambda p: ((p / MANIFEST).stat().st_mtime_ns, p.name))


def export_for_source(source: Path, console: Console, max_batch: int = 8) -> Path:
    """`dip-export trt SOURCE`: an export folder as it is, or a checkpoint's fp32 export (made under engines/ if missing).

    A checkpoint's config is checked first: its export and the build for batches up to `max_batch` fit in memory.
    """
    settle_export_swap(source)  # a swap a killed run left is finished or undone first, as readers all do
    if source.is_dir():
        read_manifest(source)
        return source
    if not source.is_file():
        raise UsageError(f"{source} is neither a checkpoint file nor an export folder")
    from dip_export.budget import check_export
    from dip_export.checkpoint import resolve_model
    from dip_export.export.onnx_export import ensure_export

    def fits(config: Any, size: tuple[int, int]) -> None:
        check_export(config, *size)
        check_trt_build(config, *size, max_batch, _cuda())

    loaded = resolve_model(source, check=fits)
    size = (loaded.config.image_size, loaded.config.image_size)
    return ensure_export(loaded, precision="fp32", image_size=size, console=console)


def check_precision_supported(precision: str, capability: tuple[int, int]) -> None:
    if precision == "fp8" and capability < (8, 9):
        raise UsageError(f"fp8 needs compute capability 8.9 or newer (Ada, Hopper); this GPU has {capability[0]}.{capability[1]}")
    if precision == "bf16" and capability < (8, 0):
        raise UsageError("bf16 needs compute capability 8.0 or newer (Ampere)")


def profile_entry(profile: BatchProfile) -> dict[str, Any]:
    return {"min": profile.min, "opt": profile.opt, "max": profile.max, "network_rows": list(profile.network_batches())}


def check_timing_cache(path: Path | None) -> None:
    """--timing-cache is read and rewritten: it may be new, or a timing cache TensorRT reads (from any GPU or
    version; those start afresh); a user's other file or a symlink is refused before any work."""
    from dip_export.io import check_output_file

    if path is None:
        return
    check_output_file(path)  # no symlink, no folder, a writable place
    if not path.exists():
        return
    data = _timing_cache_bytes(path)
    trt = _tensorrt()
    config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    if config.create_timing_cache(data) is None:
        raise UsageError(
            f"--timing-cache {path} exists and is not a TensorRT timing cache; refusing to replace it (name another file)"
        )


MAX_TIMING_CACHE = 256 << 20  # a TensorRT timing cache holds tactic timings: a few MB for a whole network


def _timing_cache_bytes(path: Path) -> bytes:
    """A timing cache's bytes, read only when its size is one a timing cache has."""
    try:
        size = path.stat().st_size
        if size > MAX_TIMING_CACHE:
            raise UsageError(f"--timing-cache {path} holds {size} bytes, more than a timing cache ({MAX_TIMING_CACHE}); "
                             "refusing to read it (name another file)")  # fmt: skip
        with path.open("rb") as f:
            return f.read(MAX_TIMING_CACHE + 1)[:MAX_TIMING_CACHE]
    except OSError as err:
        raise UsageError(f"--timing-cache {path}: cannot read it ({err.strerror or err})") from None


def _load_timing_cache(trt: Any, config: Any, timing_cache: Path | None, console: Console | None) -> None:
    """The saved cache when TensorRT accepts it; an empty one when it was made on another GPU or version."""
    cache_bytes = _timing_cache_bytes(timing_cache) if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)  # None (and a logged error) for a corrupt file
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if console is not None:
        why = "is not a timing cache TensorRT can read" if cache is None else "is from another GPU or TensorRT version"
        say(console, f"timing cache {timing_cache} {why}; starting a new one", style="yellow")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise ExportError("TensorRT refused an empty timing cache")


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    shapes: dict[str, tuple[tuple[int, ...], ...]],
    *,
    opt_level: int = 3,
    timing_cache: Path | None = None,
    workspace: int = DEFAULT_WORKSPACE,
    tf32: bool = True,
    console: Console | None = None,
) -> None:
    """Parse, configure and build one strongly typed engine; write the plan atomically.

    API (TensorRT 10.x / 11.x Python docs, "Builder", "IBuilderConfig", "OnnxParser"):
    Builder.create_network(flags), OnnxParser.parse_from_file (finds external weight files),
    IBuilderConfig.set_memory_pool_limit, builder_optimization_level,
    Builder.create_optimization_profile / IOptimizationProfile.set_shape / add_optimization_profile,
    create_timing_cache / set_timing_cache (False for a cache from another GPU or version: a new one is
    started) / get_timing_cache (may be None), Builder.build_serialized_network (None on failure).
    `tf32=False` clears BuilderFlag.TF32 (on by default, in 10.x and 11.x): fp32 math stays fp32.
    """
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_network(trt, builder, logger, onnx_path)  # the parser owns weights the network uses
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.builder_optimization_level = opt_level
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:  # -1: TensorRT logged why and added nothing
        raise ExportError(f"TensorRT refused the optimisation profile {shapes} for {onnx_path.name}")
    _load_timing_cache(trt, config, timing_cache, console)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build {onnx_path.name} (see the messages above)")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(plan))
    cache = config.get_timing_cache()
    if timing_cache is not None and cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))


def _parse_network(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """A strongly typed network parsed from the file (so external weight files are found), and its parser."""
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:
        # 10.x: opt in to strong typing; 11.x: always strongly typed, the flag is deprecated and ignored
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    return network, parser


def build_trt(
    *,
    precision: str,
    output_dir: Path | None,
    root: Path,
    profile: BatchProfile,
    timing_cache: Path | None,
    opt_level: int,
    console: Console,
    device: Any = None,
    covering: bool = False,
) -> dict[str, Any]:
    """Build (or reuse) the engines of one precision for an export folder, verify them, record them.

    `covering=True` reuses engines whose profile covers `profile` (see `engine_matches`)."""
    import torch

    check_build_options(precision, opt_level)
    trt = _tensorrt()  # what is missing comes first, and before any file is made
    check_timing_cache(timing_cache)
    device = torch.device("cuda" if device is None else device)
    gpu, capability = gpu_identity(device)
    check_precision_supported(precision, capability)
    folder = find_export(root, output_dir)
    check_outputs_apart([("the export folder", folder)])  # the engines go inside it: the owner key is made only apart
    if output_dir is None:
        say(console, f"building from {folder} (the most recent export under {root}/)")
    manifest = read_manifest(folder)
    existing = _reusable(manifest, folder, precision, trt.__version__, gpu, profile, opt_level, covering)
    if existing is not None:
        say(console, f"engines for {precision} on {gpu} with TensorRT {trt.__version__} {_built_with(existing)} are up to date")
        return existing
    check_trt_build(manifest.config, *manifest.image_size, profile.max, device)  # the build's memory, before it starts
    before = {p.name for p in folder.iterdir()}  # what this run makes is the tool's; the rest stays as listed
    onnx_dir = onnx_for_precision(folder, manifest, precision, console)
    made = [onnx_dir.name] if onnx_dir != folder and onnx_dir.name not in before else []
    build = (precision, trt.__version__, gpu, profile, opt_level, timing_cache, console)
    recorded = {"compute_capability": list(capability), "profile": profile_entry(profile), "opt_level": opt_level}
    try:
        entry = _build_and_verify(folder, onnx_dir, io_specs(manifest.config, *manifest.image_size), build, recorded, device)
    except BaseException:  # what this run wrote and keeps (a sub-export, the Polygraphy files) is listed as the tool's
        debug = f"verify-{precision}"
        ours = debug not in before or any(rel.startswith(f"{debug}/") for rel in manifest.contents)
        write_manifest(folder, manifest, written=[*made, *([debug] if ours else [])])
        raise
    manifest.engines[precision] = entry
    write_manifest(folder, manifest, written=[*made, *entry["files"].values()])
    say(console, f"wrote {', '.join(entry['files'].values())} into {folder}/")
    return entry


def _built_with(entry: dict[str, Any]) -> str:
    p = entry["profile"]
    return f"(batch {p['min']},{p['opt']},{p['max']}, opt level {entry.get('opt_level')})"


def _build_and_verify(
    folder: Path, onnx_dir: Path, specs: dict[str, Any], build: tuple[Any, ...], recorded: dict[str, Any], device: Any
) -> dict[str, Any]:
    """Build each role's engine and verify them against ONNX Runtime; on any failure or Ctrl-C the
    engines this run wrote are removed, so the folder never holds an engine its manifest does not list."""
    import torch

    precision, trt_version, gpu, *_ = build
    onnx_manifest = read_manifest(onnx_dir)
    started, files = time.perf_counter(), {}
    try:
        with torch.cuda.device(device):
            for role, spec in specs.items():
                files[role] = _build_role(onnx_dir / onnx_manifest.files[role], folder, role, spec, *build)
        entry = {
            "files": files, "precision": precision, "trt_version": trt_version, "gpu": gpu,
            "onnx": str(onnx_dir.relative_to(folder)) if onnx_dir != folder else ".",
            "build_seconds": round(time.perf_counter() - started, 1), **recorded,
        }  # fmt: skip
        console = build[-1]
        with console.status("verifying the engines against ONNX Runtime ..."):
            entry["verification"] = verify_engines(folder, entry, onnx_dir, onnx_manifest, specs, device)
    except BaseException:  # a hard error, like the export's, or an interrupt: no unlisted engine is left
        for f in files.values():
            (folder / f).unlink(missing_ok=True)
        raise
    return entry


def _reusable(
    manifest: Manifest, folder: Path, precision: str, trt_version: str, gpu: str, profile: BatchProfile, opt_level: int,
    covering: bool,
) -> dict[str, Any] | None:  # fmt: skip
    """The recorded engines of this precision when they match (see `engine_matches`) and their files are there."""
    existing = manifest.engines.get(precision)
    if not existing or not engine_matches(existing, trt_version, gpu, profile=profile, opt_level=opt_level, covering=covering):
        return None
    return existing if all((folder / f).is_file() for f in existing["files"].values()) else None


def _build_role(
    onnx_path: Path, folder: Path, role: str, spec: SubModelSpec, precision: str, trt_version: str, gpu: str,
    profile: BatchProfile, opt_level: int, timing_cache: Path | None, console: Console,
) -> str:  # fmt: skip
    """One sub-model's engine, named by precision, TensorRT version, GPU, profile and opt level; its file name."""
    name = engine_file(role, precision, trt_version, gpu, profile, opt_level)
    with console.status(f"building {role} engine ({precision}, opt level {opt_level}) ..."):
        build_engine(onnx_path, folder / name, profile_shapes(spec, profile), opt_level=opt_level,
                     timing_cache=timing_cache, tf32=precision != "fp32", console=console)  # fmt: skip
    return name


# fp32 engines are built without TF32 (BuilderFlag.TF32 cleared): TF32 rounds matmul inputs to a 10-bit
# mantissa, about 1e-3 relative per layer and growing with depth, which no fixed fp32 tolerance could cover.
# int8 as fp8: TensorRT runs DequantizeLinear -> GEMM as one integer GEMM rescaled once, while ONNX Runtime rounds
# each dequantised value to fp16 first; those last-bit differences move activations across quantisation steps at
# the next QuantizeLinear, which is about 5-7% max-relative on the tiny test model.
ENGINE_TOLERANCES = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 5e-2, "int8": 1e-1, "fp8": 1e-1}  # max rel. error vs ORT, same graph


def compare_outputs(rows: list[tuple[str, int, Any, Any]], tolerance: float) -> dict[str, Any]:
    """(what, rows, engine output, reference output) -> report; every mismatch is listed, none is skipped."""
    import numpy as np

    report_rows, bad = [], []
    for what, n, got, want in rows:
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape:
            bad.append(f"{what} at {n} rows: shape {got.shape} != {want.shape}")
            continue
        finite = bool(np.isfinite(got).all())
        rel = float(np.abs(got - want).max() / (np.abs(want).max() or 1.0)) if finite else float("inf")
        report_rows.append({"output": what, "rows": n, "rel_err": rel})
        if not rel <= tolerance:
            bad.append(f"{what} at {n} rows: relative error {rel:.3g} > {tolerance:g}")
    if bad:
        raise ExportError("TensorRT engine does not match ONNX Runtime: " + "; ".join(bad))
    return {"rows": report_rows, "tolerance": tolerance, "passed": True}


def verify_engines(
    folder: Path, entry: dict[str, Any], onnx_dir: Path, onnx_manifest: Manifest, specs: dict[str, SubModelSpec], device: Any
) -> dict[str, Any]:
    """Both engines against the ONNX they were built from (ONNX Runtime), same inputs.

    At the profile's smallest row count and at 2 rows (one CFG pair), as the ONNX export is verified:
    the reference runs on the host, where the profile's largest batch of a big model would take minutes.
    """
    import torch

    from dip_export.export.onnx_export import onnx_runner
    from dip_export.export.spec import backbone_inputs
    from dip_export.runtime.trt_engine import TrtEngine

    engine = TrtEngine.from_entry(folder, entry, specs, device)
    runners = {role: onnx_runner(onnx_dir / rel, onnx_manifest.precision) for role, rel in onnx_manifest.files.items()}
    config, (h, w) = onnx_manifest.config, onnx_manifest.image_size
    rows = []
    used: dict[str, list[dict[str, Any]]] = {"backbone": [], "detailer": []}
    for n in sorted({engine.min_rows, min(engine.max_rows, max(engine.min_rows, 2))}):
        feeds = backbone_inputs(config, h, w, n, seed=n)
        want_tokens = runners["backbone"](feeds)
        want_v = runners["detailer"]({"x": feeds["x"], "tokens": want_tokens})
        x, t, y = (torch.from_numpy(feeds[k]).to(device) for k in ("x", "t", "y"))
        got_tokens = engine.backbone(x, t, y).cpu().numpy().copy()
        got_v = engine.detailer(x, torch.from_numpy(want_tokens).to(device)).cpu().numpy().copy()
        rows += [("backbone.tokens", n, got_tokens, want_tokens), ("detailer.v", n, got_v, want_v)]
        used["backbone"].append(feeds)
        used["detailer"].append({"x": feeds["x"], "tokens": want_tokens})
    tolerance = ENGINE_TOLERANCES[entry["precision"]]
    try:
        return compare_outputs(rows, tolerance)
    except ExportError as err:
        from dip_export.export.trt_debug import write_repro

        command = write_repro(folder, entry, onnx_dir, onnx_manifest.files, specs, used, tolerance)
        raise ExportError(f"{err}; to find the layer, run the Polygraphy comparison in {command}") from None


def onnx_for_precision(folder: Path, manifest: Manifest, precision: str, console: Console) -> Path:
    """The export whose graph carries this precision: the folder itself or a sub-folder made now."""
    wanted = source_onnx_precision(precision)
    if manifest.precision == wanted or (f"{manifest.precision}-trt" == wanted and manifest.extra.get("target") == "trt"):
        return folder  # `dip-export onnx --precision int8 --target trt` wrote this very graph
    sub = folder / f"onnx-{wanted}"
    if (sub / MANIFEST).is_file():
        return sub
    loaded = loaded_from_source(manifest, folder=folder, console=console)
    if wanted in ("int8-trt", "fp8-trt"):
        from dip_export.export.quantize import export_int8

        return export_int8(loaded, image_size=manifest.image_size, target="trt", output_dir=sub, console=console,
                           fp8=wanted == "fp8-trt")  # fmt: skip
    from dip_export.export.onnx_export import export_onnx

    return export_onnx(loaded, precision=wanted, image_size=manifest.image_size, output_dir=sub, console=console)


def loaded_from_source(manifest: Manifest, *, folder: Path | None = None, console: Console | None = None) -> Any:
    """Reload the model an export came from, as it was exported, or refuse in one line.

    The one way back from an export to its model (a sub-export of another precision is made from it). The
    manifest's `source` is data: its path is read only when it is an absolute path to a regular file, no
    symlink on the way, whose sha256 is the recorded one; the weights taken are the recorded ones (ema | raw),
    the config the recorded one, and the model reloaded must have the recorded identity (`LoadedModel.identity`).
    A preset is rebuilt by name and checked the same way.
    """
    from dip_export.checkpoint import load_checkpoint, resolve_model

    source = manifest.source
    named = f"the export {where(folder)}" if folder is not None else "the export"
    again = "export the matching ONNX again"
    path, weights, recorded = source.get("path", ""), source.get("weights"), source.get("identity", "")
    if weights not in ("ema", "raw") or not recorded:
        raise ExportError(f"{named} does not record the weights and identity of its model (an older or hand-made "
                          f"manifest); {again}")  # fmt: skip
    if path.startswith("preset:"):
        loaded = resolve_model(None, path.removeprefix("preset:"))
    else:
        file = _source_file(path, named, again)
        if not source.get("sha256"):
            raise ExportError(f"{named} does not record the sha256 of the checkpoint it came from; {again}")
        if source.get("sha256") != sha256_file(file):
            raise ExportError(f"{where(file)} changed since {named} was made from it (sha256 differs), not used; {again}")
        say(console, f"reading {file} ({weights} weights), the checkpoint {manifest.name} was exported from")
        loaded = load_checkpoint(file, weights=weights, config=manifest.config)
    if loaded.weights != weights or loaded.identity != recorded:
        raise ExportError(f"{where(path)} is not the model {named} was made from (identity differs); {again}")
    loaded.name = manifest.name
    return loaded


def _source_file(path: str, named: str, again: str) -> Path:
    """The recorded checkpoint path when it is one to read: absolute, no symlink on the way, a regular file."""
    file = Path(path)
    if not path or not file.is_absolute() or os.path.realpath(path) != os.path.normpath(path):
        what = "a relative path" if not file.is_absolute() else "a path through a symlink"
        raise ExportError(f"{named}: the checkpoint this export came from, {where(path)}, is {what}, not read; {again}")
    try:
        mode = os.lstat(file).st_mode
    except OSError:
        raise ExportError(f"{named}: the checkpoint this export came from, {where(path)}, is gone; {again}") from None
    if not stat.S_ISREG(mode):
        raise ExportError(f"{named}: the checkpoint this export came from, {where(path)}, is not a regular file, "
                          f"not read; {again}")  # fmt: skip
    return file


def _cuda() -> Any:
    import torch

    return torch.device("cuda")
