"""Calibration data from the model's own sampler trajectories, cached on disk with its settings.

The sampler runs eager PyTorch fp32 over all steps for N samples with random classes and guidance
(so the null class is seen); every backbone call's (x, t, y) and detailer call's (x, tokens) are
recorded, and a subset evenly spread over the timesteps is kept. The cache is marked under the owner key
as the tool's (`ownership.contents_mac`, as the yardstick reference and the resume shards are): a file
without a valid mark is refused, never used nor replaced; the tool's own file made for another key is
calibrated again and replaced; a cache that is used is said so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dip_export.checkpoint import LoadedModel
from dip_export.errors import DipError
from dip_export.io import atomic_path
from dip_export.messages import say
from dip_export.ownership import MARK, contents_mac, mac_problem, owner_key
from dip_export.sampling import Denoiser, SamplerSettings, initial_noise, sample
from dip_export.untrusted import ArraySchema, ArraySpec, UntrustedFileError, read_npz

_NAMES = {"backbone": ("x", "t", "y"), "detailer": ("x", "tokens")}


@dataclass(frozen=True)
class CalibrationSettings:
    samples: int = 4  # images sampled for calibration (x2 rows: CFG records both halves)
    steps: int = 20  # sampler steps of the calibration trajectories
    cfg: float = 4.0  # guidance during calibration (>1 so the null class is recorded)
    keep_steps: int = 8  # timesteps kept, evenly spread over the trajectory
    seed: int = 1234  # seeds and classes of the calibration samples

    def digest(self, loaded: LoadedModel, size: tuple[int, int]) -> str:
        """sha256 hex of these settings, the model's identity (content, weights taken, config) and the size: the
        key a cache's mark covers."""
        text = json.dumps([asdict(self), loaded.identity, list(size)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def key(self, loaded: LoadedModel, size: tuple[int, int]) -> str:
        """The cache's name: the start of `digest`."""
        return self.digest(loaded, size)[:12]


class _Recorder:
    def __init__(self, net: Denoiser) -> None:
        self.net = net
        self.backbone_calls: list[dict[str, np.ndarray]] = []
        self.detailer_calls: list[dict[str, np.ndarray]] = []

    def backbone(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        self.backbone_calls.append({"x": x.numpy().copy(), "t": t.numpy().copy(), "y": y.numpy().copy()})
        return self.net.backbone(x, t, y)

    def detailer(self, x: Tensor, tokens: Tensor) -> Tensor:
        self.detailer_calls.append({"x": x.numpy().copy(), "tokens": tokens.numpy().copy()})
        return self.net.detailer(x, tokens)


def _even(items: list[dict[str, np.ndarray]], keep: int) -> list[dict[str, np.ndarray]]:
    if len(items) <= keep:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, keep).round().astype(int)]


def collect(loaded: LoadedModel, size: tuple[int, int], settings: CalibrationSettings) -> dict[str, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(settings.seed)
    seeds = [settings.seed + i for i in range(settings.samples)]
    classes = torch.from_numpy(rng.integers(0, loaded.config.num_classes, settings.samples))
    recorder = _Recorder(loaded.module())
    sampler = SamplerSettings(steps=settings.steps, cfg=settings.cfg, skip_uncond=False)
    sample(recorder, initial_noise(seeds, *size), classes, loaded.config.null_class, sampler)
    return {
        "backbone": _even(recorder.backbone_calls, settings.keep_steps),
        "detailer": _even(recorder.detailer_calls, settings.keep_steps),
    }


def cache_path(loaded: LoadedModel, size: tuple[int, int], settings: CalibrationSettings, cache_dir: Path) -> Path:
    return cache_dir / f"calib-{settings.key(loaded, size)}.npz"


def check_cache(loaded: LoadedModel, size: tuple[int, int], settings: CalibrationSettings, cache_dir: Path) -> None:
    """Before any export starts: the cache folder is absent or a plain folder, and a cache file this run would
    read is checked whole now (a symlink, bad content, no valid mark), not after the fp32 export and the
    calibration."""
    if cache_dir.is_symlink() or (cache_dir.exists() and not cache_dir.is_dir()):
        raise DipError(f"{cache_dir}: the calibration cache folder is not a plain folder (move it away)")
    path = cache_path(loaded, size, settings, cache_dir)
    if os.path.lexists(path):
        _read_cache(path, loaded, size, settings)


def load_or_collect(
    loaded: LoadedModel, size: tuple[int, int], settings: CalibrationSettings, cache_dir: Path, console: object = None
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration batches per sub-model; reused from `cache_dir` when the tool's own cache for exactly these
    settings, model and size is there (said on `console`), else collected and cached with its mark."""
    path = cache_path(loaded, size, settings, cache_dir)
    if os.path.lexists(path):
        cached = _read_cache(path, loaded, size, settings)
        if cached is not None:
            say(console, f"using the cached calibration {path}")
            return cached
    batches = collect(loaded, size, settings)
    arrays: dict[str, np.ndarray] = {}
    for role, items in batches.items():
        arrays[f"{role}/count"] = np.array(len(items))
        for i, item in enumerate(items):
            arrays.update({f"{role}/{i}/{k}": v for k, v in item.items()})
    key = settings.digest(loaded, size)
    mac = contents_mac(_marked_contents(key, arrays), owner_key(create=True) or b"")
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:
            np.savez(f, **arrays, key=np.array(key, "<U64"), mac=np.array(mac, "<U64"))  # type: ignore[arg-type]
        if os.path.lexists(path):  # replaced only while it is still the tool's, checked just before the rename
            _read_cache(path, loaded, size, settings)
    return batches


CACHE_KIND = f"{MARK}/calibration-cache"  # the kind a cache's mark names, under the owner key
HEX64 = re.compile(r"[0-9a-f]{64}")
_MARK_ARRAYS = ("key", "mac")


def _array_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _marked_contents(key: str, arrays: Mapping[str, np.ndarray]) -> dict[str, object]:
    """What a cache's mark covers (ownership.contents_mac under the owner key, as the yardstick reference and the
    resume shards): the kind, the key (`CalibrationSettings.digest`) and every array's name, dtype, shape and bytes."""
    listed = {name: _array_digest(a) for name, a in sorted(arrays.items()) if name not in _MARK_ARRAYS}
    return {"written_by": CACHE_KIND, "key": key, "arrays": listed}


def _cache_schema(loaded: LoadedModel, size: tuple[int, int], settings: CalibrationSettings) -> ArraySchema:
    """What a calibration cache of this model, size and settings holds: per kept call its inputs, in order."""
    c = loaded.config
    rows = None  # 2 x samples inside the guidance interval, samples outside it
    inputs = {
        "x": ArraySpec("float32", (rows, c.in_channels, *size)),
        "t": ArraySpec("float32", (rows,)),
        "y": ArraySpec("int64", (rows,)),
        "tokens": ArraySpec("float32", (rows, (size[0] // c.patch_size) * (size[1] // c.patch_size), c.hidden_size)),
    }

    def consistent(data: Mapping[str, np.ndarray]) -> str | None:
        counts = {role: int(data[f"{role}/count"]) for role in _NAMES}
        if not all(1 <= n <= settings.keep_steps for n in counts.values()):
            return f"holds more calls than the {settings.keep_steps} kept, or none"
        calls = [[data.get(f"{role}/{i}/{k}") for k in names] for role, names in _NAMES.items() for i in range(counts[role])]
        marks = sum(name in data for name in _MARK_ARRAYS)
        if len(data) != marks + len(counts) + sum(map(len, calls)) or any(a is None for call in calls for a in call):
            return "holds calls that do not match its counts"
        if any(len({len(a) for a in call if a is not None}) != 1 for call in calls):
            return "holds a call whose inputs differ in batch size"
        if any(((y < 0) | (y > c.null_class)).any() for y in (data[f"backbone/{i}/y"] for i in range(counts["backbone"]))):
            return "holds a class label out of range"
        return None

    return ArraySchema(
        {f"{role}/count": ArraySpec("int64", ()) for role in _NAMES},
        {  # the mark's two arrays are looked for after the read, so that a file without them is named unmarked
            **{rf"{role}/[0-9]{{1,6}}/{k}": inputs[k] for role, names in _NAMES.items() for k in names},
            **{name: ArraySpec("<U64", ()) for name in _MARK_ARRAYS},
        },
        consistent,
    )


def _read_cache(
    path: Path, loaded: LoadedModel, size: tuple[int, int], settings: CalibrationSettings
) -> dict[str, list[dict[str, np.ndarray]]] | None:
    """A calibration cache found on disk: every array checked, and its mark a valid one under the owner key over
    its key and arrays; a damaged or unmarked one is refused in one line naming it, never used nor replaced. None:
    the tool's own cache made for another key (the settings, model or size of another run), calibrated again."""
    try:
        data = read_npz(path, folder=path.parent, what="calibration cache", check=_cache_schema(loaded, size, settings))
    except UntrustedFileError as err:
        raise UntrustedFileError(f"{err}; delete it to calibrate again") from None
    key, mac = (str(data.get(name, "")) for name in _MARK_ARRAYS)
    if not (HEX64.fullmatch(key) and HEX64.fullmatch(mac)) or mac_problem(_marked_contents(key, data), mac) is not None:
        raise UntrustedFileError(
            f"{path}: not a calibration cache this tool wrote (no valid mark under your owner key: made by hand, by "
            "another user or an older version, or changed since); delete it to calibrate again"
        )
    if key != settings.digest(loaded, size):
        return None
    return {
        role: [{k: data[f"{role}/{i}/{k}"] for k in names} for i in range(int(data[f"{role}/count"]))]
        for role, names in _NAMES.items()
    }
