"""`--backend auto`: the fastest fp32 / bf16 / fp16 backend of this machine for a model, size and batch.

Decided from a short measurement (a few timed network evaluations per candidate, at most one
torch.compile) and cached under engines/ per model content, image size, batch, device and library
versions, each entry marked under the owner key (one without a valid mark is measured again and replaced).
int8 changes the pictures visibly and is never chosen here; TensorRT is chosen by name
(its engine build takes minutes, which a quick decision must not cost).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dip_export.checkpoint import LoadedModel
from dip_export.measure.harness import repeat
from dip_export.runtime.backends import BACKENDS, BackendSpec
from dip_export.sampling import Denoiser

CACHE_FILE = "auto-backend.json"
CACHE_KIND = "auto-backend-cache"  # its mark (ownership.mark): no other JSON of this tool replaces it, nor it another
WARMUP, REPEATS = 2, 5  # evaluations per candidate: the first ones include compilation
STEADY = 0.25  # eager fp32 timed first and last may differ this much (relative) for a decision to be cached
AGAIN = " again"  # the key suffix of eager fp32's second timing, made after every candidate
HEX64 = re.compile(r"[0-9a-f]{64}")  # an entry's mark (ownership.contents_mac)


@dataclass(frozen=True)
class Decision:
    spec: BackendSpec
    reason: str  # e.g. "compile:bf16: 3.2x eager on this CPU (AMX)"
    ms: dict[str, float]  # measured ms per paired evaluation, per candidate
    cached: bool = False


def cpu_features() -> set[str]:
    """The CPU flags that decide which precision is native (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return {f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni")}


def native_bf16(device: torch.device) -> bool:
    """bf16 GEMMs in hardware: AMX or AVX-512 BF16 on a CPU, Ampere or newer on CUDA."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_features()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def hardware_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"on {torch.cuda.get_device_name(device)}"
    flags = cpu_features()
    kind = (
        "AMX"
        if "amx_bf16" in flags
        else "AVX-512 BF16"
        if "avx512_bf16" in flags
        else "AVX-512"
        if any(f.startswith("avx512") for f in flags)
        else "AVX2"
        if "avx2" in flags
        else "no AVX2"
    )
    return f"on this CPU ({kind})"


def candidates(device: torch.device) -> list[BackendSpec]:
    """What is worth measuring here, from the registry: eager fp32 (the reference), then per backend that
    --backend auto measures on this device fp32 and the native half precision (emulated bf16 runs at a
    tenth of fp32's speed: no candidate without hardware support); one precision at most of a backend
    that compiles (the half one where native); export-run backends at fp32 (reduced precision inside
    an export changes pictures or is not a CPU path)."""
    half = "bf16" if native_bf16(device) else "fp16" if device.type == "cuda" else None
    specs = [BackendSpec("torch", "fp32")]
    order = sorted(BACKENDS.values(), key=lambda r: (r.compiles, r.runs_from == "model"))  # the compile last
    for record in order:
        if device.type not in record.auto_on or record.unavailable_reason(record.default, device, from_model=True):
            continue  # not tried here, or its packages are missing: never a candidate
        precisions = ["fp32"] if record.runs_from == "export" else [p for p in ("fp32", half) if p in record.precisions]
        if record.compiles:
            precisions = precisions[-1:]
        specs += [BackendSpec(record.name, p) for p in precisions if BackendSpec(record.name, p) not in specs]
    return specs


def cache_key(model_id: str, size: tuple[int, int], batch: int, device: torch.device) -> str:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor()} {sorted(cpu_features())}"
    text = json.dumps([model_id, list(size), batch, str(device.type), hw, torch.get_num_threads(), versions], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def evaluation(net: Denoiser, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One backbone + detailer evaluation, as the harness times it."""

    def evaluate() -> torch.Tensor:
        with torch.inference_mode():
            return net.detailer(x, net.backbone(x, t, y))

    return evaluate


def measure(
    make: Callable[[BackendSpec], Denoiser], specs: list[BackendSpec], loaded: LoadedModel, size: tuple[int, int],
    batch: int, device: torch.device,
) -> dict[str, float]:  # fmt: skip
    """Median ms per paired (CFG) evaluation of each candidate; a candidate that fails is left out."""
    from dip_export.errors import DipError

    rows = 2 * batch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((rows, loaded.config.in_channels, *size), generator=gen).to(device)
    t = torch.full((rows,), 0.5, device=device)
    y = torch.randint(0, loaded.config.num_classes, (rows,), generator=gen).to(device)
    results: dict[str, float] = {}
    runs = [(str(spec), spec) for spec in specs] + [(f"{specs[0]}{AGAIN}", specs[0])]  # eager again: did the load change?
    for key, spec in runs:
        try:
            net = make(spec)
            timing, _ = repeat(evaluation(net, x, t, y), device, warmup=WARMUP, repeats=REPEATS)
            results[key] = 1000 * timing.median
        except (DipError, RuntimeError, ImportError, ValueError):
            continue  # a backend that cannot run here is simply not chosen
        finally:
            net = None  # type: ignore[assignment]  # one engine alive at a time
    return results


def steady(ms: dict[str, float]) -> bool:
    """Eager fp32 took about as long at the end as at the start: the comparison was made under one load."""
    first, last = ms.get("torch:fp32"), ms.get(f"torch:fp32{AGAIN}")
    return first is not None and last is not None and abs(last - first) <= STEADY * min(first, last)


def decide(ms: dict[str, float], device: torch.device) -> tuple[BackendSpec, str]:
    eager = ms["torch:fp32"]
    best = min((k for k in ms if not k.endswith(AGAIN)), key=lambda k: ms[k])
    return BackendSpec.parse(best), f"{best}: {eager / ms[best]:.1f}x eager {hardware_label(device)}"


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache file is untrusted: anything malformed in it is ignored (the file is rewritten only when it
    carries this tool's mark: `choose_backend` refuses any other file before measuring)."""
    from dip_export.untrusted import UntrustedFileError, read_json

    if not path.exists() and not path.is_symlink():
        return {}
    try:
        data = read_json(path, folder=path.parent, what="auto-backend cache")
    except UntrustedFileError:
        return {}
    return data if isinstance(data, dict) else {}


def check_cache(root: Path) -> Path:
    """The cache `root/auto-backend.json` is absent, or a regular file this tool wrote: checked at load, before a
    model is read or a Hub request made, and again before measuring."""
    from dip_export.errors import DipError
    from dip_export.ownership import is_ours

    path = root / CACHE_FILE
    _check_cache_kind(path)
    if path.exists() and not is_ours(path, CACHE_KIND):  # never measured over, never replaced: it is not ours
        raise DipError(f"{path} is not a --backend auto cache this tool wrote; move it away")
    return path


def _check_cache_kind(path: Path) -> None:
    """Before any measuring: the cache is absent or a regular file (a FIFO would block its reader forever)."""
    import stat

    from dip_export.errors import DipError

    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as err:
        raise DipError(f"{path}: cannot read the --backend auto cache ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kinds = {stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symlink", stat.S_IFIFO: "a FIFO"}
        kind = kinds.get(stat.S_IFMT(mode), "not a regular file")
        raise DipError(f"{path} is {kind}; the --backend auto cache goes there (move it away)")


def _marked_contents(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """What an entry's mark covers (ownership.contents_mac, the owner key of export manifests, as the yardstick
    reference and the shards): the cache's kind, the entry's key and every field of the entry but its mark."""
    from dip_export.ownership import mark

    return {"written_by": mark(CACHE_KIND), "key": key, "entry": {k: v for k, v in entry.items() if k != "mac"}}


def _marked_entry(key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """`entry` with its mark under the owner key (made on first use), as it is written to the cache."""
    from dip_export.ownership import contents_mac, owner_key

    return {**entry, "mac": contents_mac(_marked_contents(key, entry), owner_key(create=True) or b"")}


def _valid_entry(key: str, entry: Any, allowed: list[BackendSpec]) -> Decision | None:
    """The cached decision, rebuilt from what the tool checks itself: an entry this user's tool wrote for this key
    (a valid mark under the owner key over the key and the entry: one written by hand, by another user or an older
    version is measured again and replaced), the backend one of `allowed`, timings of known candidates as positive
    finite numbers. No text of the file is kept: the reason is made here, from the numbers (the file's own `reason`
    is never shown)."""
    from dip_export.ownership import mac_problem

    if not isinstance(entry, dict) or not isinstance(entry.get("backend"), str) or not isinstance(entry.get("mac"), str):
        return None
    if not HEX64.fullmatch(entry["mac"]) or mac_problem(_marked_contents(key, entry), entry["mac"]) is not None:
        return None
    names = {str(s): s for s in allowed}
    ms = entry.get("ms")
    if not isinstance(ms, dict) or entry["backend"] not in names:
        return None
    known = set(names) | {f"{allowed[0]}{AGAIN}"}
    if not all(k in known and type(v) in (int, float) and math.isfinite(v) and v > 0 for k, v in ms.items()):
        return None
    spec = names[entry["backend"]]
    timings = {str(k): float(v) for k, v in ms.items()}
    eager, chosen = timings.get(str(allowed[0])), timings.get(str(spec))
    reason = f"{eager / chosen:.1f}x eager when measured" if eager and chosen else "no timing kept"
    return Decision(spec, reason, timings, True)


def choose_backend(
    loaded: LoadedModel, model_id: str, size: tuple[int, int], batch: int, device: torch.device,
    make: Callable[[BackendSpec], Denoiser], root: Path,
) -> Decision:  # fmt: skip
    """The cached decision for this model, size, batch and machine, or a new measurement (then cached)."""
    from dip_export.errors import DipError
    from dip_export.io import save_json

    specs = candidates(device)
    path = check_cache(root)
    key = cache_key(model_id, size, batch, device)
    cache = _read_cache(path)
    cached = _valid_entry(key, cache.get(key), specs)
    if cached is not None:
        return cached
    ms = measure(make, specs, loaded, size, batch, device)
    if "torch:fp32" not in ms:
        raise DipError("--backend auto: eager fp32 could not run, so nothing could be compared")
    spec, reason = decide(ms, device)
    if not steady(ms):  # measured while the load changed: used for this run, never remembered
        first, last = ms["torch:fp32"], ms.get(f"torch:fp32{AGAIN}", math.nan)
        return Decision(spec, f"{reason}; not cached: eager took {first:.1f} then {last:.1f} ms (the load changed)", ms)
    cache = _read_cache(path)  # another process may have added entries meanwhile
    entry = {"backend": str(spec), "reason": reason, "ms": ms, "model": model_id, "size": list(size), "batch": batch}
    with contextlib.suppress(OSError, DipError):  # unwritable, or no longer ours: it only costs a new measurement
        cache[key] = _marked_entry(key, entry)  # an unmarked (or forged) entry of this key is replaced
        save_json(path, cache, CACHE_KIND)  # marked as this tool's cache, replaced only while it still is
    return Decision(spec, reason, ms)


def recommend_from_bench(report: dict[str, Any]) -> str | None:
    """dip-bench's closing line: the fastest fp32/bf16/fp16 row of the table (int8 changes pictures)."""
    rows = [
        r for r in report.get("results", [])
        if r.get("status") == "ok" and not r.get("variant") and r.get("precision") in ("fp32", "bf16", "fp16")
        and r.get("speedup_vs_eager") is not None
    ]  # fmt: skip
    if not rows:
        return None
    best = max(rows, key=lambda r: r["speedup_vs_eager"])
    device = torch.device("cuda" if "gpu" in report.get("machine", {}) else "cpu")
    label = f"on {report['machine']['gpu']}" if device.type == "cuda" else hardware_label(device)
    return f"{best['backend']}:{best['precision']}: {best['speedup_vs_eager']:.1f}x eager {label}"
