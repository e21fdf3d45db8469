"""Loading DiP weights: the release's Lightning checkpoint, bare state dicts, safetensors, and
the project's own format (safetensors with the config and sampling defaults in its metadata).

Pickles are opened in weights-only mode. A file that names other objects (a Lightning checkpoint's
training configs, callbacks, functools.partial) is read again with `inert_pickle`, which rebuilds the
tensors and puts inert placeholders where those objects were, so nothing in the file runs. Only a
file whose weights themselves cannot be read that way needs `trust=True` (`--trust-checkpoint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import pickle
import re
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dip_export.budget import (
    BudgetError,
    check_checkpoint_tensors,
    check_declared,
    check_memory,
    check_weights,
    names_no_dip,
    zip_mappable,
)
from dip_export.config import DiPConfig, check_sampling_defaults, get_preset
from dip_export.errors import CheckpointError, DipError, UsageError
from dip_export.messages import shortened
from dip_export.model import DiP
from dip_export.settings import name_text, one_of, optional_callable, path_text, trust_flag
from dip_export.text import visible
from dip_export.untrusted import (
    ChangedFileError,
    Stamp,
    UntrustedFileError,
    file_stamp,
    parse_json,
    sha256_as_read,
    sha256_file,
    source_identity,
)

DEMO_CHECKPOINT = Path(__file__).parent / "demo" / "dip-digits.safetensors"
META_CONFIG = "dip_config"  # safetensors metadata key: JSON of DiPConfig
META_SAMPLING = "dip_sampling"  # safetensors metadata key: JSON of recommended sampler settings
PREFIXES = ("model.", "module.", "_orig_mod.")
MAX_LISTED = 8
CODE_NAME = r"[A-Za-z_][A-Za-z0-9_.]{0,59}"  # a module and class a pickle names, shown as it is (else quoted, cut)
WEIGHT_NAME = r"[A-Za-z0-9_.]{1,120}"  # a weight's name shown as it is in messages; any other is quoted and escaped
MAX_SAFETENSORS_HEADER = 16 << 20  # a DiP's header: the released DiP-XL/16's is ~50 KB, the demo's 9.8 KB
MAX_HEADER_TENSORS = 20_000  # a DiP (EMA and raw weights together) has a few hundred tensors
MAX_TENSOR_DIMS = 8  # a DiP tensor has at most 4 dimensions
MAX_TENSOR_SIDE = 1 << 32  # a DiP tensor's longest side is its class table or MLP width: far below
SAFETENSORS_SIZES = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                     "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
# Called before a model is built with its config and the image size a run defaults to: the config's own image_size
# for a checkpoint or preset, an export's fixed image_size for an export folder (its config's image_size is the
# checkpoint's native resolution, which an export made at another size never runs at).
ConfigCheck = Callable[[DiPConfig, tuple[int, int]], None]


@dataclass
class LoadedModel:
    model: DiP
    config: DiPConfig
    name: str  # short name for folders and tables
    source: str  # path of the checkpoint, "preset:NAME" or the demo path
    sampling: dict[str, Any] = field(default_factory=dict)  # recommended steps / cfg / ...
    size_assumed: bool = False  # no stored config: the architecture was read off the weights, the image size assumed
    weights: str = "ema"  # which weights of a training checkpoint were taken (ema | raw)
    held_on: torch.device | None = field(default=None, compare=False, repr=False)  # the device a pipeline holds it on
    stamp: Stamp | None = field(default=None, compare=False, repr=False)  # the file as its weights were read

    def __post_init__(self) -> None:
        _record(self, "as_read", self._as_now())

    @property
    def as_read(self) -> tuple[Any, ...]:
        """The module's weights and where they were read from, as at load (`_as_now`); another: changed since.
        Kept outside the object (`_RECORDS`): nothing set on it changes the record."""
        return _RECORDS.get(id(self), {}).get("as_read", ())

    @property
    def checked_as(self) -> tuple[Any, ...]:
        """The signature its module last had where `module()` found it the architecture's; () before the first check."""
        return _RECORDS.get(id(self), {}).get("checked_as", ())

    def _as_now(self) -> tuple[Any, ...]:
        """What `as_read` records: the module's weights (`weights_signature`) and where they were read from (source,
        weights choice, file stamp); anything of it other than at load makes the model known by its weights alone."""
        return (weights_signature(self.model), self.source, self.weights, self.stamp)

    def __setattr__(self, field_name: str, value: Any) -> None:
        """What names folders and is written into exports is checked whenever it is set, at creation or later: the
        name (`naming.model_name_problem`: one part of a folder name, printed as itself), the recommended sampling
        (as a stored file's, `check_sampling_defaults`) and the weights choice. The config is always the one the
        module was built of. A module set after creation is not the source's (`identity` says so); where the weights
        were read from (source, weights choice, file stamp) is not set after creation at all."""
        if field_name in ("as_read", "checked_as"):
            raise UsageError(f"a model's {field_name} is the tool's own record; it is not set by hand")
        if field_name in ("model", "config"):
            _check_built_of(value if field_name == "model" else getattr(self, "model", None),
                            value if field_name == "config" else getattr(self, "config", None))  # fmt: skip
        value = _field_value(field_name, value)
        if field_name in _READ_AS and field_name in self.__dict__ and value != self.__dict__[field_name]:
            raise UsageError(f"a model's {field_name} is where its weights were read from; it is not set after loading "
                             "(load the model again, or make a new LoadedModel)")  # fmt: skip
        object.__setattr__(self, field_name, value)

    def source_sha256(self) -> str:
        """sha256 of the checkpoint file as its weights were read ("" for a preset); a file changed since is refused."""
        path = Path(self.source)
        if self.stamp is not None:
            return sha256_as_read(path, self.stamp)
        return sha256_file(path) if path.is_file() else ""

    def hold(self, device: torch.device) -> None:
        """Claim the module for a pipeline on `device`; one that another pipeline holds on another device is refused
        (an engine moves the module to its device: moving it under that pipeline would break it)."""
        device = _canonical(device)
        if self.held_on is not None and self.held_on != device:
            raise UsageError(
                f"this model is held by a pipeline on {self.held_on}; one on {device} needs its own copy: "
                f"DiPPipeline.load(..., device={str(device)!r})"
            )  # fmt: skip
        self.held_on = device

    @property
    def identity(self) -> str:
        """What defines this model's numbers, as one value: the source's content (sha256 of the file; a preset by
        name, its weights drawn from a fixed seed), which weights were taken from it, and the config the network
        was built of. Every cache and reuse of what the model computes keys on it: on-the-fly exports, calibration,
        reference images; two models with the same identity compute the same numbers. A module whose weights
        changed in memory since (another module set, `load_state_dict`, an optimizer's step, a tensor's `.data`
        replaced) is known by its weights' content instead (`weights_digest`), never by its source's."""
        if self.as_read != self._as_now():  # its weights' own content, once they are the architecture's (`module`)
            return "weights:" + weights_digest(self.module(), self.config)
        return model_identity(self.source, self.weights, self.config, self.stamp)

    def module(self) -> DiP:
        """The module, checked where the tool uses it (an engine, an export, a calibration, a reference): every field
        still one the setter takes (set around it too), its config still this model's (a module's `cfg` set since
        would have it traced or run as another architecture than its weights), and, whenever its signature is not the
        one last checked, its modules and weights those its config builds (`check_module`): a module changed in memory
        into another architecture is refused in one line before any work, never traced, run or exported."""
        for name in _RECHECKED:
            _field_value(name, getattr(self, name, None))
        _check_built_of(self.model, self.config)
        signature = weights_signature(self.model)
        if signature != self.checked_as:
            check_module(self.model)
            _record(self, "checked_as", signature)
        return self.model

    @contextlib.contextmanager
    def moving(self) -> Iterator[None]:
        """Around the tool's own move of the module to a device (a torch engine's): weights as the source gave them
        before the move are still its after it (the move replaces each tensor's storage, not its values)."""
        unchanged = self.as_read == self._as_now()
        yield
        if unchanged:
            _record(self, "as_read", self._as_now())


_RECORDS: dict[int, dict[str, tuple[Any, ...]]] = {}  # each live LoadedModel's records, by id (gone with it)


def _record(loaded: LoadedModel, key: str, value: tuple[Any, ...]) -> None:
    """Keep one of the tool's records of `loaded` outside it (a copy of the object has none: known by its weights
    alone, checked on use); the entry goes when the object does, before its id can be another's."""
    if id(loaded) not in _RECORDS:
        _RECORDS[id(loaded)] = {}
        weakref.finalize(loaded, _RECORDS.pop, id(loaded), None)
    _RECORDS[id(loaded)][key] = value


def weights_signature(model: torch.nn.Module) -> tuple[Any, ...]:
    """What any change of a module's weights or architecture in memory changes, read without touching their values:
    the module object, each submodule's name, object, settings (`_module_settings`) and hooks, the hooks every module
    runs, and each parameter's and buffer's name, object, storage, version counter (which every in-place operation,
    an optimizer's step and `load_state_dict` advance), dtype, shape, layout and device. An in-place write through a
    tensor's `.data` (which torch counts nowhere) is not seen."""
    modules = tuple((name, id(m), _module_settings(m), _hooks(m)) for name, m in model.named_modules())
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return (id(model), modules, _global_hooks(), *((name, id(t), _storage(t), t._version, t.dtype, tuple(t.shape),
                                                    t.layout, str(t.device)) for name, t in tensors))  # fmt: skip


def _storage(tensor: Tensor) -> Any:
    """Where a tensor's values live (a sparse or nested one has no one data pointer: its layout stands for it)."""
    try:
        return tensor.data_ptr()
    except RuntimeError:
        return ("no storage", str(tensor.layout))


_PLAIN_SETTING = (bool, int, float, str, tuple, type(None), DiPConfig)


def _module_settings(module: torch.nn.Module) -> tuple[Any, ...]:
    """A module's own settings (its public attributes: `num_heads`, a convolution's `padding`, an activation's
    `approximate`), as values where plain and as (type, object) otherwise (a function set as its `forward`)."""
    return tuple(sorted((k, v if isinstance(v, _PLAIN_SETTING) else (type(v).__name__, id(v)))
                        for k, v in vars(module).items() if not k.startswith("_") and k != "training"))  # fmt: skip


def _hooks(module: torch.nn.Module) -> int:
    """How many hooks a module holds (forward, backward, state-dict: each of torch's `_*hooks*` tables)."""
    return sum(len(v) for k, v in vars(module).items() if "hooks" in k and isinstance(v, dict))


def _global_hooks() -> int:
    """Hooks torch runs around every module's call (`register_module_forward_hook` and its kin)."""
    from torch.nn.modules import module as torch_module

    names = [n for n in vars(torch_module) if n.startswith("_global_") and "hooks" in n]
    return sum(len(table) for n in names if isinstance(table := getattr(torch_module, n), dict))


def check_module(model: DiP) -> None:
    """A module is what its config builds: the same submodules by name, type and settings, no hooks, the same weights
    by name and shape, each a dense float32 tensor, all on one CPU or CUDA device (what `build_model` makes, and what
    the engines, the exporter and the writer take). A UsageError names the first difference."""
    try:
        with torch.device("meta"):  # the architecture's modules, names and shapes, no memory for its weights
            fresh = DiP(model.cfg)
        built = {name: (type(m), _module_settings(m)) for name, m in fresh.named_modules()}  # "": the model itself
        held = {name: (type(m), _module_settings(m)) for name, m in model.named_modules()}
        hooked = next(((name, _hooks(m)) for name, m in model.named_modules() if _hooks(m)), None)
        state = model.state_dict()
    except Exception:  # a module of the caller's whose own methods fail
        raise UsageError("the model's modules cannot be read (its named_modules or state_dict failed)") from None
    problem, everywhere = _module_problem(built, held), _global_hooks()
    if problem is None and hooked is not None:
        problem = f"module {name_text(hooked[0] or 'DiP', WEIGHT_NAME)} holds {hooked[1]} hook(s); remove them"
    if problem is None and everywhere:
        problem = f"{everywhere} global module hook(s) are registered with torch; remove them"
    if problem is None:
        try:
            check_state_dict(fresh, state)
        except CheckpointError as err:
            problem = str(err)
    if problem is None:
        odd = next((k for k, t in state.items() if not (t.layout == torch.strided and not t.is_nested
                                                          and t.dtype == torch.float32)), None)  # fmt: skip
        devices = {t.device for t in state.values()}
        if odd is not None:
            tensor = state[odd]
            problem = f"weight {name_text(odd, WEIGHT_NAME)} is {tensor.dtype}, {tensor.layout}; the model takes dense float32"
        elif len(devices) > 1:
            problem = f"its weights are on {len(devices)} devices ({', '.join(sorted(map(str, devices)))[:80]})"
        elif devices and next(iter(devices)).type not in ("cpu", "cuda"):
            problem = f"its weights are on the {next(iter(devices)).type} device, which holds no values; move it to cpu or cuda"
    if problem is not None:
        raise UsageError(f"the model in memory is not the one its config builds ({problem}); nothing was run")


def _module_problem(built: dict[str, tuple[type, Any]], held: dict[str, tuple[type, Any]]) -> str | None:
    missing, extra = [n for n in built if n not in held], [n for n in held if n not in built]
    if missing or extra:
        which, names = ("missing", missing) if missing else ("not in the architecture", extra)
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
        return f"module {name_text(names[0], WEIGHT_NAME)} {which}{more}"
    odd = next((n for n in built if n and held[n][0] is not built[n][0]), None)  # the model: a DiP of any class
    if odd is not None:
        kind = name_text(held[odd][0].__name__, CODE_NAME)
        return f"module {name_text(odd, WEIGHT_NAME)} is {kind}, not {built[odd][0].__name__}"
    odd = next((n for n in built if held[n][1] != built[n][1]), None)
    if odd is not None:
        theirs, ours, none = dict(held[odd][1]), dict(built[odd][1]), object()
        key = next(k for k in sorted(set(theirs) | set(ours)) if theirs.get(k, none) != ours.get(k, none))
        where = f"module {name_text(odd, WEIGHT_NAME)}'s" if odd else "the model's"
        return f"{where} {name_text(key, WEIGHT_NAME)} is not the one its config builds"
    return None


def weights_digest(model: torch.nn.Module, config: DiPConfig) -> str:
    """sha256 of what defines a module's numbers: its config and every tensor of its state (names, dtypes, shapes,
    bytes), whatever chose them."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"\0{name}\0{flat.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _check_built_of(model: Any, config: Any) -> None:
    """A LoadedModel's config is the one its module was built of (`DiP.cfg`): exports, budgets and checks read the
    config, engines run the module."""
    if isinstance(model, DiP) and isinstance(config, DiPConfig) and model.cfg != config:
        raise UsageError("a model's config must be the one its module was built of (model.cfg); make a new LoadedModel")


_LOADED_TYPES: dict[str, Any] = {  # LoadedModel's other fields, as load_checkpoint makes them
    "model": DiP, "config": DiPConfig, "source": str, "size_assumed": bool,
    "held_on": (torch.device, type(None)), "stamp": (tuple, type(None)),
}  # fmt: skip
_READ_AS = ("source", "weights", "stamp")  # where the weights were read from: fixed once the model is made
_RECHECKED = ("model", "config", "name", "source", "sampling", "size_assumed", "weights")  # what `module()` checks again


def _field_value(field_name: str, value: Any) -> Any:
    """A LoadedModel field's value as its setter takes it (the weights choice as its plain text), or a UsageError."""
    if field_name == "name":
        from dip_export.export.naming import model_name_problem

        problem = model_name_problem(value) if type(value) is str else f"must be a string, got {type(value).__name__}"
        if problem:
            raise UsageError(f"the model's name {problem}")
    elif field_name == "sampling":
        if type(value) is not dict:
            raise UsageError(f"a model's sampling must be a dict, got {type(value).__name__}")
        try:
            check_sampling_defaults(value)
        except (ValueError, TypeError, DipError) as err:
            raise UsageError(f"the model's sampling defaults are refused: {err}") from None
    elif field_name == "weights":
        return one_of(value, "weights", ("ema", "raw"))
    elif field_name in _LOADED_TYPES and not isinstance(value, _LOADED_TYPES[field_name]):
        kind = _LOADED_TYPES[field_name]
        names = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise UsageError(f"a model's {field_name} must be a {names}, got {type(value).__name__}")
    return value


NO_WEIGHTS = "no DiP weights found (no key s_embedder.proj.weight)"


def _canonical(device: torch.device) -> torch.device:
    """One name per device: cuda without an index is the current CUDA device."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _torch_load(path: Path, trust: bool) -> Any:
    _check_pickle_header(path)
    check_checkpoint_tensors(path)  # declared tensor sizes, before torch allocates any
    if not zip_mappable(path) and names_no_dip(path):  # torch would inflate its records whole to find that out
        raise CheckpointError(f"{path}: {NO_WEIGHTS}")
    if trust is True:  # the only value that runs code (trust_flag at every entry)
        return _torch_load_with(path, weights_only=False)
    try:
        return _torch_load_with(path, weights_only=True)
    except pickle.UnpicklingError:
        pass  # objects other than tensors: read again with every such object left inert
    from dip_export import inert_pickle

    inert_pickle.replaced.clear()
    try:
        return _torch_load_with(path, weights_only=False, pickle_module=inert_pickle)
    except _Unreadable:
        if not inert_pickle.replaced:
            raise
        names = ", ".join(name_text(n, CODE_NAME) for n in sorted(inert_pickle.replaced)[:3])
        raise CheckpointError(
            f"{path}: its weights cannot be read without running code it names ({names}); "
            "if you trust this file, pass --trust-checkpoint"
        ) from None


class _Unreadable(CheckpointError):
    """torch could not read the file (damaged, or an inert placeholder where its code needs a real object)."""


def _torch_load_with(path: Path, weights_only: bool, pickle_module: Any = None) -> Any:
    from dip_export.inert_pickle import Refused

    extra = {"pickle_module": pickle_module} if pickle_module is not None else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's advice on plain pickles and weights_only
            # mmap keeps a multi-GB checkpoint out of RAM; only a zip whose records are stored uncompressed allows it
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=zip_mappable(path), **extra)
    except Refused as err:
        raise CheckpointError(f"{path}: {err}; refusing it") from None
    except pickle.UnpicklingError as err:
        if weights_only:
            raise
        raise _Unreadable(f"{path}: {load_failure(err)}") from None
    except Exception as err:  # a damaged file can fail anywhere inside the unpickler
        raise _Unreadable(f"{path}: {load_failure(err)}") from None


_ZIP_FAILURES = (  # torch's zip reader (miniz) texts, and the tool's own reason for each
    (re.compile(r"failed locating file data\.pkl"), "not a torch checkpoint zip (no data.pkl)"),
    (re.compile(r"failed locating file"), "a tensor record it names is missing from the zip"),
    (re.compile(r"failed finding central directory|not a ZIP archive|zip archive", re.I), "truncated or damaged zip archive"),
    (re.compile(r"file in archive is not in a subdirectory|more than one|multiple records", re.I),
     "not a torch checkpoint zip (its records are not laid out as torch.save writes them)"),
    (re.compile(r"CRC|checksum", re.I), "damaged zip archive (a record fails its checksum)"),
)  # fmt: skip


def load_failure(err: BaseException) -> str:
    """The tool's own one-line reason for an error torch raised reading a checkpoint (no library or file text)."""
    if isinstance(err, EOFError):
        return "truncated (the data ends early)"
    if isinstance(err, pickle.UnpicklingError):
        return "truncated or not a checkpoint (damaged pickle data)"
    if isinstance(err, MemoryError):
        return "its tensors do not fit in memory"
    text = str(err)
    if isinstance(err, ImportError):  # a trusted load runs the imports the file names
        return "it names code that cannot be imported here (a module missing); install what it was saved with"
    if isinstance(err, AttributeError) and text.startswith("Can't get attribute"):  # pickle's own words
        return "it names code that cannot be imported here (a class or function its module lacks)"
    for pattern, reason in _ZIP_FAILURES:
        if isinstance(err, RuntimeError) and pattern.search(text):
            return reason
    return f"truncated or not a checkpoint (torch's reader failed: {type(err).__name__})"


def _check_pickle_header(path: Path) -> None:
    """A zip (torch.save) or a pickle (protocol 2+) starts with known bytes; anything else is not a checkpoint."""
    with path.open("rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return
    if not head:
        kind = "an empty file"
    elif len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        kind = "a safetensors file by its content; name it .safetensors"  # a header length, then the header's JSON
    elif head[:1] == b"\x08":
        kind = "an ONNX graph by its content; pass the export folder that holds it"
    elif head[:1] in (b"{", b"[") or head.isascii():
        kind = "a text or JSON file"
    else:
        kind = "neither a zip nor a pickle"
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (it is {kind})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = shortened(text[0]) if text else type(err).__name__
    return re.sub(r"weights_only\S*\s*=\s*False", "weights_only off", line)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 (safe_open has no items)
    except (SafetensorError, OSError, ValueError) as err:
        # the library's text may quote the file: only the kind of error is named
        raise CheckpointError(f"{path}: truncated or not a safetensors file ({type(err).__name__})") from None


class _Shape:
    """A tensor as far as its header goes: its shape (what `infer_config` reads)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


def safetensors_header(path: Path) -> tuple[dict[str, _Shape], dict[str, str]]:
    """The tensor shapes and metadata a safetensors file's header declares, its tensor bytes checked, no tensor read.

    What a header may hold is bounded before it is parsed (`MAX_SAFETENSORS_HEADER` bytes) and after
    (`MAX_HEADER_TENSORS` tensors of at most `MAX_TENSOR_DIMS` dimensions): no DiP needs more.
    The bytes the header declares are refused above the file's size or the memory limit (`budget.check_declared`).
    """
    bad = f"{path}: truncated or not a safetensors file"
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= size - 8:
            raise CheckpointError(f"{bad} (header length)")
        if length > MAX_SAFETENSORS_HEADER:
            raise CheckpointError(
                f"{path}: its safetensors header is {length} bytes, more than a DiP's needs "
                f"({MAX_SAFETENSORS_HEADER >> 20} MiB at most); refusing to read it"
            )
        raw = f.read(length)
    try:
        header = parse_json(raw, f"{path} header")
    except UntrustedFileError:
        raise CheckpointError(f"{bad} (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (header is not an object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{bad} (metadata is not text)")
    if len(header) > MAX_HEADER_TENSORS:
        raise CheckpointError(
            f"{path}: its safetensors header lists {len(header)} tensors, more than a DiP has ({MAX_HEADER_TENSORS} at most)"
        )
    shapes: dict[str, _Shape] = {}
    declared = 0
    for index, (name, entry) in enumerate(header.items(), 1):
        shape, nbytes = _header_entry(path, index, entry)
        declared += nbytes
        shapes[name] = _Shape(shape)
    check_declared(declared, 1, str(path), file_size=size)
    return shapes, meta


def _header_entry(path: Path, index: int, entry: Any) -> tuple[tuple[int, ...], int]:
    """One safetensors header entry's shape and bytes, checked; named by its number (its name is file content)."""
    bad = f"{path}: truncated or not a safetensors file (header entry {index}"
    shape = entry.get("shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or not all(type(n) is int and 0 <= n <= MAX_TENSOR_SIDE for n in shape):
        raise CheckpointError(f"{bad} has no valid shape)")  # a side past any DiP's is none (also beside a 0)
    if len(shape) > MAX_TENSOR_DIMS:
        raise CheckpointError(
            f"{path}: header entry {index} has {len(shape)} dimensions, more than a DiP tensor's ({MAX_TENSOR_DIMS} at most)"
        )
    if not isinstance(entry.get("dtype"), str):
        raise CheckpointError(f"{bad} has no dtype)")
    if entry["dtype"] not in SAFETENSORS_SIZES:
        raise CheckpointError(f"{path}: header entry {index} has a dtype DiP weights are not read from (F16, BF16, F32, F64)")
    return tuple(shape), math.prod(shape) * SAFETENSORS_SIZES[entry["dtype"]]


def _header_config(path: Path, shapes: Mapping[str, _Shape], weights: str) -> DiPConfig | None:
    """The architecture the header's shapes describe (None where they describe none: the tensors will say why)."""
    try:
        return infer_config(pick_weights(shapes, weights))
    except (CheckpointError, UsageError):
        return None


def select_state_dict(obj: Any, weights: str = "ema") -> dict[str, Tensor]:
    """Pick the DiP weights out of whatever the file held, their values checked (`check_values`)."""
    state = _tensors_only(pick_weights(obj, weights))
    check_values(state)
    return state


def _weights_of(obj: Any) -> Any:
    """A whole model saved with `torch.save(model)` (its file trusted): its state dict. Without trust such an object
    is the file's code, refused as needing it; anything else is returned as it is."""
    from dip_export.inert_pickle import Inert

    if isinstance(obj, Inert):
        code = name_text(obj.qualified_name, CODE_NAME)
        raise CheckpointError(f"it holds an object of the file's code ({code}), not a dict of tensors; "
                              "if you trust this file, pass --trust-checkpoint")  # fmt: skip
    return obj.state_dict() if isinstance(obj, torch.nn.Module) else obj


def pick_weights(obj: Any, weights: str = "ema") -> dict[str, Any]:
    """The entries of the DiP weights (the EMA or raw ones, prefixes removed), whatever their values.

    A training checkpoint (Lightning: `ema_denoiser.*` and/or `denoiser.*`) gives the weights asked for, or is
    refused where it lacks them: "ema" (the default) never falls back to raw weights, nor "raw" to EMA ones.
    A file with one set of weights (a bare state dict, the project's .safetensors) is read as it is under
    "ema", and refused under "raw": it has no raw weights to pick.
    """
    obj = _weights_of(obj)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}")
    inner = _weights_of(obj.get("state_dict"))
    if isinstance(inner, Mapping):
        obj = inner
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError("its weights are not keyed by parameter names (found a key that is not a string)")
    held = {name: {k[len(prefix) :]: v for k, v in obj.items() if k.startswith(prefix)}
            for name, prefix in (("ema", "ema_denoiser."), ("raw", "denoiser."))}  # fmt: skip
    if held[weights]:
        return held[weights]
    if weights == "ema" and held["raw"]:
        raise CheckpointError(
            'it holds only raw weights (denoiser.*), no EMA weights (ema_denoiser.*); pass --weights raw (weights="raw")'
        )
    if weights == "raw" and held["ema"]:
        raise CheckpointError("it holds only EMA weights (ema_denoiser.*); use --weights ema")
    if weights == "raw":
        raise CheckpointError(
            "it holds one set of weights, not a training checkpoint's raw weights (denoiser.*); "
            '--weights raw (weights="raw") applies only to such a checkpoint: leave it out'
        )
    state = dict(obj)
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _tensors_only(state: Mapping[str, Any]) -> dict[str, Tensor]:
    from dip_export.inert_pickle import Inert

    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    coded = sorted(k for k, v in state.items() if isinstance(v, Inert))  # one is enough: never read as "missing"
    if coded:
        names = sorted({name_text(state[k].qualified_name, CODE_NAME) for k in coded})
        one = "s_embedder.proj.weight" in tensors
        what = f"weight {coded[0][:80]} is an object that needs" if one else "its weights are objects that need"
        raise CheckpointError(
            f"{what} code to be built ({', '.join(names[:3])}); if you trust this file, pass --trust-checkpoint"
        )
    other = sorted(k for k, v in state.items() if not isinstance(v, Tensor))  # never dropped in silence
    if other:
        from dip_export.settings import value_kind

        raise CheckpointError(f"entry {other[0][:80]} among its weights is not a tensor ({value_kind(state[other[0]])[:60]})")
    if "s_embedder.proj.weight" not in tensors:
        raise CheckpointError(NO_WEIGHTS)
    dressed = next((k for k, v in tensors.items() if type(v) not in _PLAIN_TYPES or vars(v)), None)
    if dressed is not None:
        raise CheckpointError(f"weight {dressed[:80]} is not a plain tensor (it carries a type or attributes of the file's)")
    odd = next((k for k, v in tensors.items() if not _plain_weight(v)), None)
    if odd is not None:
        v = tensors[odd]
        raise CheckpointError(
            f"weight {odd[:80]} is not a dense real floating-point tensor in memory ({v.dtype}, {v.layout}, {v.device.type})"
        )
    narrow = next((k for k, v in tensors.items() if v.dtype not in WEIGHT_DTYPES), None)
    if narrow is not None:
        raise CheckpointError(
            f"weight {narrow[:80]} has dtype {tensors[narrow].dtype}; DiP weights are read from "
            f"{', '.join(str(t).removeprefix('torch.') for t in WEIGHT_DTYPES)} (store them in one of those)"
        )
    shaped = sum(torch.numel(v) * v.dtype.itemsize for v in tensors.values())  # by shape: a view may repeat its storage
    check_memory(shaped, "its weights by their shapes", None)
    return tensors


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)  # exactly these: a subclass's methods would be the file's to choose


def check_values(state: Mapping[str, Tensor]) -> None:
    """Every weight is finite. Read only once its name and shape are known to be the architecture's (`build_model`):
    the work is then bounded by the model's size, whatever shapes the file declares."""
    broken = next((k for k, v in state.items() if not bool(torch.isfinite(v).all())), None)
    if broken is not None:
        raise CheckpointError(f"weight {broken[:80]} holds NaN or infinite values; the checkpoint is damaged")


WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # what the model can be built of


def _plain_weight(value: Tensor) -> bool:
    """What a weight may be: strided, on the CPU (not meta, not sparse, not nested), real floating point. Read with torch's
    functions and the type's own descriptors, never methods looked up on the tensor."""
    plain = value.layout == torch.strided and not value.is_nested  # a nested tensor says strided too
    return plain and value.device.type == "cpu" and torch.is_floating_point(value)


def infer_config(state: Mapping[str, Tensor]) -> DiPConfig:
    """Read D, P, depth, classes, heads and the detailer width off the tensor shapes."""
    try:
        d, patch_in = state["s_embedder.proj.weight"].shape
        enc1 = state["local_decoder.enc1.0.weight"]  # (width, C, 3, 3)
        channels = int(enc1.shape[1])
        patch = round((patch_in / channels) ** 0.5)
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.([0-9]+)\.", k)))
        classes = state["y_embedder.embedding_table.weight"].shape[0] - 1
        heads = d // state["blocks.0.attn.q_norm.weight"].shape[0]
        return DiPConfig(
            hidden_size=int(d),
            num_heads=int(heads),
            depth=depth,
            patch_size=patch,
            num_classes=int(classes),
            in_channels=channels,
            detailer_width=int(enc1.shape[0]),
        )
    except KeyError as err:
        raise CheckpointError(f"cannot infer the DiP architecture from the weights (missing {err})") from None
    except (ValueError, IndexError, ZeroDivisionError, OverflowError, UsageError) as err:
        raise CheckpointError(f"cannot infer the DiP architecture from the weights ({_first_line(err)})") from None


def build_model(config: DiPConfig, state: Mapping[str, Tensor] | None = None, seed: int = 0) -> DiP:
    """A DiP in eval mode: with `state` loaded strictly, or random weights from `seed`; refused if it would not fit."""
    check_weights(config)
    torch.manual_seed(seed)
    model = DiP(config)
    if state is not None:
        check_state_dict(model, state)  # names and shapes first: then the values' work is the model's size
        check_values(state)
        model.load_state_dict({k: Tensor.float(v) for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


def check_state_dict(model: DiP, state: Mapping[str, Tensor]) -> None:
    """One error listing missing and unexpected keys and shape mismatches."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{name_text(k, WEIGHT_NAME)} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
            shown = items[:MAX_LISTED] if label == "shape mismatch" else [name_text(k, WEIGHT_NAME) for k in items[:MAX_LISTED]]
            problems.append(f"{label}: {', '.join(shown)}{more}")
    if problems:
        raise CheckpointError("weights do not match the DiP architecture; " + "; ".join(problems))


def _open_safetensors(
    path: Path, weights: str, trust: bool, given: DiPConfig | None, check: ConfigCheck | None
) -> tuple[dict[str, Tensor], DiPConfig | None, dict[str, Any], DiPConfig | None]:
    """A .safetensors file's tensors, stored config and sampling, and the config checked before they were read
    (from the header: nothing is read for a model the budget refuses)."""
    if trust:
        raise UsageError(f"{path}: a .safetensors file holds no code; --trust-checkpoint goes with a pickle checkpoint")
    shapes, meta = safetensors_header(path)
    stored = _stored_config(path, meta.get(META_CONFIG), json_text=True)
    sampling = _stored_sampling(path, meta.get(META_SAMPLING, "{}"))
    early = given or stored or _header_config(path, shapes, weights)
    if early is None:  # the header describes no DiP: say why before the library reads the file
        try:
            infer_config(pick_weights(shapes, weights))
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
    if early is not None:
        _check_config(str(path), early, check)
    state, _ = _read_safetensors(path)
    return state, stored, sampling, early


def load_checkpoint(
    path: str | Path,
    weights: str = "ema",
    trust: bool = False,
    config: DiPConfig | None = None,
    check: ConfigCheck | None = None,
) -> LoadedModel:
    """Load a DiP from a file; `config` overrides the stored or inferred one.

    The config a model will be built of is checked against memory (and by `check`, e.g. a whole run's
    estimate) before the model is built: for safetensors from the header, before any tensor is read.
    Messages name the file as it was typed (`org//x.pt`, not the normalised `org/x.pt`).
    """
    weights = one_of(weights, "--weights", ("ema", "raw"))
    trust = trust_flag(trust)  # True only: "no" or 1 never runs a pickle's code
    if config is not None and not isinstance(config, DiPConfig):
        raise UsageError(f"config must be a DiPConfig, got {type(config).__name__}")
    check = optional_callable(check, "check", 2)
    typed = path_text(path, "the checkpoint")
    path = Path(typed)
    try:
        return _load_checkpoint(path, weights, trust, config, check)
    except DipError as err:
        raise as_typed(err, str(path), typed) from None
    except OSError as err:  # a disk or mount that fails mid-read: one line naming the file
        raise read_failure(err, typed) from None


def check_checkpoint_name(path: Path) -> None:
    """A name `save_checkpoint` writes (every surface checks it before its work): one its reader takes, the model
    named after it (`_check_model_name`), and .safetensors (a .pt name would be read as a pickle). A name to write is
    an argument: refused as a bad argument is (UsageError), not as a bad file."""
    try:
        _check_model_name(path)
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    if path.suffix != ".safetensors":
        raise UsageError(f"{path}: save_checkpoint writes safetensors; name the file .safetensors")


def _check_model_name(path: Path) -> None:
    """The model is named after its file (`LoadedModel.name`): a name it cannot take is refused before the read."""
    from dip_export.export.naming import model_name_problem

    problem = model_name_problem(path.stem)
    if problem:
        raise CheckpointError(f"{path}: the model is named after its file, and that name {problem}; rename the file")


def read_failure(err: OSError, name: str) -> CheckpointError:
    """An OSError of reading a model as one line naming the file (the error's own, else `name`)."""
    where = err.filename if isinstance(err.filename, str) and err.filename else name
    return CheckpointError(f"{where}: cannot read it ({err.strerror or type(err).__name__})")


def as_typed(err: DipError, shown: str, typed: str) -> DipError:
    """`err` with its leading file name `shown` (a normalised path) given back as the user `typed` it."""
    text, shown = str(err), visible(shown)  # the message is escaped (errors.DipError): so is the name in it
    named = text.startswith(shown) and text[len(shown) : len(shown) + 1] in (":", " ", "")
    if typed != shown and err.args and text == err.args[0] and named:
        err.args = (typed + text[len(shown) :], *err.args[1:])
    return err


def _load_checkpoint(path: Path, weights: str, trust: bool, config: DiPConfig | None, check: ConfigCheck | None) -> LoadedModel:
    _check_is_file(path)
    _check_model_name(path)
    stamp = file_stamp(path)  # the file as read: what the model's identity is the content of
    given = config
    sampling: dict[str, Any] = {}
    found: Any
    if path.suffix == ".safetensors":
        found, stored, sampling, early = _open_safetensors(path, weights, trust, given, check)
    else:
        found = _torch_load(path, trust)
        stored = _stored_config(path, found.get(META_CONFIG)) if isinstance(found, Mapping) else None
        early = given or stored
        if early is not None:
            _check_config(str(path), early, check)
    try:
        state = _tensors_only(pick_weights(found, weights))  # values are checked once the shapes match (build_model)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except BudgetError as err:
        raise BudgetError(f"{path}: {err}") from None
    config = given or stored
    inferred = config is None
    try:
        config = check_config_matches(path, config, state) if config is not None else infer_config(state)
        if config != early:
            _check_config(str(path), config, check)
        model = build_model(config, state)
    except CheckpointError as err:
        raise CheckpointError(str(err) if str(err).startswith(f"{path}:") else f"{path}: {err}") from None
    if file_stamp(path) != stamp:
        raise ChangedFileError(f"{path} changed while its weights were read; load it again")
    return LoadedModel(model, config, name=path.stem, source=str(path), sampling=sampling, size_assumed=inferred,
                       weights=weights, stamp=stamp)  # fmt: skip


def model_identity(source: str | Path, weights: str, config: DiPConfig, stamp: Stamp | None = None) -> str:
    """`LoadedModel.identity`: sha256 over the source's content identity, the weights choice and the config."""
    text = json.dumps([source_identity(source, stamp), weights, config.to_dict()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_config(source: str, config: DiPConfig, check: ConfigCheck | None) -> None:
    """The model of `config` fits in memory, and so does what the caller will do with it."""
    check_weights(config, source)
    if check is not None:
        check(config, (config.image_size, config.image_size))


def _check_is_file(path: Path) -> None:
    if re.search("[\ud800-\udfff]", str(path)):  # bytes that are no UTF-8: no reader below takes such a name
        raise CheckpointError(f"{path}: the file's name is not UTF-8 text; rename the file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (an export folder holds a manifest.json)")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a device or pipe?), not a checkpoint")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")


def _stored_config(path: Path, value: Any, json_text: bool = False) -> DiPConfig | None:
    """The architecture a file records (safetensors metadata or a pickle's dip_config), checked."""
    if value is None:
        return None
    data: Any = None
    try:
        data = parse_json(value, f"{path} metadata {META_CONFIG}") if json_text else value
        if not isinstance(data, Mapping):
            raise UsageError(f"expected an object, got {type(data).__name__}")
        return DiPConfig.from_dict(dict(data))
    except UntrustedFileError:
        raise
    except (ValueError, TypeError, UsageError) as err:
        figure = _unbounded_figure(data if isinstance(data, Mapping) else {})
        raise CheckpointError(f"{path}: bad stored config {META_CONFIG} ({_first_line(err)}){figure}") from None


def _unbounded_figure(data: Mapping[Any, Any]) -> str:
    """For a stored config beyond the bounds whose model would not fit either: its memory figure against the limit."""
    from types import SimpleNamespace

    from dip_export.budget import describe, gib, memory_limit, weight_bytes

    fields = {**DiPConfig().to_dict(), **{k: v for k, v in data.items() if k in DiPConfig.__dataclass_fields__}}
    if not all(type(v) is int and 1 <= v <= 1 << 32 for v in fields.values()) or fields["hidden_size"] % fields["num_heads"]:
        return ""
    if fields["patch_size"] < 2 or fields["patch_size"] & (fields["patch_size"] - 1):
        return ""
    config = SimpleNamespace(**fields)
    need, limit = weight_bytes(config), memory_limit()
    if need <= limit:
        return ""
    return f"; {describe(config)} would need about {gib(need)}, more than the {gib(limit)} of available memory"


def _stored_sampling(path: Path, text: str) -> dict[str, Any]:
    try:
        return check_sampling_defaults(parse_json(text, f"{path} metadata {META_SAMPLING}"))
    except UntrustedFileError:
        raise
    except (ValueError, TypeError, UsageError) as err:
        raise CheckpointError(f"{path}: bad stored sampling defaults {META_SAMPLING} ({_first_line(err)})") from None


def check_config_matches(path: Path, config: DiPConfig, state: Mapping[str, Tensor]) -> DiPConfig:
    """A stored or given config must agree with the tensor shapes before a model of its size is built."""
    inferred = infer_config(state)
    fields = ("hidden_size", "depth", "patch_size", "num_classes", "in_channels", "detailer_width")
    wrong = [f"{f} {getattr(config, f)} (weights: {getattr(inferred, f)})" for f in fields
             if getattr(config, f) != getattr(inferred, f)]  # fmt: skip
    if wrong:
        raise CheckpointError(f"{path}: the config does not match the weights: {', '.join(wrong)}")
    return config


def save_checkpoint(path: str | Path, model: DiP, sampling: Mapping[str, Any] | None = None) -> None:
    """Write the project's own format: safetensors + config + sampling defaults + this tool's mark, atomically."""
    from safetensors.torch import save_file

    from dip_export.io import atomic_path
    from dip_export.ownership import MARK_KEY, mark

    if not isinstance(model, DiP):
        raise UsageError(f"save_checkpoint writes a DiP model, got {type(model).__name__}")
    path = path_text(path, "path")
    check_checkpoint_name(Path(path))
    if sampling is not None and not isinstance(sampling, Mapping):
        raise UsageError(f"sampling must be a mapping of sampler defaults, got {type(sampling).__name__}")
    try:
        plain = dict(sampling or {})
    except Exception:  # a caller's mapping whose own methods fail
        raise UsageError(f"sampling: this {type(sampling).__name__} cannot be read as a mapping") from None
    try:
        text = json.dumps(plain, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as err:
        raise UsageError(f"sampling defaults are not JSON values ({_first_line(err)})") from None
    try:  # checked as the reader checks it: never a file this tool would then refuse
        _stored_sampling(Path(path), text)
    except DipError as err:
        raise UsageError(f"sampling defaults refused: {err}") from None
    meta = {META_CONFIG: json.dumps(model.cfg.to_dict()), META_SAMPLING: text, MARK_KEY: mark("checkpoint")}
    state = _state_to_write(model)
    broken = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if broken is not None:  # the reader refuses such a file as damaged: it is never written
        raise UsageError(f"the model's weights hold NaN or infinite values ({name_text(broken)}); nothing was written")
    size = sum(v.numel() * v.element_size() for v in state.values()) + len(json.dumps(meta)) + (1 << 20)  # + header
    with atomic_path(path, "checkpoint", size=size) as tmp:  # as typed: text ending in '/' names a folder
        save_file(state, str(tmp), metadata=meta)


def _state_to_write(model: DiP) -> dict[str, Tensor]:
    """The module's weights, checked as the reader checks what it reads (the architecture's names and shapes, dense
    real floating-point tensors): never a file this tool would then refuse."""
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    except Exception:  # a subclass's own state_dict, or its tensors, failing
        raise UsageError(f"the model's weights cannot be read (its {type(model).__name__}.state_dict failed)") from None
    try:
        with torch.device("meta"):  # the architecture's names and shapes, no memory for its weights
            check_state_dict(DiP(model.cfg), state)
        _tensors_only(state)
    except CheckpointError as err:
        raise UsageError(f"the model is not one its reader takes ({err}); nothing was written") from None
    return state


def is_demo(loaded: LoadedModel) -> bool:
    """The bundled digits model (the one whose images the digit classifier can score)."""
    return Path(loaded.source) == DEMO_CHECKPOINT


def resolve_model(
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    weights: str | None = None,
    trust: bool = False,
    check: ConfigCheck | None = None,
) -> LoadedModel:
    """The model a command works on: a checkpoint, a random-weight preset, or the bundled demo.

    `check` is called with the config before the model is built (a run's or an export's memory estimate).
    """
    if weights is not None:  # given (None: ema where a file holds both)
        one_of(weights, "--weights", ("ema", "raw"))
    trust = trust_flag(trust)  # True only: "no" or 1 never runs a pickle's code
    if checkpoint is not None:
        checkpoint = path_text(checkpoint, "the checkpoint")
    if checkpoint is None and preset is not None and (weights is not None or trust):  # nothing to apply to: refused
        raise UsageError(f"--weights and --trust-checkpoint go with a checkpoint file; --preset {preset} has random weights")
    if checkpoint is not None and preset is not None:  # a preset is a whole model: its config is no file's
        raise UsageError(f"give a checkpoint or --preset {preset}, not both")
    if checkpoint is not None:
        return load_checkpoint(checkpoint, weights=weights or "ema", trust=trust, check=check)
    if preset is not None:
        config = get_preset(preset)
        _check_config(f"preset {preset}", config, check)
        return LoadedModel(build_model(config), config, name=preset, source=f"preset:{preset}")
    if not DEMO_CHECKPOINT.is_file():
        raise CheckpointError(f"the bundled demo model is missing ({DEMO_CHECKPOINT}); pass a checkpoint or --preset")
    loaded = load_checkpoint(DEMO_CHECKPOINT, weights=weights or "ema", trust=trust, check=check)
    loaded.name = "dip-digits"
    return loaded
