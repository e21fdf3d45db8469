"""Memory and work, estimated before anything is allocated and compared with what the machine has.

A sampling run's peak is estimated from the model config, the batch (doubled by guidance), the
image size, the solver's history and the images it keeps; a file's tensors from the element counts
its headers declare. Either is refused in one line naming the figure and the limit when it exceeds
the memory available (RAM, or the GPU's free memory); `DIP_MEMORY_LIMIT` (bytes, or with a K/M/G/T
suffix) lowers the limit. Every check here is arithmetic on a few numbers: microseconds.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dip_export.errors import DipError, UsageError
from dip_export.settings import plain_value

MAX_EVALUATIONS = 10_000_000  # network evaluations per image over a whole measurement (--nfe lists)
SOLVER_COPIES = 10  # image-sized float tensors a multistep solver holds (x, noise, history, guidance halves)
EXPORT_WEIGHT_COPIES = 4  # an ONNX export holds the weights ~4 times: module, traced graph, protobuf, verifying session
TRT_WEIGHT_COPIES = 3  # a TensorRT build: the parsed network, the builder's tactics and the serialized plan
TRT_WORKSPACE = 1 << 30  # the builder's scratch memory on top of the network's own tensors
EXPORT_BATCH = 2  # the batch an export traces and verifies at (onnx_export.VERIFY_BATCHES)
MAX_SCHEDULE_BATCH = 4096  # images per sampler run of dip-export schedule
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class BudgetError(DipError):
    """A run or file that would need more memory or work than this machine allows."""


class RunBudgetError(BudgetError, UsageError):
    """A run, export or measurement whose asked-for size (batch, image size, evaluations) needs more than this machine
    allows: a bad argument here, exit 2 (`UsageError`), where a file that declares too much is exit 1."""


@dataclass(frozen=True)
class RunShape:
    """What a sampling run's memory depends on."""

    batch: int  # images per sampler batch
    height: int
    width: int
    samples: int = 1  # images kept in memory (the whole run's output)
    guided: bool = True  # guidance doubles the network batch

    @classmethod
    def sampling(cls, batch_size: int, height: int, width: int, samples: int) -> RunShape:
        """A sampling run of `samples` images in batches of `batch_size`: no batch it runs holds more than its images.

        Every sampling surface (dip-sample, resumed and sharded runs, the Python API, dip-bench) sizes its run here,
        so the estimate is of the batch really run (`--batch-size 16` with one image runs a batch of 1).
        """
        return cls(max(1, min(batch_size, samples)), height, width, samples=samples)


def gib(n: float) -> str:
    """Bytes in the unit that reads: bytes below a KiB, KiB below a MiB, MiB below a quarter GiB, GiB below a PiB,
    PiB above (no 12-digit figures, and no positive figure that reads as 0: a 300 KiB limit is no '0 MiB')."""
    if n >= 2**50:
        return f"{n / 2**50:.3g} PiB"
    if n >= 2**28:
        return f"{n / 2**30:.1f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.0f} KiB"
    return f"{n:.0f} bytes" if n >= 1 else f"{n:.2g} bytes"  # a fraction of a byte (an estimate): still not '0'


# What each backend family holds beyond the eager-torch estimate. Calibrated on the demo model at 128, 256 and 512 px
# (peak RSS over an idle process that imported torch and onnxruntime), each an upper bound by 10-25 %.
FAMILIES = {"torch": "torch", "compile": "torch", "onnx": "onnx", "trt": "trt", "auto": "onnx"}  # auto may run onnx
ORT_ATTENTION_COPIES = 4  # ONNX Runtime: the per-head fp32 scores, scaled and softmaxed, each kept by its arena
ORT_ACTIVATION_FACTOR = 2  # its arena rounds every other activation up and keeps it for the next run
ORT_SESSION_BYTES = 96 << 20  # a session's fixed cost: the graph, its optimised copy, kernels and thread pools
# Eager torch, calibrated the same way (32-256 px, batch 1-256; the estimate is 1.15-3x the measured peak):
TORCH_DETAILER_MAPS = 6  # full-resolution maps of the detailer held at once: a skip, the upsampled map, their
# concatenation (two) and the last convolution with its activation
TORCH_ACTIVATION_MARGIN = (3, 2)  # x1.5 over one call: the sampler's own copies and the allocator's rounding
TORCH_RUN_BYTES = 128 << 20  # a run's fixed cost over an idle process: the model's modules, kernels and thread pools,
# and the modules torch loads for the architecture check's meta-device model (`checkpoint.check_module`: ~70 MB)
EXPORT_FIXED_BYTES = 224 << 20  # the exporter's modules and the traced program, kept for the rest of the process


def family(backend: str | None) -> str:
    """The memory family of a backend name (`onnx:int8` -> onnx; None -> torch; auto -> its costliest candidate)."""
    name = (backend or "torch").partition(":")[0]
    if name not in FAMILIES:
        raise UsageError(f"unknown backend {plain_value(name)}; choose from {', '.join(n for n in FAMILIES if n != 'auto')}")
    return FAMILIES[name]


def run_bytes(config: Any, shape: RunShape, backend: str | None = "torch") -> int:
    """Peak bytes of sampling on a backend: the weights, one network call's activations (with a margin for the
    sampler's copies and the allocator's rounding), a run's fixed cost, the solver's tensors and the kept images.
    ONNX Runtime (and TensorRT, which runs the same graph) holds at least as much; its own estimate adds a copy of the
    weights, the attention scores per head in fp32 several times over, arena-rounded activations and a session."""
    rows = shape.batch * (2 if shape.guided else 1)
    pixels = shape.height * shape.width
    tokens = pixels // (config.patch_size**2)
    token_bytes = rows * tokens * config.hidden_size * 4
    block = 12 * token_bytes  # residual, q/k/v, MLP hidden (4 D) and its activation
    attention = rows * config.num_heads * tokens * tokens * 4  # the score matrix, where no fused kernel runs
    detailer_map = rows * config.detailer_width * pixels * 4  # one width-channel map at full resolution
    solver = shape.batch * config.in_channels * pixels * 4 * SOLVER_COPIES
    images = shape.samples * pixels * 3
    # the grid picture dip-sample makes of the first images once sampling is done: counted beside the activations
    # (a bound of the larger of the two that grows with every factor)
    written = grid_bound(min(shape.samples, GRID_IMAGES), shape.height, shape.width)
    kept = solver + images + written
    times, over = TORCH_ACTIVATION_MARGIN
    call = block + attention + TORCH_DETAILER_MAPS * detailer_map
    torch_need = weight_bytes(config) + call * times // over + TORCH_RUN_BYTES + kept
    if family(backend) == "torch":
        return torch_need
    graph = ORT_ACTIVATION_FACTOR * (block + 3 * detailer_map) + ORT_ATTENTION_COPIES * attention
    return max(torch_need, 2 * weight_bytes(config) + graph + ORT_SESSION_BYTES + kept)  # it runs the same operations


GRID_IMAGES = 256  # the most images dip-sample's grid picture shows
GRID_COLUMNS = 10  # images a grid row holds (the demo's digits 0-9 line up in columns)
GRID_MIN_CELL = 96  # smaller images are enlarged in a grid (nearest neighbour) so that 32 px digits are readable
GRID_GUTTER = 2  # pixels between a grid's images


def grid_bytes(count: int, height: int, width: int, min_cell: int = GRID_MIN_CELL, columns: int = GRID_COLUMNS) -> int:
    """Peak bytes of making a grid picture of `count` images (`io.image_grid`) and writing it as a PNG: the images
    enlarged to `min_cell` and the grid, then the grid with its PNG rows and their compressed bytes."""
    scale = max(1, -(-min_cell // max(height, width, 1)))
    h, w = height * scale, width * scale
    cols = max(1, min(count, columns))
    rows = -(-count // cols)
    grid = (rows * (h + GRID_GUTTER) + GRID_GUTTER) * (cols * (w + GRID_GUTTER) + GRID_GUTTER) * 3
    scaled = count * h * w * 3 if scale > 1 else 0
    return max(scaled + grid, 3 * grid)


def grid_bound(count: int, height: int, width: int) -> int:
    """At least `grid_bytes`, and growing with every factor (the grid itself shrinks where a larger image is enlarged
    less): an enlarged image is less than `GRID_MIN_CELL` larger than its longer side, and its copy is smaller
    than the grid that holds it."""
    side = max(height, width) + GRID_MIN_CELL
    return grid_bytes(count, side, side, min_cell=1)


def parameter_count(config: Any) -> int:
    """Parameters of a DiP of this config, from its arithmetic (the same count `DiP(config)` holds, without building it)."""
    d, p, c = config.hidden_size, config.patch_size, config.in_channels
    m, hd = int(2 * 4 * d / 3), d // config.num_heads  # DiPConfig.mlp_hidden, head_dim (plain fields: any namespace will do)
    time_features = 256  # model.TIME_FREQ_DIM (not imported: this module needs no torch)
    embedders = (c * p * p * d + d) + (time_features * d + d + d * d + d) + (config.num_classes + 1) * d
    block = 2 * d + (3 * d * d + 2 * hd + d * d + d) + 3 * d * m + (6 * d * d + 6 * d)
    widths = [config.detailer_width * 2**k for k in range(p.bit_length() - 1)]
    detailer, cin = 0, c
    for w in widths:  # encoder 3x3 convolutions
        detailer += cin * w * 9 + w
        cin = w
    detailer += (widths[-1] + d) * widths[-1] + widths[-1]  # bottleneck 1x1
    for k in range(len(widths), 0, -1):  # transposed 2x2 and decoder 3x3 on the concatenation
        w, out = widths[k - 1], widths[k - 2] if k > 1 else widths[0]
        detailer += w * w * 4 + w + 2 * w * out * 9 + out
    detailer += widths[0] * c + c  # out_conv 1x1
    return embedders + config.depth * block + detailer


def weight_bytes(config: Any) -> int:
    """fp32 weights of a DiP of this config (blocks, embedders and detailer), exactly, without building it."""
    return 4 * parameter_count(config)


def describe(config: Any) -> str:
    """A config in a few words, for refusals: 'a DiP of hidden 8192, depth 256 (206.3 G parameters)'."""
    return f"a DiP of hidden {config.hidden_size}, depth {config.depth} ({count_text(parameter_count(config))} parameters)"


def count_text(n: float) -> str:
    """A count in the unit that reads: 1.4 M, 675.1 M, 206.3 G, 73.0 T (and plain below a thousand)."""
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 1000 * size else f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


def memory_limit(device: Any = None) -> int:
    """Bytes this run may use: free GPU memory on CUDA, available RAM otherwise; DIP_MEMORY_LIMIT caps both."""
    found = _gpu_free(device) if getattr(device, "type", None) == "cuda" else _ram_available()
    text = os.environ.get("DIP_MEMORY_LIMIT", "")  # taken as given: no value is trimmed
    if text:
        # 8, 8B, 8K, 8KB, 8KiB (any case); an `i` belongs to a unit letter, so 8I and 8iB are no size
        match = re.fullmatch(r"([0-9]{1,16})(?:([KMGT])(?:I?B)?|B)?", text.upper()) if text.isascii() else None
        if match is None:
            raise UsageError(f"DIP_MEMORY_LIMIT must be bytes with an optional K/M/G/T suffix, got {plain_value(text)}")
        found = min(found, int(match.group(1)) * _UNITS[match.group(2) or ""])
    return found


def _ram_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 1 << 40  # unknown: only DIP_MEMORY_LIMIT bounds it


def _gpu_free(device: Any) -> int:
    import torch

    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except Exception:  # no driver, or a device index that does not exist: the RAM bound still holds
        return _ram_available()


def check_memory(need: int, what: str, device: Any = None, fixed: int | None = None) -> None:
    """Refuse, in one line naming both figures, a need above the limit. `fixed`: the part of a run's need its model
    takes whatever the sizes asked for; where that part fits, the sizes asked for are what does not (a bad
    argument: RunBudgetError, exit 2), else the model is (BudgetError, exit 1, as for any file that holds too much)."""
    limit = memory_limit(device)
    if need > limit:
        kind = RunBudgetError if fixed is not None and fixed <= limit else BudgetError
        where = "free GPU memory" if getattr(device, "type", None) == "cuda" else "available memory"
        raise kind(f"{what} needs about {gib(need)}, more than the {gib(limit)} of {where}; make it smaller")


def check_run(
    config: Any,
    shape: RunShape,
    device: Any = None,
    resident: bool = False,
    backend: str | None = "torch",
    export: bool = False,
) -> None:
    """A sampling run fits in memory on its backend (called where every run goes through, before any tensor).

    `resident`: the weights are already where the run happens (the limit, measured now, has them taken off).
    `export`: the run makes its ONNX export first (onnx / trt from a checkpoint): that export's peak counts too.
    """
    need = run_bytes(config, shape, backend) - (weight_bytes(config) if resident else 0)
    if export and family(backend) != "torch":  # the exporter stays loaded under the run that follows it
        need = max(need + EXPORT_FIXED_BYTES, export_bytes(config, shape.height, shape.width))
    what = f"sampling batch {shape.batch} at {shape.height}x{shape.width}" + (
        f" keeping {shape.samples} images" if shape.samples > 1 else ""
    )
    kind = family(backend)
    if kind != "torch":
        what += (" on ONNX Runtime" if kind == "onnx" else " on TensorRT") + (" (its export made first)" if export else "")
    fixed = weight_bytes(config) * (0 if resident else 1) + (EXPORT_FIXED_BYTES if export and kind != "torch" else 0)
    check_memory(need, what, device, fixed)


def check_weights(config: Any, source: str = "") -> None:
    """The model a config describes fits in memory: checked before it is built or its tensors are read."""
    check_memory(weight_bytes(config), (f"{source}: " if source else "") + f"{describe(config)} in fp32", None)


def export_bytes(config: Any, height: int, width: int) -> int:
    """Peak bytes of an ONNX export: the exporter itself, the weights several times over (module, traced graph,
    protobuf, verifying session), and the larger of the network traced in torch at the export batch and the verifying
    ONNX Runtime session run at that batch (one after the other)."""
    shape = RunShape(EXPORT_BATCH, height, width, samples=0, guided=False)
    tracing = run_bytes(config, shape, "torch") - weight_bytes(config)
    verifying = run_bytes(config, shape, "onnx") - 2 * weight_bytes(config)
    return EXPORT_FIXED_BYTES + EXPORT_WEIGHT_COPIES * weight_bytes(config) + max(tracing, verifying)


def check_export(config: Any, height: int, width: int) -> None:
    """An ONNX export of this config and image size fits in memory (before the model is built or traced)."""
    fixed = EXPORT_FIXED_BYTES + EXPORT_WEIGHT_COPIES * weight_bytes(config)  # the exporter and its weight copies
    check_memory(export_bytes(config, height, width), f"exporting {describe(config)} at {height}x{width}", None, fixed)


def trt_build_bytes(config: Any, height: int, width: int, max_batch: int) -> int:
    """GPU bytes of a TensorRT build: the weights a few times, the workspace and the network at the profile's largest batch."""
    shape = RunShape(max_batch, height, width, samples=0)
    return (TRT_WEIGHT_COPIES - 1) * weight_bytes(config) + TRT_WORKSPACE + run_bytes(config, shape)


def check_trt_build(config: Any, height: int, width: int, max_batch: int, device: Any = None) -> None:
    """A TensorRT build of this export and batch profile fits in the GPU's free memory (before the builder starts)."""
    need = trt_build_bytes(config, height, width, max_batch)
    what = f"building TensorRT engines of {describe(config)} at {height}x{width} for batch {max_batch}"
    check_memory(need, what, device, (TRT_WEIGHT_COPIES - 1) * weight_bytes(config) + TRT_WORKSPACE)


def check_work(evaluations: list[int], images: int, reference: int = 0) -> None:
    """A measurement's network evaluations per image are each >= 1 and bounded in total."""
    if not evaluations or min(evaluations) < 1:
        raise UsageError("evaluation counts must be >= 1 (--nfe)")
    total = (sum(evaluations) + reference) * max(images, 1)
    if total > MAX_EVALUATIONS:
        raise RunBudgetError(f"this measurement makes {total} network evaluations, more than the limit of {MAX_EVALUATIONS}")


def check_declared(elements: int, element_size: int, source: str, file_size: int | None = None) -> None:
    """Tensors a file declares: their bytes against the memory limit and, where data is stored, the file's size."""
    need = elements * element_size
    if file_size is not None and need > file_size + (1 << 20):
        raise BudgetError(f"{source}: declares {gib(need)} of tensors but holds {gib(file_size)} of data; refusing to load it")
    check_memory(need, f"{source}: reading its tensors", None)


# ---------------------------------------------------------------- what a pickle declares

_ELEMENT_SIZES = {"Double": 8, "Long": 8, "ComplexDouble": 16, "ComplexFloat": 8, "Float": 4, "Int": 4, "Half": 2,
                  "BFloat16": 2, "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "Untyped": 1}  # fmt: skip
_CONSTANTS = {"BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "SHORT_BINUNICODE", "BINUNICODE",
              "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES",
              "BINBYTES8"}  # fmt: skip
_MARK = object()
_MAX_COUNTED = 1 << 64  # a product past this is refused anyway; stops the arithmetic on absurd sizes
MAX_PICKLE_ARGUMENT = 64 << 20  # one opcode's argument: a checkpoint's pickle holds structure (tensors are stored apart)
MAX_CALL_BYTES = 64 << 20  # what a load's calls may allocate by size, and pass beyond twice the pickle read so far
DIP_MARK = "s_embedder"  # a key part of every DiP state dict, and a module name in a whole model's pickle
ZIP_SLACK = 1 << 20  # what a zip checkpoint's records may add up to beyond the file's own size (torch.save stores them)


class BigArgument(Exception):
    """A pickle opcode declares an argument longer than `MAX_PICKLE_ARGUMENT` (never read)."""


class UnreadSize(Exception):
    """A pickle calls a buffer or storage constructor with a size the scan cannot read."""


class ManyCalls(Exception):
    """A pickle passes more bytes of values to its calls than `call_budget` allows (memoised values, repeated)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def call_budget(read: int) -> int:
    """Bytes of values a load's calls may be passed, `read` bytes into its pickle: twice what was read (each value
    the file holds passed once or twice: `_codecs.encode`'s text, then the bytes it makes), and `MAX_CALL_BYTES`.
    A value passed again through the memo (10 bytes of pickle per 1 MiB copy) is counted every time."""
    return MAX_CALL_BYTES + 2 * read


_UNKNOWN = object()  # a value the scan does not follow (what an opcode it does not model made, something changed)


def _element_size(kind: Any) -> int:
    name = kind[1] if isinstance(kind, tuple) and len(kind) == 2 and isinstance(kind[1], str) else ""
    for prefix, size in _ELEMENT_SIZES.items():
        if name.startswith(prefix):
            return size
    return 8  # unknown storage or dtype object: the largest common element


class BadView(Exception):
    """A tensor the pickle rebuilds views its storage in a way no saved weight does; the text says how (no file content)."""


@dataclass
class Declared:
    """What the pickles of a checkpoint declare, read without running them."""

    storages: dict[Any, int]  # storage key -> bytes (each storage once, however many tensors view it)
    calls: int = 0  # bytes calls that allocate by size alone would take
    passed: int = 0  # bytes of the values passed to calls, each call counting its arguments (memoised ones included)
    views: int = 0  # bytes of every tensor by its shape (what work on the tensors is proportional to)
    tensors: int = 0  # tensors rebuilt from a storage
    made: list[Any] = field(default_factory=list)  # the storages persistent ids declare, in order
    names_dip: bool = False  # a text constant names DiP's patch embedder (`DIP_MARK`): every DiP pickle holds one
    ended: bool = False  # a pickle was read to its STOP

    @property
    def bytes(self) -> int:
        return sum(self.storages.values()) + self.calls


def pickle_declared_bytes(stream: Any, max_pickles: int = 8) -> int:
    """Bytes of the storages the pickles in `stream` declare (persistent ids `('storage', type, key, location, numel)`),
    each storage key once, and of the calls that allocate by size (`pickle_declared`)."""
    return pickle_declared(stream, max_pickles).bytes


def pickle_declared(stream: Any, max_pickles: int = 8) -> Declared:
    """The storages, allocating calls and tensor views the pickles in `stream` declare.

    Nothing is executed: opcodes are read with pickletools and only constants and tuples are followed.
    Every tensor rebuilt from a storage (`_rebuild_tensor_v2`, `_rebuild_tensor`, and either inside
    `_rebuild_from_type_v2`) is bounded by its shape, not its storage: one that needs more elements than its
    storage holds, reaches past it, or repeats elements (a zero or negative stride) is refused (`BadView`).
    Every call counts the bytes of the values it is passed, memoised ones each time (lists, dicts and call results
    by what was put in them), and the pickle is refused past `call_budget` (`ManyCalls`): a value the file holds
    once cannot be copied thousands of times. A legacy file holds a few pickles, then raw data (where reading stops).
    """
    import pickletools

    found = Declared({})
    for _ in range(max_pickles):
        start = stream.tell()
        try:
            _scan_one(pickletools.genops(stream), found)
        except (UnreadSize, BigArgument, BadView, ManyCalls, OddCodec):
            raise
        except Exception:  # not (or no longer) a pickle: torch's own reader will say so
            break
        if stream.tell() == start:
            break
    return found


def check_checkpoint_tensors(path: Any) -> None:
    """A torch checkpoint (zip or legacy pickle) declares no more tensor bytes than it holds, nor than memory allows."""
    import zipfile
    import zlib
    from pathlib import Path

    path = Path(path)
    try:
        _check_checkpoint_tensors(path)
    except (zipfile.BadZipFile, zlib.error, EOFError):  # its words name records of the file: not repeated
        raise BudgetError(
            f"{path}: a damaged zip (its directory and its records disagree, or a record cannot be read); refusing to read it"
        ) from None
    except BigArgument:
        raise BudgetError(
            f"{path}: its pickle declares a value longer than {gib(MAX_PICKLE_ARGUMENT)} (a checkpoint's pickle holds "
            "only structure); refusing to read it"
        ) from None
    except UnreadSize:
        raise BudgetError(
            f"{path}: builds a buffer or storage of a size computed while loading (not written in the file); refusing to load it"
        ) from None
    except BadView as err:
        raise BudgetError(f"{path}: {err}; refusing to load it") from None
    except OddCodec:
        raise BudgetError(
            f"{path}: its pickle encodes text with a codec other than latin1 (the one pickle writes bytes with); "
            "refusing to load it"
        ) from None
    except ManyCalls as err:
        raise BudgetError(
            f"{path}: its pickle passes more than {gib(err.limit)} of values to the calls it makes (repeating "
            "values it holds, which a checkpoint does not); refusing to load it"
        ) from None


def _check_checkpoint_tensors(path: Any) -> None:
    import zipfile

    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            size = max(size, check_zip_records(archive.infolist(), str(path), size))  # what its records hold
            found, storages = [], set()
            for info in _zip_pickles(archive):
                with archive.open(info) as f:
                    found.append(pickle_declared(_Bounded(f, info.file_size)))
                storages |= _check_records_hold(archive, info.filename.rsplit("/", 1)[0], found[-1], path)
            _check_compressed_records(archive.infolist(), storages, path)
    else:
        with path.open("rb") as f:
            found = [pickle_declared(_Bounded(f, size))]
    check_declared(max((d.bytes for d in found), default=0), 1, str(path), file_size=size)
    views = max((d.views for d in found), default=0)  # tied weights view one storage twice: counted by shape here
    check_memory(views, f"{path}: its tensors by their shapes", None)


def _zip_pickles(archive: Any) -> list[Any]:
    """Every record torch's reader could take for the pickle (it matches names in any case)."""
    return [i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1].lower() == "data.pkl"]


def names_no_dip(path: Any) -> bool:
    """A zip checkpoint whose pickles, each read to its end, hold no text naming DiP's patch embedder (`DIP_MARK`):
    it holds no DiP weights, known before torch's reader inflates any of its records. Any other file: False."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            scans = []
            for info in _zip_pickles(archive):
                with archive.open(info) as f:
                    scans.append(pickle_declared(_Bounded(f, info.file_size)))
    except Exception:  # anything the scan cannot read is torch's reader's to report
        return False
    return bool(scans) and all(d.ended and not d.names_dip for d in scans)


def _check_compressed_records(records: Any, storages: set[str], path: Any) -> None:
    """A compressed record that is no storage of a pickle (the pickle itself, the version and byte-order records)
    inflates to no more than a pickle's argument may hold: torch's reader inflates such a record whole."""
    for info in records:
        if info.compress_type != 0 and info.filename.lower() not in storages and info.file_size > MAX_PICKLE_ARGUMENT:
            raise BudgetError(
                f"{path}: a compressed record that holds no tensor inflates to {info.file_size} bytes (more than "
                f"{gib(MAX_PICKLE_ARGUMENT)}; torch.save writes only small ones); refusing to read it"
            )


def _check_records_hold(archive: Any, prefix: str, declared: Declared, path: Any) -> set[str]:
    """Every storage the pickle declares has its record (`PREFIX/data/KEY`, any case, as torch's reader finds it)
    holding at least its bytes: a shorter record would have the tensor read past it, from the zip's next headers.
    A compressed record holds no more than its storage needs: torch's reader inflates a record whole before it
    compares sizes, so a small deflated record that inflates to gigabytes would cost them before any refusal.
    A record that is missing is torch's reader's to report."""
    records = {info.filename.lower(): info for info in archive.infolist()}
    held = set()
    for key, needed in declared.storages.items():
        info = records.get(f"{prefix}/data/{key}".lower()) if isinstance(key, str | int) else None
        if info is None:
            continue
        held.add(info.filename.lower())
        if info.file_size < needed:
            raise BudgetError(
                f"{path}: truncated or damaged: a tensor record holds {info.file_size} bytes where its storage needs "
                f"{needed}; refusing to load it"
            )
        if info.compress_type != 0 and info.file_size > needed:
            raise BudgetError(
                f"{path}: a compressed tensor record inflates to {info.file_size} bytes where its storage needs "
                f"{needed} (torch.save writes each storage's bytes exactly); refusing to load it"
            )
    return held


def check_zip_records(records: Any, source: str, file_size: int) -> int:
    """A zip checkpoint's records, by the sizes its directory declares, before any is read; returns the bytes they hold.

    torch.save stores its records uncompressed, so together those hold no more than the file; one larger than
    memory is refused unread. A file re-zipped with compression is read whole into memory instead of mapped
    (`zip_mappable`), so its records together, inflated, must fit in memory (a zip bomb is refused unread).
    """
    stored = inflated = 0
    names = Counter(info.filename.lower() for info in records)
    if names and max(names.values()) > 1:  # torch's reader takes the first of such records, Python's zipfile the last
        raise BudgetError(
            f"{source}: its zip holds two records of one name (names differing only in case count as one); torch.save "
            "writes each record once: refusing to read it"
        )
    for info in records:
        what = "reading one of its records" if info.compress_type == 0 else "inflating one of its compressed records"
        check_memory(info.file_size, f"{source}: {what}", None)
        if info.compress_type == 0:  # ZIP_STORED
            stored += info.file_size
        else:
            inflated += info.file_size
    if stored > file_size + ZIP_SLACK:
        raise BudgetError(
            f"{source}: its zip records inflate to {gib(stored)} but the file is {file_size} bytes "
            "(torch.save stores its records uncompressed); refusing to read it"
        )
    if inflated:
        check_memory(stored + inflated, f"{source}: inflating its compressed records", None)
    return stored + inflated


def zip_mappable(path: Any) -> bool:
    """A zip checkpoint whose records are all stored (as torch.save writes them) can be memory-mapped; one with any
    compressed record is read into memory instead (mapping it would read the compressed bytes as tensor data)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())


class _Bounded:
    """A stream for pickletools: the `tell` it needs, and no read longer than `MAX_PICKLE_ARGUMENT`.

    pickletools reads a counted argument with one `read(n)` of the length the opcode declares: a larger `n`
    is refused before anything is read, so no argument is ever materialised past the cap. One longer than
    what is left of the stream is not read either: the scan stops there (torch's reader will say it is truncated).
    """

    def __init__(self, f: Any, size: int) -> None:
        self.f, self.pos, self.size = f, 0, size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.size - self.pos:
            raise ValueError("truncated")
        if n > MAX_PICKLE_ARGUMENT:
            raise BigArgument
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readline(self) -> bytes:
        data = self.f.readline(MAX_PICKLE_ARGUMENT + 1)
        if len(data) > MAX_PICKLE_ARGUMENT:
            raise BigArgument
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos


_TUPLES = ("TUPLE", "EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3")


def _tuple_of(name: str, stack: list[Any]) -> tuple[Any, ...]:
    """The tuple a tuple opcode builds, its items taken off the stack."""
    if name == "TUPLE":
        return tuple(_pop_to_mark(stack))
    if name == "EMPTY_TUPLE":
        return ()
    n = int(name[-1])
    items = stack[-n:] if len(stack) >= n else []  # too few: a broken pickle, its stack emptied
    del stack[-n:]
    return tuple(items)


def _scan_one(ops: Any, found: Declared) -> None:
    stack: list[Any] = []
    memo: dict[Any, Any] = {}
    for op, arg, pos in ops:
        name = op.name
        if name == "STOP":
            found.ended = True
            break
        if name in _CHANGERS:
            _change(name, stack)
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"):
            stack.append(_Bag(0))
        elif name in ("LIST", "DICT", "FROZENSET"):
            stack.append(_Bag(_size(tuple(_pop_to_mark(stack)))))
        elif name == "MARK":
            stack.append(_MARK)
        elif name in _CONSTANTS:
            stack.append(arg)
            found.names_dip = found.names_dip or (isinstance(arg, str) and DIP_MARK in arg)
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "STACK_GLOBAL":
                name_, module = (stack.pop() if stack else None), (stack.pop() if stack else None)
                stack.append((module, name_))
            else:
                stack.append(tuple(str(arg).split(" ", 1)))
        elif name in _TUPLES:
            stack.append(_tuple_of(name, stack))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[arg if name != "MEMOIZE" else len(memo)] = stack[-1] if stack else _UNKNOWN
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(arg, _UNKNOWN))
        elif name == "DUP":
            stack.append(stack[-1] if stack else _UNKNOWN)
        elif name in ("BINPERSID", "PERSID"):
            pid = stack.pop() if name == "BINPERSID" and stack else arg
            stack.append(_storage(pid, found))
        elif name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX"):
            if name == "NEWOBJ_EX" and stack:
                stack.pop()  # the keyword arguments
            args, func = (stack.pop() if stack else None), (stack.pop() if stack else None)
            stack.append(_called(func, args, found, pos or 0))
        elif name in ("INST", "OBJ"):  # calls with the items above the mark: INST names the class, OBJ pops it first
            items = _pop_to_mark(stack)
            func = tuple(str(arg).split(" ", 1)) if name == "INST" else (items.pop(0) if items else None)
            stack.append(_called(func, tuple(items), found, pos or 0))
        else:
            _generic(op, stack)


def _called(func: Any, args: Any, found: Declared, pos: int) -> Any:
    """A call (REDUCE / NEWOBJ / INST / OBJ): what it allocates by size and the bytes of the values it is passed are
    counted (`ManyCalls` past `call_budget`), its view checked; what the scan keeps of its result is returned."""
    allocated = _call_bytes(func, args)
    found.calls += allocated
    passed = _size(args, call_budget(pos) - found.passed)
    found.passed += passed
    if found.passed > call_budget(pos):
        raise ManyCalls(call_budget(pos))
    _view(func, args, found)
    made = _made(func, args, found)
    return _Bag(passed + allocated) if made is _UNKNOWN else made  # a result can hold what it was given


class _Bag:
    """A value the scan does not model (a list, dict or set, a call's result) by the bytes it may hold."""

    def __init__(self, size: int) -> None:
        self.size = min(size, _MAX_COUNTED)


_CHANGERS = {"APPEND": 2, "SETITEM": 3, "BUILD": 2, "APPENDS": 0, "SETITEMS": 0, "ADDITEMS": 0}  # where the target sits


def _change(name: str, stack: list[Any]) -> None:
    """APPEND(S), SETITEM(S), ADDITEMS, BUILD: what they add is added to the target's size; the target stays."""
    depth = _CHANGERS[name]
    items = _pop_to_mark(stack) if depth == 0 else [stack.pop() for _ in range(min(depth - 1, len(stack)))]
    if stack and isinstance(stack[-1], _Bag):
        stack[-1].size = min(stack[-1].size + _size(tuple(items)), _MAX_COUNTED)
    elif stack:
        stack[-1] = _UNKNOWN  # anything else changed is no longer what the scan knew


def _size(value: Any, cap: int = _MAX_COUNTED) -> int:
    """Bytes a value may take: text and bytes by length, a tuple by its items (8 bytes a reference), a list, dict,
    set or call result by what was put in it, a storage nothing (calls view it); counting stops past `cap`."""
    total, todo = 0, [value]
    while todo and total <= cap:
        item = todo.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, _Bag):
            total += item.size
        elif isinstance(item, tuple):
            total += 8 * len(item)
            todo.extend(item)
        elif not isinstance(item, _Storage):
            total += 8
    return min(total, _MAX_COUNTED)


_BUFFERS = {("builtins", "bytearray"), ("builtins", "bytes"), ("__builtin__", "bytearray"), ("__builtin__", "bytes")}
_ALLOWED_MODULES = ("builtins", "__builtin__", "collections", "torch")  # where a weights-only load's callables live
_WIDEST_ELEMENT = 16  # complex128: an element of a dtype the file does not name


class _Size:
    """A `torch.Size(...)` the pickle builds: its element count, for a constructor it is passed to."""

    def __init__(self, elements: int) -> None:
        self.elements = elements


class OddCodec(Exception):
    """A pickle calls `_codecs.encode` with another encoding than latin1, the one pickle protocol 2 writes bytes with."""


def _call_bytes(func: Any, args: Any) -> int:
    """Bytes a call may allocate by size alone, before it runs (REDUCE / NEWOBJ / INST / OBJ).

    `bytearray(n)` / `bytes(n)`: n. Any other class among the globals a weights-only load allows (a name
    starting with a capital in builtins, collections or torch: storages `UntypedStorage(n)`, `FloatStorage(n)`,
    `TypedStorage(n, ...)`, legacy tensor types `FloatTensor(a, b)`, `torch.Tensor(torch.Size(...))`) may
    allocate as many elements as the product of its positive int (and torch.Size) arguments, each as wide as
    its name says (Float 4, Untyped 1, ...) or the widest dtype. Functions are torch's tensor rebuilders, whose
    ints are offsets into storages already counted, except `_rebuild_qtensor`, which allocates its size before
    it sets the storage. Placeholders (every other global) never run: nothing.
    """
    if not (isinstance(func, tuple) and len(func) == 2 and all(isinstance(x, str) for x in func)):
        return 0
    module, name = func
    args = args if isinstance(args, tuple) else (_UNKNOWN,)
    if func == _LATIN1 and not (len(args) == 2 and args[1] in ("latin1", "latin-1")):
        raise OddCodec  # another codec's work is not bounded by its bytes (punycode is quadratic)
    allocates = func in _BUFFERS or (module.split(".", 1)[0] == "torch" and name.endswith(("Storage", "Tensor")))
    if allocates and any(a is _UNKNOWN or isinstance(a, _Bag) for a in args):
        raise UnreadSize  # a size it cannot read (computed, duplicated, fetched): refused, never counted as none
    if func in _BUFFERS:
        return sum(a for a in args if type(a) is int and a > 0)
    if module == "torch._utils" and name == "_rebuild_qtensor":
        return _elements(args[2] if len(args) > 2 and isinstance(args[2], tuple) else ()) * 4
    if module.split(".", 1)[0] not in _ALLOWED_MODULES or not name.lstrip("_")[:1].isupper():
        return 0
    size = _ELEMENT_SIZES.get(next((p for p in _ELEMENT_SIZES if name.startswith(p)), ""), _WIDEST_ELEMENT)
    return _elements(args) * size


def passed_bytes(args: Any, cap: int = _MAX_COUNTED) -> int:
    """Bytes of the real values a call is passed (the inert reader's check; `_size` of the scan's values): text and
    bytes by length, containers by their items (8 bytes a reference), anything else (a tensor, storage) 8."""
    total, todo = 0, [args]
    while todo and total <= cap:
        item = todo.pop()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif isinstance(item, tuple | list | set | frozenset):
            total += 8 * len(item)
            todo.extend(item)
        elif isinstance(item, dict):
            total += 16 * len(item)
            todo.extend(item.keys())
            todo.extend(item.values())
        else:
            total += 8
    return total


def call_bytes(maker: Any, args: Any) -> int:
    """`_call_bytes` of a call about to run, from the real callable and arguments (the inert reader's check)."""
    import torch

    func = (getattr(maker, "__module__", None) or "", getattr(maker, "__qualname__", None) or "")
    if not isinstance(args, tuple):
        return 0
    known = tuple(_Size(_elements(tuple(a))) if isinstance(a, torch.Size) else a for a in args)
    return _call_bytes(func, known)


def _elements(args: tuple[Any, ...]) -> int:
    """The product of the positive ints and torch.Size counts among `args` (0 when there are none)."""
    found, product = False, 1
    for a in args:
        n = a if type(a) is int else a.elements if isinstance(a, _Size) else 0
        if n > 0:
            found, product = True, min(product * n, _MAX_COUNTED)
    return product if found else 0


_FROM_BYTES = ("torch.storage", "_load_from_bytes")  # a storage pickled without persistent ids: a nested legacy file
_LATIN1 = ("_codecs", "encode")  # how protocol 2 writes bytes: (text, "latin1")


def _made(func: Any, args: Any, found: Declared) -> Any:
    """What the scan keeps of a call's result: a torch.Size's element count, the bytes protocol 2 encodes as text,
    a storage a call builds (by size, or from the bytes of a nested file); nothing of anything else."""
    if not (isinstance(func, tuple) and isinstance(args, tuple)):
        return _UNKNOWN
    if func == ("torch", "Size") and args and isinstance(args[0], tuple):
        return _Size(_elements(args[0]) if all(type(a) is int for a in args[0]) else _MAX_COUNTED)
    if func == _LATIN1 and len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
        try:
            return args[0].encode("latin1")
        except UnicodeEncodeError:
            return _UNKNOWN
    if func == _FROM_BYTES and len(args) == 1 and isinstance(args[0], bytes):
        import io

        nested = pickle_declared(_Bounded(io.BytesIO(args[0]), len(args[0])))
        found.passed += nested.passed
        for key, size in nested.storages.items():  # its data lies in this file: counted against its size
            found.storages[("nested", len(found.storages), key)] = size
        return nested.made[-1] if len(nested.made) == 1 else _UNKNOWN
    if len(func) == 2 and str(func[0]).split(".", 1)[0] == "torch" and str(func[1]).endswith("Storage"):
        return _Storage(_elements(args), _element_size(func))  # by size (already counted by `_call_bytes`)
    return _UNKNOWN


@dataclass(frozen=True)
class _Storage:
    """A storage a persistent id declares: its elements and their size."""

    numel: int
    itemsize: int


def _storage(pid: Any, found: Declared) -> Any:
    """The storage a persistent id declares, its bytes recorded once per storage key (views of one storage share it)."""
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        return _UNKNOWN
    numel = pid[4] if type(pid[4]) is int and pid[4] > 0 else 0
    storage = _Storage(numel, _element_size(pid[1]))
    key = pid[2] if isinstance(pid[2], str | int) else ("unreadable", len(found.storages))
    found.storages[key] = max(found.storages.get(key, 0), numel * storage.itemsize)
    found.made.append(storage)
    return storage


_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")}  # (storage, offset, size, stride)
_FROM_TYPE = ("torch._tensor", "_rebuild_from_type_v2")  # (rebuilder, type, its arguments, state)


def _view(func: Any, args: Any, found: Declared) -> None:
    """A tensor rebuilt from a storage: its shape's elements counted (`found.views`), and refused unless it views
    its storage as a saved weight does, each element once and within the storage (`BadView`)."""
    if func == _FROM_TYPE and isinstance(args, tuple) and len(args) >= 3:
        func, args = args[0], args[2]
    if func not in _REBUILDERS:
        return
    found.tensors += 1
    number = found.tensors
    storage, offset, size, stride = (tuple(args) + (None,) * 4)[:4] if isinstance(args, tuple) else (None,) * 4
    readable = all(isinstance(t, tuple) and all(type(n) is int for n in t) for t in (size, stride))
    if not isinstance(storage, _Storage) or type(offset) is not int or not readable or len(size) != len(stride):
        raise BadView(f"tensor #{number} has a storage, offset, shape or stride the file does not write out")
    if any(n < 0 for n in size) or offset < 0:
        raise BadView(f"tensor #{number} has a negative size or offset")
    elements = 1
    for n in size:
        elements = min(elements * n, _MAX_COUNTED)
    found.views = min(found.views + elements * storage.itemsize, _MAX_COUNTED)
    if elements == 0:
        return
    if any(st <= 0 for n, st in zip(size, stride, strict=True) if n > 1):
        raise BadView(f"tensor #{number} repeats elements of its storage (a zero or negative stride)")
    if elements > storage.numel:
        raise BadView(f"tensor #{number} has {elements} elements by its shape, more than the {storage.numel} its storage holds")
    if offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True)) >= storage.numel:
        raise BadView(f"tensor #{number} reaches past the end of its storage ({storage.numel} elements)")


def _pop_to_mark(stack: list[Any]) -> list[Any]:
    """The items above the topmost mark, in push order; they and the mark leave the stack."""
    items = []
    while stack and stack[-1] is not _MARK:
        items.append(stack.pop())
    if stack:
        stack.pop()
    items.reverse()
    return items


def _generic(op: Any, stack: list[Any]) -> None:
    """Any other opcode: pop what it takes (to the mark for a slice), push one opaque value per result."""
    import pickletools

    before = op.stack_before
    if pickletools.markobject in before:
        _pop_to_mark(stack)
        before = [b for b in before if b is not pickletools.markobject and b is not pickletools.stackslice]
    for _ in before:
        if stack:
            stack.pop()
    stack.extend(_UNKNOWN for _ in op.stack_after)
