"""Time to accuracy: how close each solver gets to the converged picture for a number of evaluations.

Every run starts from the same noise. The reference is a third-order solver with many steps whose
step was halved until the two runs agree to 70 dB (`sampling.reference`), computed by the model itself
in eager fp32 and cached under engines/yardstick/, keyed by the model's numbers, settings and seeds and
marked under the owner key as the tool's (a file without that mark is refused, never used); each
solver's final uint8 images are compared with it by PSNR, and on the demo model also by the Frechet
distance of their digit features to the real digits' and by the digit classifier's accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip_export.checkpoint import LoadedModel, is_demo, weights_digest
from dip_export.generate import SamplePlan, generate, make_plan
from dip_export.measure.harness import psnr, timed_call
from dip_export.ownership import MARK, contents_mac, mac_problem, owner_key
from dip_export.sampling import Denoiser, SamplerSettings, initial_noise, sample_counts
from dip_export.sampling import reference as ref_solver
from dip_export.sampling.fitgrid import SearchSettings, fit_grid
from dip_export.sampling.grids import grid_entry
from dip_export.sampling.rules import to_uint8
from dip_export.untrusted import ArraySchema, ArraySpec, UntrustedFileError, read_npz

REFERENCE_STEPS = ref_solver.REFERENCE_STEPS
REFERENCE_AGREEMENT_DB = ref_solver.REFERENCE_AGREEMENT_DB
CACHE = Path("engines") / "yardstick"
RELEASE_STEPS = 100  # the release's Euler steps: the level the solvers are judged by


def release_settings(base: SamplerSettings) -> SamplerSettings:
    """The release's sampler: Euler, 100 steps on its uniform grid, every backbone run, both guidance halves
    always computed (as the release does); the guidance, interval and shift of `base`."""
    return replace(base, method="euler", steps=RELEASE_STEPS, cache_interval=1, token_forecast="off", grid=None,
                   skip_uncond=False)  # fmt: skip


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer images than features make the product singular; the root is still usable
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        root = np.real(linalg.sqrtm(cov_a @ cov_b))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))


DIGIT_FD_MIN_IMAGES = 4  # fewer images give no usable covariance for the digit FD (one gives none at all)


def digit_scores(images: np.ndarray, classes: list[int]) -> dict[str, float]:
    """Digit FD (8x8 features of generated vs real digits) and classifier accuracy, demo model only."""
    from dip_export.digits import digit_accuracy, load_digit_images, to_8x8

    real, _ = load_digit_images(images.shape[1])
    real_u8 = ((real + 1) * 127.5 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return {
        "digit_fd": frechet_distance(to_8x8(images), to_8x8(real_u8)),
        "digit_accuracy": digit_accuracy(images, classes),
    }


@dataclass(frozen=True)
class Yardstick:
    """What every solver is measured on: the model, the images, the guidance and shift."""

    num_samples: int = 40
    seed: int = 0
    cfg: float = 1.5
    shift: float = 1.0
    batch: int = 40
    height: int = 32
    width: int = 32


def _run(
    net: Denoiser, loaded: LoadedModel, plan: SamplePlan, y: Yardstick, settings: SamplerSettings
) -> tuple[np.ndarray, float]:
    images, seconds = timed_call(lambda: generate(
        net, plan, settings, null_class=loaded.config.null_class, height=y.height, width=y.width,
        batch_size=y.batch, device=torch.device("cpu"),
    ), torch.device("cpu"))  # fmt: skip
    return images, seconds / len(plan)


@dataclass(frozen=True)
class ReferenceImages:
    """The cached reference: uint8 images, the float x they round, and its self-check."""

    images: np.ndarray  # (N, H, W, 3) uint8
    x: np.ndarray  # (N, 3, H, W) float32
    label: str  # made here from the steps and the self-check, e.g. "ab3 512 (half the steps: 79.1 dB)"


REFERENCE_KIND = f"{MARK}/yardstick-reference"  # the kind a cached reference's mark names, under the owner key
REFERENCE_FORMAT = 2  # in the key: a reference of an earlier layout is never taken for one of this


def model_identity(loaded: LoadedModel) -> str:
    """sha256 of what defines the model's numbers: its config and every tensor of its state (names, dtypes,
    shapes, bytes). Whatever chose them (a checkpoint's EMA or raw weights, a preset's random ones, a config
    given over the stored one, weights changed in memory) is in it; the file's name is not."""
    return weights_digest(loaded.module(), loaded.config)


def reference_key(loaded: LoadedModel, plan: SamplePlan, y: Yardstick, settings: SamplerSettings, device: torch.device) -> str:
    """The one key of a cached reference (sha256 hex): the model's numbers (`model_identity`), the eager fp32
    evaluator and its device kind, the yardstick, the reference solver's settings, seeds, classes and the
    agreement asked for."""
    fields = {
        "format": REFERENCE_FORMAT, "model": model_identity(loaded), "evaluator": f"torch:fp32:{device.type}",
        "yardstick": y.__dict__, "settings": settings.__dict__, "seeds": list(plan.seeds),
        "classes": list(plan.classes), "agreement_db": REFERENCE_AGREEMENT_DB,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def reference_images(
    loaded: LoadedModel, plan: SamplePlan, y: Yardstick, base: SamplerSettings,
    on_step: Callable[[int], None] | None = None, device: torch.device | None = None,
) -> ReferenceImages:  # fmt: skip
    """The converged reference from the same noise (`sampling.reference`), computed once and cached.

    It is computed by the model itself in eager fp32 (on `device`; None: where its weights are), never by
    the backend being measured, and cached under `reference_key`. A cached file is used only when it carries
    this tool's mark under the owner key for exactly this key and its images are its x rounded; the tool's
    own file for another key is computed again and replaced; any other file is refused before any work,
    never replaced. `on_step`: after every sampler step of the computation (none when cached).
    """
    if device is None:
        device = next(loaded.module().parameters()).device
    settings = ref_solver.reference_settings(base, REFERENCE_STEPS)
    key = reference_key(loaded, plan, y, settings, device)
    path = check_cache_folder() / f"{loaded.name}-{key[:16]}.npz"
    if os.path.lexists(path):
        cached = _read_reference(path, key, (len(plan.seeds), loaded.config.in_channels, y.height, y.width))
        if cached is not None:
            return cached
    from dip_export.runtime.backends import BackendSpec, make_torch_engine

    net = make_torch_engine(BackendSpec("torch", "fp32"), loaded, device)
    noise = initial_noise(plan.seeds, y.height, y.width).to(device)
    labels = torch.tensor(plan.classes, dtype=torch.int64, device=device)
    run = ref_solver.sampled(net, noise, labels, loaded.config.null_class, y.batch, on_step)
    found = ref_solver.converged(run, settings, steps=REFERENCE_STEPS, agreement_db=REFERENCE_AGREEMENT_DB)
    x = found.x.cpu()
    out = ReferenceImages(to_uint8(x), x.numpy().astype(np.float32), _label(found.steps, found.self_check_db))
    _write_reference(path, key, out, found.steps, found.self_check_db)
    return out


def _label(steps: int, self_check_db: float) -> str:
    """What the tables print of a reference: made from its numbers, never text from a file."""
    return f"{ref_solver.REFERENCE_SOLVER} {steps} (half the steps: {self_check_db:.1f} dB)"


def check_cache_folder() -> Path:
    """The cache folder, refused when it is a symlink or not a folder (its files are `contained` in it on reading;
    the artifact folder above it is taken as every cache and export under it takes it)."""
    if CACHE.is_symlink():
        raise UntrustedFileError(f"{CACHE}: the yardstick reference folder is a symlink; refusing to follow it (move it away)")
    if CACHE.exists() and not CACHE.is_dir():
        raise UntrustedFileError(f"{CACHE}: the yardstick reference folder is not a folder (move it away)")
    return CACHE


def _array_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _marked_contents(key: str, images: np.ndarray, x: np.ndarray, steps: int, self_check_db: float) -> dict[str, Any]:
    """What a cached reference's mark covers (ownership.contents_mac, the owner key of export manifests): the
    kind, the key, the bytes of both arrays, the steps and the self-check."""
    return {"written_by": REFERENCE_KIND, "key": key, "images": _array_digest(images), "x": _array_digest(x),
            "steps": steps, "self_check_db": self_check_db}  # fmt: skip


HEX64 = re.compile(r"[0-9a-f]{64}")
REFERENCE_SCHEMA = ArraySchema({
    "images": ArraySpec("uint8", (None, None, None, None)),
    "x": ArraySpec("float32", (None, None, None, None)),
    "steps": ArraySpec("int64", ()),
    "self_check_db": ArraySpec("float64", (), finite=False),  # two runs that agree exactly: infinite
    "key": ArraySpec("<U64", ()),
    "mac": ArraySpec("<U64", ()),
})  # fmt: skip


def _marked(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a cached reference this tool wrote (a valid mark under the owner key over its own key and
    contents); any other file, or one that cannot be read, is refused in one line and left as it is."""
    try:
        data = read_npz(path, folder=check_cache_folder(), what="yardstick reference", check=REFERENCE_SCHEMA)
    except UntrustedFileError as err:
        raise UntrustedFileError(f"{err}; delete it to compute the reference again") from None
    key, mac = str(data["key"]), str(data["mac"])
    contents = _marked_contents(key, data["images"], data["x"], int(data["steps"]), float(data["self_check_db"]))
    if not (HEX64.fullmatch(key) and HEX64.fullmatch(mac)) or mac_problem(contents, mac) is not None:
        raise UntrustedFileError(
            f"{path}: not a yardstick reference this tool wrote (no valid mark under your owner key); "
            "delete it to compute the reference again"
        )
    return data


def _read_reference(path: Path, key: str, shape: tuple[int, int, int, int]) -> ReferenceImages | None:
    """The cached reference for `key` (shape: N, C, H, W of its x); None when the file is this tool's own but
    made for another key (or not self-consistent): it is computed again and replaced."""
    data = _marked(path)
    images, x, steps, db = data["images"], data["x"], int(data["steps"]), float(data["self_check_db"])
    n, c, h, w = shape
    if str(data["key"]) != key or x.shape != shape or images.shape != (n, h, w, c) or math.isnan(db):
        return None
    if not (2 <= steps <= ref_solver.MAX_REFERENCE_STEPS and steps % 2 == 0) or not np.isfinite(x).all():
        return None
    if not np.array_equal(images, to_uint8(torch.from_numpy(x))):
        return None
    return ReferenceImages(images, x, _label(steps, db))


def _write_reference(path: Path, key: str, out: ReferenceImages, steps: int, self_check_db: float) -> None:
    """Written beside and renamed over `path`: an existing file is replaced only while it is still this tool's
    (`_marked`), checked after the work, just before the rename."""
    from dip_export.io import atomic_path

    contents = _marked_contents(key, out.images, out.x, steps, self_check_db)
    mac = contents_mac(contents, owner_key(create=True) or b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=out.images, x=out.x, steps=np.array(steps, np.int64),
                     self_check_db=np.array(self_check_db, np.float64), key=np.array(key, "<U64"),
                     mac=np.array(mac, "<U64"))  # fmt: skip
        if os.path.lexists(path):
            _marked(path)


def plan_runs(samplers: list[str], nfes: list[int], base: SamplerSettings) -> list[SamplerSettings]:
    """The settings of every row, each checked (`SamplerSettings`), in order and once each: Heun makes 2N - 1
    evaluations, so an even count runs as the odd one below it, and two counts that meet give one row."""
    runs: list[SamplerSettings] = []
    for name in samplers:
        for nfe in nfes:
            steps = (nfe + 1) // 2 if name == "heun" else nfe
            settings = replace(base, method=name, steps=max(steps, 1))
            if settings not in runs:
                runs.append(settings)
    return runs


def heun_counts(samplers: list[str], nfes: list[int]) -> str | None:
    """A line saying which asked-for counts Heun runs at another count (None: none)."""
    moved = [n for n in nfes if n > 1 and n % 2 == 0] if "heun" in samplers else []
    if not moved:
        return None
    pairs = ", ".join(f"{n} as {n - 1}" for n in moved[:8]) + (" ..." if len(moved) > 8 else "")
    return f"heun makes 2N - 1 evaluations: its even counts run one below ({pairs})"


def measure(
    net: Denoiser,
    loaded: LoadedModel,
    y: Yardstick,
    samplers: list[str],
    nfes: list[int],
    base: SamplerSettings | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """PSNR against the reference (and digit scores on the demo) per solver and evaluation count."""
    base = base or SamplerSettings(cfg=y.cfg, shift=y.shift)
    base = replace(base, cfg=y.cfg, shift=y.shift, grid=None)  # each solver and count on its default grid
    runs = plan_runs(samplers, nfes, base)  # every run's settings checked before the reference is computed
    plan = make_plan(loaded.config.num_classes, num_samples=y.num_samples, seed=y.seed)
    reference = reference_images(loaded, plan, y, base)
    ref = reference.images
    digits = is_demo(loaded) and y.num_samples >= DIGIT_FD_MIN_IMAGES  # a covariance needs several images
    rows = []
    for settings in runs:
        images, seconds = _run(net, loaded, plan, y, settings)
        counts = sample_counts(settings)
        row = {
            "sampler": settings.method, "steps": settings.steps, "nfe": counts["paired_evals"] + counts["single_evals"],
            "backbone_calls": counts["backbone_calls"], "psnr_db": psnr(images, ref), "s_per_image": seconds,
            "cache_interval": settings.cache_interval, "token_forecast": settings.token_forecast,
        }  # fmt: skip
        if digits:
            row.update(digit_scores(images, plan.classes))
        rows.append(row)
        if progress is not None:
            progress(row)
    out: dict[str, Any] = {"settings": {**y.__dict__, "interval": list(base.interval), "reference": reference.label}}
    out["euler_100_db"] = _euler_100_db(net, loaded, plan, y, base, ref, rows)
    if digits:
        out["reference_scores"] = digit_scores(ref, plan.classes)
    out["results"] = rows
    return out


def _euler_100_db(
    net: Denoiser, loaded: LoadedModel, plan: SamplePlan, y: Yardstick, base: SamplerSettings, ref: np.ndarray,
    rows: list[dict[str, Any]],
) -> float:  # fmt: skip
    """The release's 100-step Euler against the reference: the level the solvers are judged by (measured when not a row)."""
    for r in rows:
        if r["sampler"] == "euler" and r["nfe"] == RELEASE_STEPS and r["cache_interval"] == 1:
            return float(r["psnr_db"])
    images, _ = _run(net, loaded, plan, y, release_settings(base))
    return psnr(images, ref)


def evaluations_to_match(report: dict[str, Any], target_db: float) -> dict[str, int | None]:
    """Per solver, the fewest measured evaluations whose PSNR reaches target_db (None: none did)."""
    best: dict[str, int | None] = {}
    for r in report["results"]:
        best.setdefault(r["sampler"], None)
        if r["psnr_db"] >= target_db:
            cur = best[r["sampler"]]
            best[r["sampler"]] = r["nfe"] if cur is None else min(cur, r["nfe"])
    return best


def plot(report: dict[str, Any], path: Path) -> None:
    """PSNR against evaluations (log axis), one line per solver, Euler-100's level marked."""
    from dip_export.measure.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name in dict.fromkeys(r["sampler"] for r in report["results"]):
        rows = sorted((r for r in report["results"] if r["sampler"] == name), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rows], [min(r["psnr_db"], 99.0) for r in rows], marker="o", label=name)
    level = report.get("euler_100_db")
    if level is not None and np.isfinite(level):
        ax.axhline(level, color="black", ls="--", lw=1)
        ax.annotate(f"Euler-100: {level:.1f} dB", (0.01, level), xycoords=("axes fraction", "data"), xytext=(0, 4),
                    textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    nfes = sorted({r["nfe"] for r in report["results"]})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("network evaluations per image (log scale)")
    ax.set_ylabel(f"PSNR vs {report['settings']['reference']}, dB")
    s = report["settings"]
    ax.set_title(f"guidance {s['cfg']}, shift {s['shift']}, {s['num_samples']} images" + (
        f", {s['backend']}" if "backend" in s else ""))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


TRAIN_SEED_BASE = 1_000_000  # training seeds of a grid fit: far from the held-out seeds 0..N-1 the tables use


@dataclass(frozen=True)
class GridFit:
    """What `dip-export schedule` fits: a solver's grid at an evaluation count for one guidance and shift."""

    sampler: str = "ab2"
    nfe: int = 15
    cfg: float = 1.5
    shift: float = 1.0
    band: tuple[float, float] | None = None  # guidance weights the grid is stored for; None: cfg / 1.25 .. cfg * 1.25
    train_images: int = 64
    heldout_images: int = 32
    search: SearchSettings = field(default_factory=SearchSettings)
    score: str = "pooled"  # ref_solver.fit_score on the training images

    def start(self) -> SamplerSettings:
        """The settings the grid is fitted for (the default grid)."""
        return SamplerSettings(steps=self.nfe, cfg=self.cfg, shift=self.shift, method=self.sampler)

    def stored_band(self) -> tuple[float, float]:
        return self.band if self.band is not None else (round(self.cfg / 1.25, 4), round(self.cfg * 1.25, 4))


def fit_schedule(
    net: Denoiser, loaded: LoadedModel, fit: GridFit, size: tuple[int, int], batch: int, on_trial: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the grid on training seeds against the reference; (stored entry, report with held-out PSNR)."""
    base = fit.start()
    first_seed = TRAIN_SEED_BASE + 1000 * fit.search.seed
    train = Yardstick(fit.train_images, first_seed, fit.cfg, fit.shift, min(batch, fit.train_images), *size)
    train_plan = make_plan(loaded.config.num_classes, num_samples=train.num_samples, seed=train.seed)
    target = torch.from_numpy(reference_images(loaded, train_plan, train, base).x)
    noise = initial_noise(train_plan.seeds, *size)
    run = ref_solver.sampled(net, noise, torch.tensor(train_plan.classes), loaded.config.null_class, train.batch)
    result = fit_grid(base, lambda s: ref_solver.fit_score(fit.score, run(s), target), fit.search, on_trial)
    fitted = result.settings
    held = Yardstick(fit.heldout_images, 0, fit.cfg, fit.shift, min(batch, fit.heldout_images), *size)
    plan = make_plan(loaded.config.num_classes, num_samples=held.num_samples, seed=held.seed)
    reference = reference_images(loaded, plan, held, base)
    release = release_settings(base)
    scores = {name: psnr(_run(net, loaded, plan, held, s)[0], reference.images) for name, s in
              (("default_grid_db", base), ("fitted_grid_db", fitted), ("euler_100_db", release))}  # fmt: skip
    info = {
        "train_seeds": [train.seed, train.seed + train.num_samples - 1], "heldout_images": held.num_samples,
        "train_float_db": [round(result.first, 2), round(result.best, 2)], "search_seed": fit.search.seed,
        "score": fit.score,
        "trials": result.trials, "below": result.point.below, "shape": [round(v, 4) for v in result.point.shape],
        "reference": reference.label,
        **{k: round(v, 2) for k, v in scores.items()},
    }  # fmt: skip
    return grid_entry(fitted, fit.stored_band(), info), info
