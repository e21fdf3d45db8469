"""`manifest.json`: what an export folder holds, where it came from, how well it verified."""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from dip_export.budget import parameter_count
from dip_export.config import DiPConfig, check_sampling_defaults
from dip_export.errors import DipError, ExportError, UsageError
from dip_export.export.naming import model_name_problem
from dip_export.io import EXPORT_FORMAT_PREFIX, MANIFEST_NAME, atomic_path, check_replaceable_folder, settle_swap
from dip_export.ownership import (
    contents_mac,
    file_sha256,
    folder_contents,
    mac_problem,
    owner_key,
    unlisted_entries,
)
from dip_export.runtime.catalog import ALL_PRECISIONS
from dip_export.settings import BUILD_TARGETS, MAX_IMAGE_SIDE, OPSETS, int_text, name_text, plain_value, value_kind
from dip_export.untrusted import Stamp, UntrustedFileError, contained, file_stamp, graph_files, name_problem, read_json

MANIFEST = MANIFEST_NAME
FORMAT = EXPORT_FORMAT_PREFIX + "1"
PRECISIONS = ALL_PRECISIONS  # every precision some backend runs, from the backend catalog
ROLES = ("backbone", "detailer")  # the sub-models every export holds
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul", "QLinearConv",
                 "MatMulInteger", "ConvInteger"}  # fmt: skip
MAX_MANIFEST_BYTES = 16 << 20
# Every operator `dip-export onnx` writes (fp32, fp16, bf16; int8 and fp8 add Q/DQ), all of the default ONNX domain.
# A graph with any other is not the exporter's: tests/hostile/test_graph_limits.py exports each precision and fails
# when the exporter starts writing one not listed here.
EXPORTER_OPS = frozenset({
    "Add", "Cast", "Concat", "Conv", "ConvTranspose", "Cos", "DequantizeLinear", "Gather", "Gemm", "MatMul",
    "MaxPool", "Mul", "Pow", "QuantizeLinear", "Reciprocal", "ReduceMean", "Reshape", "Shape", "Sigmoid", "Sin", "Slice",
    "Softmax", "Split", "Sqrt", "Squeeze", "Sub", "Transpose", "Unsqueeze",
})  # fmt: skip
SIZING_BATCH = 2  # the graph's tensors are sized at one CFG pair, the batch exports are traced and verified at


@dataclass
class Manifest:
    name: str  # model name (folder names, tables)
    precision: str  # fp32 | fp16 | bf16 | int8
    image_size: tuple[int, int]  # (H, W) fixed at export
    config: DiPConfig
    files: dict[str, str]  # sub-model -> ONNX path relative to the folder
    source: dict[str, str]  # checkpoint path and sha256 (or preset / demo)
    versions: dict[str, str]  # tool versions that wrote it
    opset: int
    verification: dict[str, Any] = field(default_factory=dict)  # errors vs PyTorch per output
    sampling: dict[str, Any] = field(default_factory=dict)  # recommended sampler settings
    engines: dict[str, Any] = field(default_factory=dict)  # TensorRT plans built from this export
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific notes (quantization, timings)
    contents: dict[str, Any] = field(default_factory=dict)  # every other file of the folder: size and sha256
    owner_mac: str = ""  # HMAC of `contents` under this user's key: only then may the tool replace the folder
    format: str = FORMAT

    @property
    def identity(self) -> str:
        """The export by content, as read: sha256 over every field, the listed files' sha256 among them (each graph and
        its external data is checked against that list as it is read: `read_manifest`)."""
        import hashlib

        fields = marked_fields(self.to_json())  # the owner's mark aside: the same export for every user
        text = json.dumps(fields, sort_keys=True, ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def target(self) -> str:
        """The runtime the graphs were made for: onnx (ONNX Runtime), or trt (`--target trt`: Q/DQ graphs shaped for
        TensorRT, checked by `parse_manifest`)."""
        return str(self.extra.get("target", "onnx"))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["config"] = DiPConfig.from_dict(data["config"])
        data["image_size"] = tuple(data["image_size"])
        return cls(**data)


def write_manifest(folder: Path, manifest: Manifest, written: Iterable[str] | None = None) -> None:
    """The manifest, listing the folder's files and marking the list with this user's key (`contents_mac`): what
    makes the folder provably the tool's.

    A new folder (`written` None) lists everything in it. In a folder that already holds an export,
    only the names this run `written` (files, or folders whose files it wrote) join the listed contents,
    with their hashes; a file someone else put there stays unlisted, so the folder is never taken for
    the tool's own and replaced with it."""
    if written is None:
        manifest.contents = folder_contents(folder)
    else:
        added: dict[str, Any] = {}
        for name in written:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                added.update({f"{name}/{rel}": entry for rel, entry in folder_contents(path).items()})
            elif path.is_file() and not path.is_symlink():
                added[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        kept = {rel: entry for rel, entry in manifest.contents.items() if (folder / rel).exists()}
        manifest.contents = {**kept, **added}
    manifest.owner_mac = ""
    manifest.owner_mac = contents_mac(marked_fields(manifest.to_json()), owner_key(create=True) or b"")
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")


def marked_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """What a manifest's owner mark covers: every field but the mark itself, as read back from the file (the file
    list with every other field: a manifest edited by hand is no longer the tool's, whatever it changed)."""
    return {k: v for k, v in json.loads(json.dumps(data)).items() if k != "owner_mac"}


def check_is_export(folder: Path) -> Path:
    """The path of the manifest a folder given as an export holds (a folder with none is refused: it is no export)."""
    path = Path(folder) / MANIFEST
    if not os.path.lexists(path):
        raise ExportError(f"{folder} is not an export folder (no {MANIFEST}); run `dip-export onnx` first")
    if not path.is_file() and not path.is_symlink():  # a folder, a FIFO, a device: the reader refuses it by name
        raise ExportError(f"{path}: not a regular file; an export's {MANIFEST} is one")
    return path


def read_manifest(folder: Path) -> Manifest:
    """The manifest of an export folder, checked against its schema and its ONNX files before use."""
    folder = Path(folder)
    path = check_is_export(folder)
    try:
        data = read_json(path, folder=folder, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
    except UntrustedFileError as err:
        raise ExportError(str(err)) from None
    try:
        manifest = parse_manifest(data)
    except (ValueError, TypeError, KeyError, UsageError) as err:
        raise ExportError(f"{path}: invalid manifest ({manifest_error(err)})") from None
    held = sum(check_graph(folder, inside(folder, rel, role), role, manifest) for role, rel in manifest.files.items())
    check_weight_count(folder, manifest, held)
    for precision, entry in manifest.engines.items():
        for role, rel in entry["files"].items():
            inside(folder, rel, f"{precision} {role} engine", must_exist=False)
    return manifest


def manifest_error(err: Exception) -> str:
    """Why a manifest was refused, in words: a missing field is named as one (not as a bare key)."""
    if isinstance(err, KeyError):
        return f"the field {str(err.args[0])[:100] if err.args else '?'} is missing"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


MAX_TOLERANCE = 1.0  # the widest any check of the tool's uses is 0.3 (fp8)


def _check_verification(report: dict[str, Any]) -> None:
    """An export's check against PyTorch, where it records one: the tool writes none that failed (above the tolerance
    nothing is written), so a report that did not pass is a manifest changed or not the tool's."""
    if report.get("passed") is not True:
        raise ValueError("verification.passed is not true: this export did not match PyTorch; export it again")
    if not isinstance(report.get("rows"), list) or not report["rows"]:
        raise ValueError("verification.rows is empty: no comparison with PyTorch is recorded; export it again")
    worst, tolerance = report.get("worst_rel"), report.get("tolerance")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (worst, tolerance))
    if tolerance is not None and (not numbers or not 0 < tolerance <= MAX_TOLERANCE):  # type: ignore[operator]
        raise ValueError(f"verification.tolerance must be a number in (0, {MAX_TOLERANCE}]: a wider one checks nothing")
    if worst is not None and (not numbers or not 0 <= worst <= tolerance):  # type: ignore[operator]
        raise ValueError("verification.worst_rel is not within 0..its tolerance: this export did not match PyTorch")


def parse_manifest(data: Any) -> Manifest:
    """Types and values of every field; raises ValueError / TypeError naming the first bad one."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, found {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ValueError(f"unknown format ({value_kind(data.get('format'))}), expected {FORMAT}")
    names = {f.name for f in fields(Manifest)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{len(unknown)} unknown field(s), the first {plain_value(unknown[0])}")
    _typed(data, "name", str)
    _typed(data, "opset", int)
    if data["opset"] not in OPSETS:  # the range `dip-export onnx --opset` takes
        raise ValueError(f"opset must be in {OPSETS.start}..{OPSETS.stop - 1}, got {int_text(data['opset'])}")
    for key in ("files", "source", "versions"):
        _typed(data, key, dict)
    for key in ("verification", "sampling", "engines", "extra"):
        _typed(data, key, dict, required=False)
    _typed(data, "contents", dict)  # every file the export wrote, hashed: without it nothing proves the graphs are its
    _typed(data, "owner_mac", str, required=False)
    _check_name(data)
    _short_text(data["versions"], data["versions"], "versions.", 100)
    _check_source(data["source"])
    if data["precision"] not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {plain_value(data['precision'])}")
    size = data["image_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int and 1 <= v <= MAX_IMAGE_SIDE for v in size)):
        raise ValueError(f"image_size must be [H, W] with integers in 1..{MAX_IMAGE_SIDE}, got {plain_value(size)}")
    if not isinstance(data["config"], dict):
        raise TypeError("config must be an object")
    _check_files(data["files"], required=ROLES)
    _check_contents(data["contents"])
    for precision, entry in data.get("engines", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            raise ValueError(f"engines entry {plain_value(precision)} must be an object with files")
        _check_files(entry["files"])
    if "verification" not in data:  # both writers record one: a manifest without it cannot show the export matched
        raise KeyError("verification")
    _check_verification(data["verification"])
    check_sampling_defaults(data.get("sampling", {}))
    _check_target(data.get("extra", {}).get("target", "onnx"), data["precision"])
    manifest = Manifest.from_json(data)
    patch = manifest.config.patch_size
    if any(v % patch for v in manifest.image_size):
        raise ValueError(f"image_size {size} is not a multiple of the patch size {patch}")
    return manifest


def _check_source(source: dict[str, Any]) -> None:
    """The checkpoint an export was made from: short text values, its sha256 a digest (or empty: a preset, the demo)."""
    _short_text(source, source, "source.", 4096)  # an absolute checkpoint path and its sha256
    if not (source.get("sha256", "") == "" or _SHA256.fullmatch(source["sha256"])):
        raise ValueError("source.sha256 must be a checkpoint's sha256 (64 hex digits) or empty")


def _check_target(target: Any, precision: str) -> None:
    """`extra.target`: the runtime the graphs were made for, other than onnx only for an int8 or fp8 export."""
    if not isinstance(target, str) or target not in BUILD_TARGETS:
        raise ValueError(f"extra.target must be one of {', '.join(BUILD_TARGETS)}, got {value_kind(target)}")
    if target != "onnx" and precision not in ("int8", "fp8"):  # what `--target` takes (BuildSettings)
        raise ValueError(f"extra.target {target} goes with an int8 or fp8 export, not {precision}")


def _check_name(data: dict[str, Any]) -> None:
    """The model's name: one the tool gives a model (`naming.model_name_problem`), as its folders are named after it."""
    if not isinstance(data["name"], str):
        raise TypeError(f"name must be a string, got {type(data['name']).__name__}")
    problem = model_name_problem(data["name"])
    if problem:
        raise ValueError(f"name {problem}")


def _short_text(table: dict[str, Any], keys: Iterable[str], what: str, limit: int) -> None:
    """Each `table[key]` is a string of at most `limit` characters (`what` names the table in the message)."""
    for key in keys:
        value = table[key]
        if not isinstance(value, str) or len(value) > limit:
            got = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
            raise ValueError(f"{what}{name_text(key)} must be a string of at most {limit} characters, got {got}")


def _typed(data: dict[str, Any], key: str, kind: type, required: bool = True) -> None:
    if key not in data:
        if required:
            raise KeyError(key)
        return
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{key} must be of type {kind.__name__}, got {type(value).__name__}")


def _check_files(files: dict[str, Any], required: tuple[str, ...] = ()) -> None:
    missing = [r for r in required if r not in files]
    if missing:
        raise ValueError(f"files lacks {', '.join(missing)}")
    bad = [k for k, v in files.items() if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(f"files entry {plain_value(bad[0])} must be a relative path (a string)")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_contents(contents: dict[str, Any]) -> None:
    """Each listed file as the export wrote it: a plain relative name inside the folder, its size in bytes and its
    sha256. Every graph and its external data must be among them, checked as each is read (`_check_recorded`)."""
    if not contents:
        raise ValueError("contents lists no file: this export's files cannot be checked (export it again)")
    for rel, entry in contents.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        sized = type(size) is int and size >= 0
        named = plain_relative(rel) and ".." not in rel.split("/") and "\\" not in rel and rel != MANIFEST
        if not named or not sized or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(f"contents entry {name_text(rel, r'[A-Za-z0-9_./-]{1,80}')} must be a plain file name inside "
                             "the folder with its size and sha256")  # fmt: skip


def plain_relative(rel: str) -> bool:
    """A path named as written by this tool: relative, no empty or '.' part, no trailing '/', so that one file has
    one name only (`./backbone.onnx` and `backbone.onnx/` are not it). A '..' part is the containment rules' to
    refuse (`inside`, `contained`), as leading outside."""
    return not os.path.isabs(rel) and all(part not in ("", ".") for part in rel.replace("\\", "/").split("/"))


def inside(folder: Path, rel: str, role: str, must_exist: bool = True) -> Path:
    """`folder/rel` when it stays inside `folder`: no absolute path, no `..`, no symlink on the way (`contained`),
    and named plainly (`plain_relative`)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or os.path.isabs(rel) or ".." in pure.parts or "\\" in rel:
        raise ExportError(f"{folder}: the {role} path in the manifest leads outside the export folder")
    if not plain_relative(rel):
        raise ExportError(f"{folder}: the {role} path in the manifest is not a plain relative file name "
                          "(an empty or '.' part, a trailing '/')")  # fmt: skip
    try:
        path = contained(folder, rel, f"{role} file", source=folder / MANIFEST)
    except UntrustedFileError as err:
        raise ExportError(str(err)) from None
    if must_exist and not path.is_file():
        raise ExportError(f"{folder}: the {role} file {rel} named in the manifest is missing")
    return path


def check_graph(folder: Path, path: Path, role: str, manifest: Manifest) -> int:
    """The ONNX file parses, takes the manifest's image size, imports its opset, and carries the precision it is
    labelled with. Returns the elements of every initializer it declares (for `check_weight_count`)."""
    from dip_export.export.spec import io_specs

    spec = io_specs(manifest.config, *manifest.image_size).get(role)
    if spec is None:
        raise ExportError(f"{folder}: unknown sub-model {plain_value(role)} in the manifest")
    io = tuple((t.name, tuple(d if isinstance(d, int) else None for d in t.shape)) for t in spec.inputs + spec.outputs)
    problem, elements, largest = _graph_problem(str(path.resolve()), file_stamp(path), str(folder.resolve()),
                                                manifest.precision, io, _config_dims(manifest.config, role),
                                                manifest.opset, manifest.target)  # fmt: skip
    if problem:
        raise ExportError(f"{path}: {problem}")
    _check_computed(path, largest, manifest)
    try:
        files = graph_files(folder, [path.relative_to(folder).as_posix()]) if path.is_relative_to(folder) else [path]
    except UntrustedFileError as err:
        raise ExportError(str(err)) from None
    for file in files:
        _check_recorded(folder, file, manifest)  # the graph and its external weights: each the file the export wrote
    return elements


def _check_computed(path: Path, largest: tuple[int, int, int], manifest: Manifest) -> None:
    """The largest tensor the graph computes (at SIZING_BATCH) fits in the memory budget, and within ENVELOPE_SLACK
    of what the exporter's graphs of the manifest's config compute (`exporter_envelope`): a graph that computes
    more would grow past the run's memory estimate with the batch. The bytes it keeps alive at once stay within
    LIVE_SLACK of that envelope (many tensors each small enough, held together). `largest`: (computed bytes, the
    elements of the largest initializer, which a quantized graph dequantizes whole, the live peak's bytes)."""
    from dip_export.budget import gib, memory_limit

    computed, weight, live = largest
    limit = memory_limit()
    if computed > limit:
        raise ExportError(f"{path}: the graph computes a tensor of {gib(computed)} at batch {SIZING_BATCH}, more than "
                          f"the memory budget of {gib(limit)}; refusing to run it")  # fmt: skip
    need = max(exporter_envelope(manifest.config, manifest.image_size), 4 * weight)
    if computed > ENVELOPE_SLACK * need:
        raise ExportError(f"{path}: the graph computes a tensor of {gib(computed)} at batch {SIZING_BATCH}, more than "
                          f"{ENVELOPE_SLACK}x the largest the exporter's graphs of this config compute ({gib(need)}); "
                          "refusing to run it")  # fmt: skip
    if live > LIVE_SLACK * need:
        raise ExportError(f"{path}: the graph keeps {gib(live)} of computed tensors alive at once at batch {SIZING_BATCH}, "
                          f"more than {LIVE_SLACK}x the largest tensor the exporter's graphs of this config compute "
                          f"({gib(need)}); refusing to run it")  # fmt: skip


ENVELOPE_SLACK = 4
LIVE_SLACK = 16  # the exporter's graphs keep at most about twice their largest tensor alive at once


def exporter_envelope(config: DiPConfig, image_size: tuple[int, int]) -> int:
    """Bytes of the largest float32 tensor the exporter's graphs compute at SIZING_BATCH: the backbone's per-token
    widths (qkv, MLP, attention scores) over the tokens, or an image-sized map (the patchified input, the
    detailer's first level with its skip connection)."""
    height, width = image_size
    tokens = (height // config.patch_size) * (width // config.patch_size)
    per_token = max(3 * config.hidden_size, config.mlp_hidden, config.num_heads * tokens)
    image = 2 * max(config.detailer_width, config.in_channels) * height * width
    return SIZING_BATCH * 4 * max(tokens * per_token, image)


def _largest_tensor(model: Any, graph_dir: Path) -> tuple[str, int, int]:
    """Bytes of the largest tensor a node of the graph computes, and the most bytes of them alive at once
    (`_live_peak`), its shapes inferred by ONNX (constants propagated) with the batch at SIZING_BATCH; or why they
    cannot be inferred. Inferred again at twice that batch: no tensor may grow faster than the batch (the run's
    estimate scales the graph's tensors linearly; one that grew with the batch's square passed at SIZING_BATCH and
    took a large batch past the memory limit). Called once the structure has passed; the weights are taken out
    first (inference needs their shapes only), so the check holds no copy of them."""
    from onnx import helper

    _load_small_external(model, graph_dir)
    graph = model.graph
    del graph.value_info[:]  # only what inference derives is trusted
    weights = [t for t in graph.initializer if _tensor_bytes(t) > SMALL_EXTERNAL]
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    keep = [t for t in graph.initializer if _tensor_bytes(t) <= SMALL_EXTERNAL]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    problem, sizes, inferred = _computed_sizes(model, SIZING_BATCH)
    if problem:
        return problem, 0, 0
    problem, doubled, _ = _computed_sizes(model, 2 * SIZING_BATCH)
    if problem:
        return problem, 0, 0
    for number, node in enumerate(inferred.graph.node, 1):
        if any(doubled.get(name, 0) > 2 * sizes[name] for name in node.output if name in sizes):
            return (f"node #{number} ({node.op_type}) computes a tensor that grows faster than the batch; the "
                    "exporter's graphs grow with it linearly"), 0, 0  # fmt: skip
    return "", max(sizes.values(), default=0), _live_peak(inferred.graph, sizes)


def _computed_sizes(model: Any, batch: int) -> tuple[str, dict[str, int], Any]:
    """The bytes of every tensor a node computes with the batch (the one dynamic axis of the exporter's I/O) at
    `batch`, inferred by ONNX on a copy; or why they cannot be."""
    import math

    import onnx
    from onnx import helper, shape_inference

    sized = onnx.ModelProto()
    sized.CopyFrom(model)
    for value in [*sized.graph.input, *sized.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    try:
        inferred = shape_inference.infer_shapes(sized, strict_mode=True, data_prop=True)  # types: bf16 Conv is not in the schema
    except Exception as err:  # onnx raises its own InferenceError, ValidationError and others
        return f"ONNX shape inference fails on the graph ({type(err).__name__})", {}, None
    known = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    sizes: dict[str, int] = {}
    for number, node in enumerate(inferred.graph.node, 1):
        for name in filter(None, node.output):
            kind = known.get(name)
            if kind is None or not kind.HasField("shape") or not all(d.HasField("dim_value") for d in kind.shape.dim):
                return (
                    (
                        f"node #{number} ({node.op_type}) computes a tensor whose size depends on data; "
                        "the exporter's graphs have static sizes"
                    ),
                    {},
                    None,
                )
            try:
                element = helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize
            except (KeyError, TypeError, ValueError):
                element = 8
            sizes[name] = math.prod(max(d.dim_value, 0) for d in kind.shape.dim) * element
    return "", sizes, inferred


def _live_peak(graph: Any, sizes: dict[str, int]) -> int:
    """The most bytes of computed tensors alive at once, the nodes run in the graph's order (ONNX stores them
    topologically sorted): a tensor lives from its node to the last node that reads it (a graph output to the
    end). Each tensor may be small while thousands are kept alive together."""
    last: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            if name in sizes:
                last[name] = index
    for value in graph.output:
        last[value.name] = len(graph.node)
    live = peak = 0
    for index, node in enumerate(graph.node):
        made = [name for name in node.output if name in sizes]
        live += sum(sizes[name] for name in made)
        peak = max(peak, live)
        done = {name for name in node.input if last.get(name) == index} | {name for name in made if name not in last}
        live -= sum(sizes[name] for name in done if name in sizes)
    return peak


SMALL_EXTERNAL = 1 << 16  # external tensors up to this size are read for shape inference (shapes, axes, constants)


def _load_small_external(model: Any, graph_dir: Path) -> None:
    """Shape inference propagates constants only from tensors it can read: a small one stored as external data
    (already checked by `_external_problem`: contained, within its file) is read in; the weights stay on disk."""
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor) and _tensor_bytes(tensor) <= SMALL_EXTERNAL:
            load_external_data_for_tensor(tensor, str(graph_dir))
            tensor.data_location = TensorProto.DEFAULT
            del tensor.external_data[:]


def _check_recorded(folder: Path, path: Path, manifest: Manifest) -> None:
    """A graph or its external weights: the manifest's contents list it (with its size and sha256, as the export wrote
    it) and it is still that file."""
    rel = path.relative_to(folder).as_posix() if path.is_relative_to(folder) else None
    entry = manifest.contents.get(rel) if rel is not None else None
    if not isinstance(entry, dict):  # a list that leaves this file out: it is not one the export wrote
        raise ExportError(f"{path}: not among the files {MANIFEST} lists as written by the export")
    stamp = file_stamp(path)
    if stamp[2] != entry.get("size") or _sha256(str(path.resolve()), stamp) != entry.get("sha256"):
        raise ExportError(f"{path}: changed since export (its size or sha256 is not the one {MANIFEST} records)")


@functools.lru_cache(maxsize=64)
def _sha256(path: str, stamp: Stamp) -> str:  # once per file as it is (`file_stamp`)
    return file_sha256(Path(path))


@functools.lru_cache(maxsize=64)
def _graph_problem(
    path: str,
    stamp: Stamp,  # the file as it is: its result is kept for that file only
    folder: str,
    precision: str,
    io: tuple[Any, ...],
    config_dims: tuple[int, int, int],
    opset: int,
    target: str = "onnx",
) -> tuple[str, int, tuple[int, int, int]]:
    """What is wrong with a graph ("" if nothing), the elements of its initializers (external data not read), and
    the bytes of the largest tensor it computes (`_largest_tensor`) with the elements of its largest initializer."""
    import math

    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError, and others on random bytes
        return f"not a readable ONNX model ({type(err).__name__})", 0, (0, 0, 0)
    graph = model.graph
    elements = sum(math.prod(max(int(d), 0) for d in tensor.dims) for tensor in graph.initializer)
    problem = _structure_problem(graph, model, stamp[2], path, precision, io, config_dims, opset, target)
    if problem:
        return problem, elements, (0, 0, 0)
    weight = max((math.prod(max(int(d), 0) for d in tensor.dims) for tensor in graph.initializer), default=0)
    problem, computed, live = _largest_tensor(model, Path(path).parent)  # last: it takes the weights out of `model`
    return problem, elements, (computed, weight, live)


def _structure_problem(
    graph: Any,
    model: Any,
    size: int,
    graph_path: str,
    precision: str,
    io: tuple[Any, ...],
    config_dims: tuple[int, int, int],
    opset: int,
    target: str = "onnx",
) -> str:
    problem = _form_problem(model)
    if problem:
        return problem
    problem, stored = _external_problem(graph, Path(graph_path).parent)
    problem = problem or _declared_problem(graph, size + stored)
    if problem:
        return problem
    problem = _operator_problem(graph) or _opset_problem(model, opset)
    if problem:
        return problem
    found = {v.name: v for v in list(graph.input) + list(graph.output)}
    for name, want in io:
        if name not in found:
            return f"not this sub-model's graph (no input or output {name})"
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in found[name].type.tensor_type.shape.dim)
        if len(dims) != len(want) or any(w is not None and d != w for d, w in zip(dims, want, strict=True)):
            return f"{name} has shape {list(dims)}, the manifest's config and image size give {list(want)}"
    problem = _config_problem(graph, *config_dims)
    return problem or _precision_problem(model, precision) or _target_problem(model, precision, target)


def _config_dims(config: DiPConfig, role: str) -> tuple[int, int, int]:
    """What `_config_problem` reads off a sub-model's weights: the classes, the heads and each head's width (the
    backbone's; 0 for the detailer, which holds no attention)."""
    heads = config.num_heads if role == "backbone" else 0
    return config.num_classes, heads, config.head_dim if heads else 0


def _config_problem(graph: Any, num_classes: int, num_heads: int, head_dim: int) -> str:
    """The manifest's config against the graph's weights where it sets their shapes: the label table (num_classes
    rows + the null class) and, in a backbone, the attention's query and key norms (each one head wide): the memory
    estimate counts attention scores per head, so a config with fewer heads than the graph computes would
    understate it."""
    norms = 0
    for tensor in graph.initializer:
        if tensor.name.endswith("embedding_table.weight") and tensor.dims and tensor.dims[0] != num_classes + 1:
            return f"the graph has {tensor.dims[0] - 1} classes, the manifest's config says {num_classes}"
        if head_dim and tensor.name.endswith(("attn.q_norm.weight", "attn.k_norm.weight")):
            norms += 1
            if list(tensor.dims) != [head_dim]:
                width = tensor.dims[0] if len(tensor.dims) == 1 and tensor.dims[0] > 0 else 0
                held = f"heads {width} wide" if width else f"attention norms of shape {list(tensor.dims)[:4]}"
                return f"the graph has {held}, the manifest's config says {num_heads} heads of {head_dim}"
    if head_dim and not norms:
        return "the graph holds no attention norm weights (attn.q_norm / attn.k_norm): not the exporter's backbone"
    return ""


def _target_problem(model: Any, precision: str, target: str) -> str:
    """An int8 graph's shape says which runtime it was made for: for TensorRT (`--target trt`) its float part is
    fp16, for ONNX Runtime it stays float32; the label must say the same (a TensorRT graph never runs on ONNX Runtime
    under an `onnx:int8` label)."""
    from onnx import TensorProto

    if precision != "int8":
        return ""
    shaped = "trt" if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) else "onnx"
    if shaped != target:
        made = {"trt": "TensorRT (--target trt)", "onnx": "ONNX Runtime (--target onnx)"}
        return f"labelled for {made[target]} but the graph is shaped for {made[shaped]}"
    return ""


def graph_opset(model: Any) -> int:
    """The ONNX (default domain) opset a graph imports; 0 when it imports none."""
    return max(_default_opsets(model), default=0)


def _default_opsets(model: Any) -> set[int]:
    return {int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")}


def _opset_problem(model: Any, opset: int) -> str:
    """The graph imports the default ONNX domain at the manifest's opset, and at no other (what its operators mean,
    and what shape inference and the runtimes read them as, depends on it)."""
    found = _default_opsets(model)
    if found == {opset}:
        return ""
    held = f"opset {', '.join(map(str, sorted(found)))}" if found else "no ONNX opset"
    return f"the graph imports {held} where the manifest's opset is {opset}; refusing to run it"


def _form_problem(model: Any) -> str:
    """The graph holds its weights only as initializers and its nodes only number and text attributes, as the
    exporter writes them: a sparse initializer (densified by ONNX Runtime, past the weights' checks, the budget and
    the content identity), a tensor- or graph-valued attribute, a model-local function or training info is refused."""
    from onnx import AttributeProto

    plain = {AttributeProto.FLOAT, AttributeProto.INT, AttributeProto.STRING, AttributeProto.FLOATS, AttributeProto.INTS,
             AttributeProto.STRINGS}  # fmt: skip
    graph, never = model.graph, "which the exporter never writes; refusing to run it"
    if len(graph.sparse_initializer):
        return f"the graph holds {len(graph.sparse_initializer)} sparse initializer(s), {never}"
    if len(model.functions) or len(model.training_info):
        return f"the graph defines functions or training info, {never}"
    for number, node in enumerate(graph.node, 1):  # another operator is refused by name (`_operator_problem`)
        if node.op_type in EXPORTER_OPS and any(attribute.type not in plain for attribute in node.attribute):
            return f"node #{number} has a tensor- or graph-valued attribute, {never}"
    return ""


def _operator_problem(graph: Any) -> str:
    """Every node is an operator of EXPORTER_OPS, in the default ONNX domain. Only names ONNX itself defines are
    shown (the graph's own text never is)."""
    from onnx import defs

    foreign = {(node.op_type, node.domain) for node in graph.node
               if node.domain not in ("", "ai.onnx") or node.op_type not in EXPORTER_OPS}  # fmt: skip
    if not foreign:
        return ""
    named = sorted(op for op, domain in foreign if domain in ("", "ai.onnx") and defs.has(op))
    shown = f": {', '.join(named[:4])}" if named and len(named) == len(foreign) else ""
    return f"the graph uses {len(foreign)} operator(s) the exporter never writes{shown}; refusing to run it"


_DECIMAL = re.compile(r"[0-9]{1,19}")  # an external-data offset or length: what a protobuf string may hold


def _external_problem(graph: Any, graph_dir: Path) -> tuple[str, int]:
    """Each initializer's external data lies in a regular file `contained` in the export folder (named relative to
    it, never through a symlink), and its offset and length (or its declared bytes) fit in that file: checked
    before ONNX Runtime reads any of it. A tensor marked as external names its file, a length given is the
    tensor's bytes, and no two tensors share bytes of one file. ("" if so, and the bytes of the distinct files,
    for `_declared_problem`.)"""
    from onnx import TensorProto

    sizes: dict[Path, int] = {}
    ranges: dict[Path, list[tuple[int, int, int]]] = {}
    for number, tensor in enumerate(graph.initializer, 1):
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if "location" not in entries:
            if tensor.data_location == TensorProto.EXTERNAL or entries:
                return f"tensor #{number} is marked as external data but names no file; refusing to read it", 0
            continue
        location = entries["location"]
        if os.path.isabs(location) or location.startswith(("/", "\\")):
            return (f"external data of tensor #{number} is named by an absolute path (ONNX takes a path relative to "
                    "the graph's folder only); refusing to read it"), 0  # fmt: skip
        if not plain_relative(location):
            return (f"external data of tensor #{number} is not named as a plain relative file name (an empty or '.' "
                    "part, a trailing '/'); refusing to read it"), 0  # fmt: skip
        try:
            data = contained(graph_dir, entries["location"], "external data")  # graph_dir: checked, inside `folder`
        except UntrustedFileError as err:
            where = "is a symlink, or lies in a symlinked folder" if "symlink" in str(err) else "lies outside the export folder"
            if name_problem(entries["location"]) is not None:
                where = "is named by a path that is not a valid file name"
            return f"external data of tensor #{number} {where}; refusing to follow it", 0
        if data not in sizes:
            if not data.is_file():
                return f"external data of tensor #{number} is missing or not a regular file", 0
            sizes[data] = data.stat().st_size
        numbers = {key: entries.get(key, "0") for key in ("offset", "length")}
        if not all(_DECIMAL.fullmatch(v) for v in numbers.values()):
            return f"external data of tensor #{number} has an offset or length that is not a whole number", 0
        offset, length = (int(numbers[key]) for key in ("offset", "length"))
        if offset + max(length, _tensor_bytes(tensor)) > sizes[data]:
            return f"external data of tensor #{number} declares more bytes than {data.name} holds", 0
        if "length" in entries and length != _tensor_bytes(tensor):  # the exporter writes the tensor's exact bytes
            return f"external data of tensor #{number} declares {length} bytes where the tensor has {_tensor_bytes(tensor)}", 0
        ranges.setdefault(data, []).append((offset, offset + _tensor_bytes(tensor), number))
    for spans in ranges.values():  # the exporter writes each tensor's bytes once, one after another
        spans.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(spans):
            if start < end:
                return f"external data of tensors #{first} and #{second} overlap in one file; refusing to read it", 0
    return "", sum(sizes.values())


def _tensor_bytes(tensor: Any) -> int:
    """The bytes a tensor's dims and element type declare (8 per element for a type numpy does not know)."""
    import math

    from onnx import helper

    try:
        element = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        element = 8
    return math.prod(max(int(d), 0) for d in tensor.dims) * element


def check_weight_count(folder: Path, manifest: Manifest, held: int) -> None:
    """The graphs hold the weights of the manifest's config: its exact parameter count, within the allowance for
    position tables and small constants (plus per-channel scales in a quantized graph; minus a few tensors the
    exporter folds away). A config that is not the graph's is refused. `held`: the elements the graphs declare."""
    config = manifest.config
    want = parameter_count(config)
    if abs(held - want) > weight_allowance(config, manifest.image_size, manifest.precision):
        shape = f"hidden {config.hidden_size}, depth {config.depth}, patch {config.patch_size}"
        raise ExportError(f"{folder}: the graphs hold {held:,} weights where the manifest's config ({shape}) has {want:,}: "
                          "the manifest does not describe these graphs")  # fmt: skip


def weight_allowance(config: DiPConfig, image_size: tuple[int, int], precision: str) -> int:
    """Elements a graph may hold beyond the parameters: RoPE tables and shapes (far less than one block), and
    per-channel scales in a quantized graph."""
    tokens = (image_size[0] // config.patch_size) * (image_size[1] // config.patch_size)
    scales = parameter_count(config) // 8 if precision in ("int8", "fp8") else 0
    return 8 * tokens * config.hidden_size + (1 << 14) + scales


def _declared_problem(graph: Any, stored: int) -> str:
    """The weights a graph declares (or the external bytes it names, where more) fit in the bytes it and its
    external data hold, and in memory."""
    from dip_export.budget import BudgetError, check_declared

    total = 0
    for tensor in graph.initializer:
        length = {entry.key: entry.value for entry in tensor.external_data}.get("length", "0")
        total += max(_tensor_bytes(tensor), int(length) if _DECIMAL.fullmatch(length) else 0)
    try:
        check_declared(total, 1, "its weights", file_size=stored)
    except BudgetError as err:
        return str(err)
    return ""


def _precision_problem(model: Any, precision: str) -> str:
    from onnx import TensorProto

    ops = {node.op_type for node in model.graph.node}
    kinds = {t.data_type for t in model.graph.initializer}
    quantized = bool(ops & QUANTIZED_OPS)
    expected = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
    if precision == "fp8" and not quantized and TensorProto.FLOAT16 in kinds:
        return ""  # fp8 covers GEMMs only: a convolution-only graph (the detailer) stays fp16
    if precision in ("int8", "fp8"):
        return "" if quantized else f"labelled {precision} but the graph holds no quantized operators"
    if quantized:
        return f"labelled {precision} but the graph is quantized"
    if precision in expected and expected[precision] not in kinds:
        return f"labelled {precision} but the graph holds no {precision} weights"
    if precision == "fp32" and kinds & set(expected.values()):
        return "labelled fp32 but the graph holds reduced-precision weights"
    return ""


def ownership_problem(folder: Path) -> str | None:
    """Why `folder` is not provably an export of this tool (None: it is, file for file)."""
    if folder.is_symlink() or not folder.is_dir():
        return "it is not a plain folder"
    if not (folder / MANIFEST_NAME).is_file():
        return f"it holds no {MANIFEST_NAME}"
    try:
        raw = read_json(folder / MANIFEST_NAME, folder=folder, what="manifest")
        manifest = parse_manifest(raw)
    except (UntrustedFileError, ValueError, TypeError, KeyError, DipError) as err:
        reason = manifest_error(err).removeprefix(f"{folder / MANIFEST_NAME}: ")[:100]
        return f"its {MANIFEST_NAME} is not a valid one of this tool: {reason}"
    listed = manifest.contents  # never empty (`parse_manifest`)
    try:
        extra = unlisted_entries(folder, listed)  # folders too: a user's empty folder is not the tool's to delete
    except OSError as err:
        return f"it cannot be listed ({err.strerror or err})"
    if extra:
        return f"it holds files or folders its manifest does not list ({', '.join(extra[:3])})"
    forged = mac_problem(marked_fields(raw), manifest.owner_mac)  # the list and every other field, as written
    if forged:
        return forged
    for rel, entry in listed.items():
        path = folder / rel
        if path.is_symlink() or not path.is_file() or path.stat().st_size != entry.get("size"):
            return f"{rel} is missing or changed"
        if file_sha256(path) != entry.get("sha256"):
            return f"{rel} was changed after the export"
    return None


def check_export_target(target: Path) -> None:
    """An export folder may be created, or replace an earlier export of this tool; nothing else is touched.
    The owner key that will mark its manifest is checked here too (before the work), if one exists."""
    from dip_export.ownership import owner_key

    owner_key(create=False)
    check_replaceable_folder(target, ownership_problem)


def settle_export_swap(path: Path | str) -> None:
    """Before a local model path is read: a swap of an export at `path` that a killed run left (its journal
    `.NAME.swap.json` beside it) is finished or undone, as every writer does first (`io.settle_swap`): the new
    export stays if it was in place, else the old one comes back from its backup. Only a journal proven this
    tool's, naming a backup that is an export of this tool, is acted on; any other is refused in one line and
    nothing is renamed or deleted. Then what killed runs of this tool left beside it goes (`io.settle_swap`)."""
    settle_swap(Path(os.path.abspath(path)), ownership_problem)
