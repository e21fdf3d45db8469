"""Backend name -> engine: where the stages meet.

A backend that runs the torch module gets it directly; one that runs an export folder gets the
folder's files as data (`ExportFiles`), made on the fly and cached under engines/ when needed:
the ONNX export, the int8 quantization, the TensorRT build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dip_export.checkpoint import LoadedModel
from dip_export.errors import DipError, ExportError, UsageError
from dip_export.io import MANIFEST_NAME
from dip_export.messages import shortened
from dip_export.runtime.backends import BackendSpec, make_export_engine, make_torch_engine
from dip_export.runtime.engine_io import ExportFiles
from dip_export.runtime.torch_engine import resolve_device
from dip_export.sampling import Denoiser
from dip_export.settings import path_text


def export_files(folder: Path, identity: str = "") -> ExportFiles:
    """An export folder's manifest, as the data its engines need; with `identity`, only the export that was read
    then (`Manifest.identity`): files changed or swapped since are refused, not run under the old one's name."""
    from dip_export.export.manifest import read_manifest
    from dip_export.export.spec import io_specs

    folder = Path(path_text(folder, "the export folder"))  # a caller's text or path-like, read once
    if type(identity) is not str:
        raise UsageError(f"identity must be text (Manifest.identity), got {type(identity).__name__}")
    manifest = read_manifest(folder)
    if identity and manifest.identity != identity:
        raise ExportError(f"{folder}: changed since it was loaded (its manifest or files are not the ones read then); "
                          "load it again")  # fmt: skip
    return ExportFiles(
        folder=folder, precision=manifest.precision,
        graphs={role: folder / rel for role, rel in manifest.files.items()},
        io=io_specs(manifest.config, *manifest.image_size), engines=dict(manifest.engines), identity=manifest.identity,
        listed=tuple(sorted(manifest.contents)),
    )  # fmt: skip


def open_export(spec: BackendSpec, folder: Path, device: torch.device, identity: str = "") -> Denoiser:
    """The engine over an export folder (with `identity`: the one read then, `export_files`); a graph its runtime
    rejects is one error naming the folder."""
    # text, or a BackendSpec read as its text (one made by hand: a known name and precision); anything else refused
    spec = BackendSpec.parse(str(spec) if type(spec) is BackendSpec else spec)
    device = resolve_device(str(device) if isinstance(device, torch.device) else device)
    files = export_files(folder, identity)
    try:
        return _engine_over(spec, files, device)
    except DipError:
        raise
    except Exception as err:  # ONNX Runtime's and TensorRT's exception types share no base with ours
        first = shortened((str(err).strip().splitlines() or [""])[0])
        raise ExportError(f"{folder}: the {spec.name} runtime cannot load this export ({type(err).__name__}: {first})") from None


def _engine_over(spec: BackendSpec, files: ExportFiles, device: torch.device) -> Denoiser:
    """The engine over an export's checked files, refused if the folder changed while its runtime read them: the
    runtime opens each graph by its path, one after the other, so an export replaced meanwhile would pair one
    export's backbone with another's detailer."""
    before = _stamps(files)
    engine = make_export_engine(spec, files, device)
    if _stamps(files) != before:  # each file the very one it was (a file replaced by the same bytes too)
        raise ExportError(f"{files.folder}: changed while its graphs were being opened; load it again")
    export_files(files.folder, files.identity)  # and still the export that was checked
    return engine


def _stamps(files: ExportFiles) -> list[Any]:
    from dip_export.untrusted import file_stamp

    stamps: list[Any] = []
    for name in (MANIFEST_NAME, *files.listed):
        try:
            stamps.append(file_stamp(files.folder / name))
        except OSError:
            stamps.append(None)  # gone: differs from a file that was there
    return stamps


def make_engine(
    spec: BackendSpec, loaded: LoadedModel, size: tuple[int, int], device: torch.device, console: Any, batch: int = 1
) -> Denoiser:
    """The engine for a backend spec, exporting and building (cached under engines/) what it needs."""
    if spec.backend.runs_from == "model":
        return make_torch_engine(spec, loaded, device)
    folder = _trt_folder(spec, loaded, size, device, console, batch) if spec.backend.needs_tensorrt else None
    folder = folder or _onnx_folder(spec, loaded, size, console)
    return _engine_over(spec, export_files(folder), device)


def _onnx_folder(spec: BackendSpec, loaded: LoadedModel, size: tuple[int, int], console: Any) -> Path:
    """The ONNX export an ONNX Runtime engine of this precision runs (int8: quantized from fp32)."""
    if spec.precision == "int8":
        from dip_export.export.quantize import ensure_int8_export

        return ensure_int8_export(loaded, image_size=size, target="onnx", console=console)
    from dip_export.export.onnx_export import ensure_export

    return ensure_export(loaded, precision=spec.precision, image_size=size, console=console)


def _trt_folder(
    spec: BackendSpec, loaded: LoadedModel, size: tuple[int, int], device: torch.device, console: Any, batch: int
) -> Path:
    """The fp32 export with this precision's TensorRT plans built for a batch profile around `batch`."""
    from dip_export.export.onnx_export import EXPORT_ROOT, ensure_export
    from dip_export.export.trt_build import BatchProfile, build_trt

    folder = ensure_export(loaded, precision="fp32", image_size=size, console=console)
    build_trt(
        precision=spec.precision, output_dir=folder, root=EXPORT_ROOT, profile=BatchProfile(1, batch, max(batch, 8)),
        timing_cache=folder / "timing.cache", opt_level=3, console=console, device=device, covering=True,
    )  # fmt: skip
    return folder
