"""The public Python API: `DiPPipeline.load(...)` then `pipe(classes=..., seeds=...)`.

```python
from dip_export import DiPPipeline

pipe = DiPPipeline.load()                                   # the bundled demo model
images = pipe(classes=[1, 7], seeds=[0, 1], steps=25)       # uint8 (N, H, W, 3)
```

Model sources, as everywhere in the toolkit: a checkpoint file, an export folder (ONNX Runtime or
TensorRT), a preset name (random weights), a Hugging Face Hub repo (`org/name[/FILE]`), or nothing
(the demo). The commands are thin callers of this class, so the same arguments give the same images
as `dip-sample`. Engines (and the exports they need) come from `dip_export.engines`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dip_export.checkpoint import LoadedModel, weights_signature
from dip_export.config import DiPConfig
from dip_export.engines import make_engine, open_export
from dip_export.errors import DipError, UsageError
from dip_export.generate import SamplePlan, check_image_size, generate, make_plan, parse_image_size
from dip_export.runtime.backends import BackendSpec
from dip_export.sampling import Denoiser, SamplerSettings
from dip_export.sampling.rules import checked_settings
from dip_export.settings import (
    BUILD_TARGETS,
    MAX_BATCH,
    MAX_IMAGE_SIDE,
    MAX_SAMPLES,
    MAX_SEED,
    SAMPLE_RULES,
    ImageSize,
    check_options,
    exact_int,
    exact_str,
    given_options,
    name_text,
    one_of,
    optional_bool,
    optional_callable,
    optional_text,
    path_text,
    plain_items,
    plain_value,
    run_conditions,
    trust_flag,
)
from dip_export.untrusted import MAX_NAME_BYTES, MAX_PATH_BYTES

ProgressCallback = Callable[[int, int], None]  # (steps done, steps in all) over every batch
OVERRIDE_ALIASES = {"sampler": "method", "guidance_interval": "interval"}  # the API's and CLI's names


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: exactly one of `export_dir` and `loaded` is set."""

    name: str  # short name (folders, tables)
    config: DiPConfig
    sampling: dict[str, Any]  # the model's recommended sampler settings
    loaded: LoadedModel | None = None
    path: Path | None = None  # the checkpoint file or export folder (None: demo or preset)
    export_dir: Path | None = None
    export_size: tuple[int, int] | None = None  # an export's fixed image size
    export_precision: str | None = None
    export_target: str = "onnx"  # the runtime an export's graphs were made for: onnx, or trt (`--target trt`)
    weights: str = "ema"
    export_identity: str = ""  # an export's content as its graphs were read and checked (`Manifest.identity`)

    def __post_init__(self) -> None:
        """A source made by hand holds what `DiPPipeline.load` would have put there, or is refused in one line."""
        self.check()

    def check(self) -> None:
        """`__post_init__`'s checks, made again where a pipeline uses the source (`plan`, `engine`): a field set
        around the frozen setter since is refused as one given at creation."""
        if (self.loaded is None) == (self.export_dir is None):
            raise UsageError("a ModelSource holds exactly one of `loaded` and `export_dir`; make one with DiPPipeline.load(...)")
        kinds = {"name": str, "config": DiPConfig, "sampling": dict, "weights": str, "export_target": str}
        kinds |= {"loaded": LoadedModel} if self.loaded is not None else {"export_dir": Path}
        for field, kind in kinds.items():
            if not isinstance(getattr(self, field), kind):
                raise UsageError(f"a ModelSource's {field} must be a {kind.__name__}, got {type(getattr(self, field)).__name__}")
        if self.loaded is not None and self.config != self.loaded.config:  # what it says it runs is what it runs
            raise UsageError("a ModelSource's config is not its loaded model's; make one with DiPPipeline.load(...)")
        if self.export_dir is not None and (self.export_size is None or self.export_precision is None):
            raise UsageError("a ModelSource of an export folder names its image size and precision; use DiPPipeline.load(...)")
        one_of(self.weights, "a ModelSource's weights", ("ema", "raw"))
        one_of(self.export_target, "a ModelSource's export_target", BUILD_TARGETS)
        if self.export_dir is not None and self.export_size is not None:
            from dip_export.export.manifest import PRECISIONS
            from dip_export.generate import check_image_size, parse_image_size

            one_of(self.export_precision, "a ModelSource's export_precision", PRECISIONS)
            size = parse_image_size(self.export_size)
            check_image_size(*size, self.config.patch_size)
            object.__setattr__(self, "export_size", size)  # one form: (height, width)
        from dip_export.config import check_sampling_defaults

        try:  # the stored defaults a file would hold, checked as a file's are
            check_sampling_defaults(self.sampling)
        except (UsageError, ValueError, TypeError) as err:
            raise UsageError(f"a ModelSource's sampling defaults are refused: {err}") from None

    def checked_sampling(self) -> dict[str, Any]:
        """The stored sampling defaults, checked again where they are used: a dict is changed in place past any
        check made when it was set."""
        from dip_export.config import check_sampling_defaults

        try:
            check_sampling_defaults(self.sampling)
        except (UsageError, ValueError, TypeError) as err:
            raise UsageError(f"the model's sampling defaults were changed since it was loaded and are refused: {err}") from None
        return self.sampling

    @functools.cached_property
    def identity(self) -> str:
        """What the model *is*, by content: the sha256 of the checkpoint, or an export's as its graphs were read
        (`Manifest.identity`: every file's sha256, checked as the graphs were read; an engine made later is made
        of those same files, or refused: `engines.open_export`).

        A checkpoint's is computed on first use only (resume, --backend auto): a multi-GB file takes seconds to hash.
        """
        if self.export_dir is not None:
            if not self.export_identity:  # made by hand: the export as first read, which every engine must then be
                from dip_export.export.manifest import read_manifest

                object.__setattr__(self, "export_identity", read_manifest(self.export_dir).identity)
            return "export:" + self.export_identity
        assert self.loaded is not None
        file = Path(self.loaded.source)
        if self.loaded.stamp is None and not file.is_file():  # a preset: random weights from a fixed seed
            return f"{self.loaded.source}:seed0"
        return f"{self.loaded.source_sha256()}:{self.weights}"


_REVISION = re.compile(r"[A-Za-z0-9][\w./-]{0,254}", re.ASCII)  # a Hub branch, tag, commit or refs/pr/N


def _plain_ref(revision: str) -> bool:
    """A name git would take as a ref (and nothing a URL could read as more): no '..', '//', a last '/' or '.',
    no part ending in '.lock'."""
    return (
        bool(_REVISION.fullmatch(revision)) and ".." not in revision and "//" not in revision
        and not revision.endswith(("/", ".")) and not any(part.endswith(".lock") for part in revision.split("/"))
    )  # fmt: skip


def model_text(model: Any) -> str:
    """A model argument as text: a path (str or os.PathLike) or a Hub name; nothing else, and never empty."""
    text = path_text(model, "model", "a path or a Hub name")
    if not text.strip():
        raise UsageError("model must be a path or a Hub name: got empty text (blank)")
    try:
        raw = os.fsencode(text)
    except UnicodeError:
        raw = b""  # said by the reader of the path
    if len(raw) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in raw.split(b"/")):
        raise UsageError(f"model must be a path or a Hub name: a name in it is longer than the file system allows "
                         f"({MAX_NAME_BYTES} bytes a name, {MAX_PATH_BYTES} a path)")  # fmt: skip
    return text


def model_argument(model: Any) -> str | Path | None:
    """The model argument read once: text stays text (a path or a Hub name), a path-like becomes a Path (local by
    its type: never a Hub name, whatever it reads)."""
    if model is None:
        return None
    text = model_text(model)
    return text if issubclass(type(model), str) else Path(text)


def hub_model_name(text: str, revision: str | None = None) -> str:
    """The name a Hub checkpoint's exports are made under, one per file and revision: org/name -> org--name,
    org/name/sub/model.pt -> org--name--sub--model.pt, with --revision v1 -> org--name@v1. Repo names hold no
    '--'; a file path that does (or an '@') gets a short digest of the whole reference, so no two share a name."""
    name = "--".join(text.split("/"))
    if revision is not None:
        name += "@" + revision.replace("/", "~")  # '~' is no character of a ref: still one name per revision
    if "--" in "/".join(text.split("/")[2:]) or "@" in text:
        name += "-" + hashlib.sha256(f"{text}\0{revision}".encode()).hexdigest()[:8]
    return name


def _export_source(
    text: str, target: Path, checkpoint_options: bool, check: Callable[[DiPConfig, tuple[int, int]], None] | None
) -> ModelSource:
    """An export folder as a model source: its manifest read and checked (`check` at the export's own image size,
    whatever its config's native one); options that go with a checkpoint file are refused, and so is an owner key
    path inside the folder (an export holds only the files its manifest lists)."""
    from dip_export.export.manifest import check_is_export, read_manifest
    from dip_export.ownership import check_key_apart

    check_is_export(target)  # a folder with no manifest is no export: nothing else about it is worth saying
    if checkpoint_options:
        raise UsageError(f"{text} is an export folder: --weights and --trust-checkpoint go with a checkpoint file")
    check_key_apart([("the export folder", target)])  # the key, made during the run, would become a file of the export's
    manifest = read_manifest(target)
    if check is not None:
        check(manifest.config, manifest.image_size)
    return ModelSource(
        name=manifest.name, config=manifest.config, sampling=dict(manifest.sampling), path=target, export_dir=target,
        export_size=manifest.image_size, export_precision=manifest.precision, export_target=manifest.target,
        export_identity=manifest.identity,
    )  # fmt: skip


def open_source(
    model: str | Path | None = None,
    *,
    preset: str | None = None,
    weights: str | None = None,
    trust_checkpoint: bool = False,
    revision: str | None = None,
    check: Callable[[DiPConfig, tuple[int, int]], None] | None = None,
) -> ModelSource:
    """Resolve a model argument: export folder, checkpoint file, Hub name, preset or the demo.

    `check` is called with the model's config before the model is built or its tensors are read
    (a caller's memory estimate); an export folder's config is checked from its manifest.
    """
    from dip_export.checkpoint import as_typed, read_failure

    try:
        return _open_source(model, preset, weights, trust_checkpoint, revision, check)
    except DipError as err:  # messages name the model as typed (`org//x.pt/`), not as a normalised path
        if isinstance(model, str) and model:
            raise as_typed(err, str(Path(model)), model) from None
        raise
    except OSError as err:  # a disk or mount that fails mid-read
        raise read_failure(err, model_text(model) if model is not None else "the model") from None


def _open_source(
    model: str | Path | None,
    preset: str | None,
    weights: str | None,
    trust_checkpoint: bool,
    revision: str | None,
    check: Callable[[DiPConfig, tuple[int, int]], None] | None,
) -> ModelSource:
    from dip_export.checkpoint import resolve_model
    from dip_export.hub import looks_like_hub_name, resolve_hub_checkpoint

    if weights is not None:  # given: it must apply (a checkpoint holding both); None: ema where there is a choice
        weights = one_of(weights, "--weights", ("ema", "raw"))
    trust_checkpoint = trust_flag(trust_checkpoint)
    if preset is not None:  # a name, checked before any Hub request or file read; plain text from here on
        from dip_export.config import get_preset

        preset = exact_str(preset)
        get_preset(preset)
        if model is not None:  # a preset is a whole model (random weights): never a config laid over a file's
            raise UsageError(f"give a model (checkpoint, export folder or Hub name) or --preset {preset}, not both")
    if revision is not None:
        revision = exact_str(revision)
        if not isinstance(revision, str):
            raise UsageError(f"revision must be text (a branch, tag or commit), got {type(revision).__name__}")
    target: Path | None = None
    if model is not None:
        text = model_text(model)
        hub = not isinstance(model, os.PathLike) and looks_like_hub_name(text)  # a Path is local by its type
        if revision is not None and not hub:
            raise UsageError(f"--revision goes with a Hugging Face Hub name (org/name); {text} is a local path")
        if revision is not None and not _plain_ref(revision):
            raise UsageError("--revision must be a branch, tag or commit name (letters, digits, '.', '_', '-', '/')")
        if not hub:
            from dip_export.export.manifest import settle_export_swap

            settle_export_swap(text)  # an export a killed swap left as its backup is back in place before it is read
        target = resolve_hub_checkpoint(text, revision) if hub else Path(text)
        if target.is_dir():
            return _export_source(text, target, weights is not None or trust_checkpoint, check)
    elif revision is not None:
        raise UsageError("--revision goes with a Hugging Face Hub name (org/name)")
    loaded = resolve_model(target, preset, weights=weights, trust=trust_checkpoint, check=check)
    if model is not None and hub:  # named after the repo, not the file (most Hub checkpoints are model.safetensors)
        loaded.name = hub_model_name(text, revision)
    return ModelSource(
        loaded.name, loaded.config, dict(loaded.sampling), loaded=loaded, path=target, weights=weights or "ema",
    )  # fmt: skip


@dataclass(frozen=True)
class LoadRequest:
    """The checked arguments of `DiPPipeline.load`: exact types, and what can be refused before a file is read."""

    device: torch.device
    backend: str | None
    revision: str | None
    trust: bool
    image_size: tuple[int, int] | None
    batch_size: int
    num_samples: int
    folder: bool = False  # the model is an export folder (no export is made from it)

    @classmethod
    def checked(cls, model: Any, *, backend: Any, device: Any, trust_checkpoint: Any, revision: Any, image_size: Any,
                batch_size: Any, num_samples: Any, console: Any) -> LoadRequest:  # fmt: skip
        dev = checked_device(device)
        _check_console(console)
        request = cls(
            dev, optional_text(backend, "backend", 64), optional_text(revision, "revision"),
            trust_flag(trust_checkpoint),
            None if image_size is None else parse_image_size(image_size),  # 0, "" and False are not "the default"
            exact_int(batch_size, "batch_size", 1, MAX_BATCH), exact_int(num_samples, "num_samples", 1, MAX_SAMPLES),
        )  # fmt: skip
        exported = model is not None and Path(model_text(model)).is_dir()
        if request.backend is not None and request.backend != "auto":  # its packages and device, before any file is read
            from dip_export.runtime.backends import check_available, check_runs_from

            check_runs_from(BackendSpec.parse(request.backend), export=exported)
            check_available(BackendSpec.parse(request.backend), dev, from_model=not exported)
        return dataclasses.replace(request, folder=exported)

    def fits(self, config: DiPConfig, size: tuple[int, int]) -> None:
        """The whole run's memory, before the model is built (`open_source` calls it with the config it read and the
        source's own image size: an export's fixed one, else the config's)."""
        from dip_export.budget import RunShape, check_run

        h, w = self.image_size or size
        shape = RunShape.sampling(self.batch_size, h, w, self.num_samples)
        check_run(config, shape, self.device, backend=self.backend, export=not self.folder)  # None: torch, or (a
        # folder) its ONNX Runtime, checked once it is read (`check_budget`), before any session

    def size_of(self, source: ModelSource) -> tuple[int, int]:
        """The image size calls default to: an export's own, else the one asked for, else the config's."""
        size = source.export_size or self.image_size or parse_image_size(source.config.image_size)
        if source.export_size is not None and self.image_size is not None and self.image_size != source.export_size:
            raise UsageError(f"this export is fixed at {size[0]}x{size[1]}; another --image-size needs a new export")
        check_image_size(*size, source.config.patch_size)
        return size


class FixedSettingError(UsageError, AttributeError):
    """An assignment to a pipeline's setting: they are fixed at load (also an AttributeError, as Python's read-only
    attributes raise)."""


# How to get another value of each read-only attribute of a pipeline (the messages of FixedSettingError).
_HOW_TO_CHANGE = {
    "batch_size": "pass batch_size= to the call, or load again with batch_size=",
    "image_size": "pass image_size= to the call, or load again with image_size=",
    "device": "load again with device=",
    "spec": "load again with backend=",
    "source": "load again with another model",
    "config": "load again with another model",
    "name": "load again with another model",
    "console": "load again with console=",
    "reason": "it says why backend='auto' chose the backend",
}


def _no_other_arguments(extra: tuple[Any, ...], unknown: dict[str, Any]) -> None:
    """`DiPPipeline.load`'s arguments past its own: one line, as for every other bad argument (not a TypeError)."""
    if extra or unknown:
        what = (
            f"{len(extra)} more positional argument(s)"
            if extra
            else "argument(s) " + ", ".join(plain_value(k) for k in sorted(unknown)[:8])
        )
        raise UsageError(f"DiPPipeline.load takes the model and keyword settings; it has no {what}")


def _check_auto_cache(backend: str | None) -> None:
    """`--backend auto`'s cache under engines/, checked before a model is read or a Hub request made (other backends:
    nothing to check)."""
    if backend != "auto":
        return
    from dip_export.export.onnx_export import EXPORT_ROOT
    from dip_export.measure.autobackend import check_cache

    check_cache(EXPORT_ROOT)


class DiPPipeline:
    """A DiP model on one backend and device, ready to turn classes and seeds into images.

    Make one with `DiPPipeline.load(...)`; call it as often as needed: engines (and exports made
    on the fly) are built once per image size and kept. Its settings (`source`, `spec`, `device`,
    `image_size`, `batch_size`, `console`) are fixed at load and read-only: the call takes its own
    `image_size` and `batch_size`, and anything else needs a new load.
    """

    def __init__(self, source: ModelSource, spec: BackendSpec, device: torch.device, console: Any = None, *,
                 image_size: ImageSize | None = None, batch_size: int = 16) -> None:  # fmt: skip
        if type(source) is not ModelSource or type(spec) is not BackendSpec:  # never a lying __class__ or a subclass
            raise UsageError("DiPPipeline takes a ModelSource and a BackendSpec; make one with DiPPipeline.load(...)")
        if not isinstance(device, torch.device):
            raise UsageError(f"device must be a torch.device, got {type(device).__name__}")
        _check_console(console)
        device = checked_device(device)  # the checks load() applies, for a pipeline made by hand too
        spec = checked_backend(source, spec, device)
        self._source = source
        self._spec = spec
        self._device = device
        self._console = console
        self._reason = ""  # why this backend (set by backend="auto")
        self._batch_size = exact_int(batch_size, "batch_size", 1, MAX_BATCH)
        default = source.export_size or parse_image_size(source.config.image_size)
        self._image_size = self._size(default if image_size is None else image_size)  # an export's size is fixed
        self._auto_pending = False
        self._engines: dict[tuple[Any, ...], Denoiser] = {}
        if source.loaded is not None:  # last: a refused pipeline holds nothing
            source.loaded.hold(device)  # its engines move the module to this device: never under another pipeline

    def __setattr__(self, name: str, value: Any) -> None:
        """Private state and methods (as test doubles replace them) may be set; a setting or a new name may not."""
        if name.startswith("_") or _is_method(name):
            object.__setattr__(self, name, value)
            return
        raise _fixed(name)

    def __delattr__(self, name: str) -> None:
        if name.startswith("_") or (_is_method(name) and name in vars(self)):
            object.__delattr__(self, name)
            return
        raise _fixed(name)

    @property
    def source(self) -> ModelSource:
        """Where the model comes from (its config, weights or export folder, stored sampler settings)."""
        return self._source

    @property
    def spec(self) -> BackendSpec:
        """The backend calls run on (for backend="auto": a placeholder until the first call decides)."""
        return self._spec

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def console(self) -> Any:
        """The rich Console for export progress and messages (None: quiet)."""
        return self._console

    @property
    def reason(self) -> str:
        """Why this backend (set by backend="auto"; empty otherwise)."""
        return self._reason

    @property
    def image_size(self) -> tuple[int, int]:
        """The image size calls default to (an export's own, else load's image_size, else the config's)."""
        return self._image_size

    @property
    def batch_size(self) -> int:
        """Images per sampler batch when the call does not give batch_size."""
        return self._batch_size

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *extra: Any,
        preset: str | None = None,
        backend: str | None = None,
        device: str | torch.device = "auto",
        weights: str | None = None,
        trust_checkpoint: bool = False,
        revision: str | None = None,
        image_size: ImageSize | None = None,
        batch_size: int = 16,
        num_samples: int = 1,
        console: Any = None,
        **unknown: Any,
    ) -> DiPPipeline:
        """Open a model and pick its backend.

        Args:
            model: checkpoint file, export folder, Hub repo `org/name[/FILE]`, or None for the demo.
            preset: random-weight architecture (dip-xl-16, dip-l-16, dip-b-16, dip-s-16).
            backend: `torch[:bf16]`, `compile[:bf16]`, `onnx[:int8]`, `trt[:fp16|int8]` or `auto`
                (the fastest fp32/bf16 backend of this machine, measured once and cached).
                Default: torch for a checkpoint, onnx for an export folder.
            device: auto, cpu, cuda (or a torch.device).
            weights: ema or raw (training checkpoints with both; None: ema where a file holds both).
            trust_checkpoint: allow a pickle that needs to run code (only for files you trust).
            revision: Hub branch, tag or commit (with a Hub name).
            image_size: default image size of calls: N, "HxW" or (H, W) (an export's size is fixed).
            batch_size: images per sampler batch; also the batch `auto` measures and TensorRT's profile.
            num_samples: images the run will keep; the memory estimate counts them before the model is built.
            console: a rich Console for export progress and messages (None: quiet).
        """
        _no_other_arguments(extra, unknown)
        model = model_argument(model)  # a PathLike's own __fspath__ runs once, here
        request = LoadRequest.checked(
            model, backend=backend, device=device, trust_checkpoint=trust_checkpoint, revision=revision,
            image_size=image_size, batch_size=batch_size, num_samples=num_samples, console=console,
        )  # fmt: skip
        _check_auto_cache(request.backend)  # before a model is read or a Hub request made
        source = open_source(
            model, preset=preset, weights=weights, trust_checkpoint=request.trust, revision=request.revision, check=request.fits,
        )  # fmt: skip
        auto = request.backend == "auto"  # decided on first use (engine()), after the caller's cheap checks; until then
        # torch for a checkpoint, and what an export folder holds (refused now if that cannot run)
        spec = _backend_for(source, None if auto else request.backend)  # the constructor checks it against the device
        pipe = cls(source, spec, request.device, console, image_size=request.size_of(source), batch_size=request.batch_size)
        pipe._auto_pending = auto
        pipe.check_budget(request.num_samples)
        return pipe

    def check_budget(
        self, samples: int = 1, batch: int | None = None, size: ImageSize | None = None, backend: str | None = None
    ) -> None:
        """Refuse, before any allocation, a run whose memory estimate exceeds what this machine has: on its backend
        (`backend`, else this pipeline's; backend="auto" not yet chosen: its costliest candidate), with the ONNX export
        a checkpoint on onnx / trt makes first. `size` as `generate` takes it (None: this pipeline's)."""
        from dip_export.budget import RunShape, check_run

        # public: each argument checked as the calls check theirs, so an estimate is never of nonsense
        samples = exact_int(samples, "samples", 1, MAX_SAMPLES)
        backend = exact_str(backend)  # a caller's str subclass: its own methods never run
        batch = self.batch_size if batch is None else exact_int(batch, "batch", 1, MAX_BATCH)
        h, w = self._size(size)
        if backend is not None and not (type(backend) is str and backend == "auto"):  # auto: its costliest candidate
            # (the type first: a caller's object is never compared, its own __eq__ may raise)
            BackendSpec.parse(backend)  # the parser every surface uses: text, a known name and precision
        on_cpu = self.device.type == "cpu" and self.source.loaded is not None  # the torch model is in RAM already
        resident = on_cpu or bool(self._engines)  # what free memory reads now has the weights taken off
        shape = RunShape.sampling(batch, h, w, samples)  # the batch really run: at most `samples`
        name = backend or ("auto" if self._auto_pending else self.spec.name)
        export = self.source.loaded is not None and not self._engines  # an export is made on the fly, if any
        check_run(self.config, shape, self.device, resident=resident, backend=name, export=export)

    @property
    def config(self) -> DiPConfig:
        return self.source.config

    @property
    def name(self) -> str:
        return self.source.name

    def choose_backend(self) -> BackendSpec:
        """The backend calls will use (for backend="auto": measured now, or read from the cache)."""
        if self._auto_pending:
            self._choose_auto(self.image_size, self.batch_size)
            self._auto_pending = False
        return self.spec

    def _choose_auto(self, size: tuple[int, int], batch: int) -> None:
        from dip_export.export.onnx_export import EXPORT_ROOT
        from dip_export.measure.autobackend import choose_backend

        if self.source.loaded is None:  # an export folder runs on what it holds
            self._spec = _backend_for(self.source, None)
            self._reason = f"{self.spec}: an export folder runs on ONNX Runtime (TensorRT by name)"
            return
        decision = choose_backend(
            self.source.loaded, self.source.identity, size, batch, self.device,
            make=lambda spec: self._make(spec, size, batch), root=EXPORT_ROOT,
        )  # fmt: skip
        self._spec = decision.spec
        cached = f"{decision.spec}: cached decision, from an earlier run ({decision.reason})"
        self._reason = cached if decision.cached else decision.reason  # a cached claim is not this run's timing
        self._engines.clear()  # the candidates' engines were for measuring only

    def _make(self, spec: BackendSpec, size: tuple[int, int], batch: int) -> Denoiser:
        if self.source.export_dir is not None:
            identity = self.source.identity.removeprefix("export:")  # what was read at load (or now, for the first time)
            return open_export(spec, self.source.export_dir, self.device, identity=identity)
        assert self.source.loaded is not None
        console = self.console if self.console is not None else quiet_console()  # None: nothing printed, by any stage
        return make_engine(spec, self.source.loaded, size, self.device, console, batch=batch)

    def engine(self, size: tuple[int, int] | None = None, batch: int | None = None) -> Denoiser:
        """The engine for an image size (made once; exports happen here, cached under engines/)."""
        self.source.check()
        if size is not None:
            pair = plain_items(size, "size", 2) if issubclass(type(size), tuple | list) else None
            if pair is None or len(pair) != 2:
                raise UsageError(f"size must be (height, width), got {type(size).__name__}")
            size = self._size("x".join(str(exact_int(v, "image side", 1, MAX_IMAGE_SIDE)) for v in pair))
        size = size or self.image_size
        batch = self.batch_size if batch is None else exact_int(batch, "batch", 1, MAX_BATCH)
        if self._auto_pending:
            self._choose_auto(size, batch)
            self._auto_pending = False
        key: tuple[Any, ...] = (*size, batch if self.spec.name == "trt" else 0)  # TensorRT's profile: the batch
        if self.source.loaded is not None:  # made from (or of) the module as it was: changed since, made again (and
            key += weights_signature(self.source.loaded.model)  # checked again, `LoadedModel.module`)
        if key not in self._engines:
            self._engines.clear()  # one engine alive at a time: a size change frees the last one
            self._engines[key] = self._make(self.spec, size, batch)
        return self._engines[key]

    def sampler_settings(self, settings: SamplerSettings | None = None, **overrides: Any) -> SamplerSettings:
        """`settings` (default: the model's recommendations) with `overrides` applied and validated.

        Overrides are SamplerSettings fields (`sampler` and `guidance_interval` name `method` and
        `interval`); None leaves a field as it is. Guidance no step of the run would use is refused
        when the caller gives it (cfg, guidance_interval or settings); the model's recommended guidance
        is dropped (cfg 1, the same images) where the steps or shift asked for leave no step inside its
        interval. Where the model stores a fitted time grid for the resulting solver, steps, shift,
        interval and guidance, the settings use it; where neither `settings`, the solver nor the steps
        are given and a fitted grid matches the guidance, shift and interval, its solver and count are
        used too (the model's recommended solver and count where a grid for them matches, else the
        fewest evaluations).
        """
        base = checked_settings(settings) if settings is not None else self.recommended_settings()
        given = [OVERRIDE_ALIASES.get(name, name) for name, value in overrides.items() if value is not None]
        twice = sorted({name for name in given if given.count(name) > 1})
        if twice:
            spelled = [n for n in overrides if OVERRIDE_ALIASES.get(n, n) in twice]
            raise UsageError(f"one setting given twice ({' and '.join(spelled)}); give one")
        fields = {OVERRIDE_ALIASES.get(name, name): value for name, value in overrides.items() if value is not None}
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(SamplerSettings)})
        if unknown:
            more = f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""
            raise UsageError(f"unknown sampler setting(s): {', '.join(name_text(n) for n in unknown[:8])}{more}")
        from dip_export.sampling.grids import with_fitted_solver, with_stored_grid
        from dip_export.sampling.rules import GuidanceNeverAppliesError

        try:
            chosen = dataclasses.replace(base, **fields)
        except GuidanceNeverAppliesError:  # guidance the caller chose is refused; the model's is not the caller's
            if settings is not None or {"cfg", "interval"} & set(fields):
                raise
            chosen = dataclasses.replace(base, **fields, cfg=1.0)  # its guidance could not apply to these steps
        if fields.get("token_forecast", "off") != "off" and chosen.cache_interval == 1:
            raise UsageError("--token-forecast forecasts between backbone refreshes: give --cache-interval 2 or more with it")
        if settings is None and not {"method", "steps", "grid"} & set(fields):  # the model's recommendation
            chosen = with_fitted_solver(chosen, self.source.checked_sampling())  # its fitted grid for this guidance
        return with_stored_grid(chosen, self.source.checked_sampling())  # a fitted grid where one matches

    def recommended_settings(self) -> SamplerSettings:
        """The model's recommended sampler settings (stored with the checkpoint or export), else the defaults."""
        from dip_export.sampling.rules import stored_settings

        return stored_settings(self.source.checked_sampling())

    def plan(
        self,
        classes: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
        *,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> SamplePlan:
        """Explicit classes/seeds pairs, or num_samples from seed (sample i: seed+i, class i % classes).

        `seed` (default 0) is the first seed of num_samples, or of classes without seeds; with seeds it is refused.
        """
        self.source.check()  # what the plan is checked against is what the engine runs
        _check_plan_options(classes, seeds, num_samples, seed)
        first = 0 if seed is None else exact_int(seed, "seed", 0, MAX_SEED)  # a plain int: a uint8 seed + i would wrap
        return make_plan(self.config.num_classes, classes=classes, seeds=seeds, num_samples=num_samples, seed=first)

    def generate(
        self,
        plan: SamplePlan,
        settings: SamplerSettings,
        *,
        image_size: ImageSize | None = None,
        batch_size: int | None = None,
        cuda_graphs: bool | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """The images of a plan, uint8 (N, H, W, 3); `cuda_graphs` as `use_cuda_graphs` takes it."""
        if not issubclass(type(plan), SamplePlan) or not issubclass(type(settings), SamplerSettings):  # never __class__
            raise UsageError("generate takes a SamplePlan (pipe.plan(...)) and SamplerSettings (pipe.sampler_settings(...))")
        optional_callable(on_step, "on_step", args=1)  # on_step(step index), after every sampler step
        plan = self.plan(plan.classes, plan.seeds)  # a plan made by hand is checked as one made by plan()
        settings = checked_settings(settings)  # settings changed after they were made, or a subclass's: checked again
        size = self._size(image_size)
        batch = self.batch_size if batch_size is None else exact_int(batch_size, "batch_size", 1, MAX_BATCH)
        self.check_budget(len(plan), batch, size)
        self.use_cuda_graphs(cuda_graphs)  # refused before the engine is made
        net = self.engine(size, batch)
        graphs = self.use_cuda_graphs(cuda_graphs)  # again: --backend auto has chosen its backend now
        return generate(
            net, plan, settings, null_class=self.config.null_class, height=size[0], width=size[1],
            batch_size=batch, device=self.device, on_step=on_step, cuda_graphs=graphs,
        )  # fmt: skip

    def use_cuda_graphs(self, cuda_graphs: bool | None = None) -> bool:
        """Whether calls replay each sampler step as one CUDA graph: None (the default) wherever they apply (a CUDA
        device and a backend on torch's stream: torch, compile, trt), False never; True asks for them, and is refused
        in one line where they cannot apply (`settings.CUDA_GRAPHS_RULE`, as dip-sample and dip-bench check it)."""
        asked = optional_bool(cuda_graphs, "cuda_graphs")
        spec = self._known_spec()
        conditions = run_conditions(self.device.type, [spec.name] if spec is not None else [])
        check_options(SAMPLE_RULES, given_options({"--cuda-graphs": asked}) | conditions)
        return asked is not False and self.device.type == "cuda" and spec is not None and spec.backend.graphable

    def _known_spec(self) -> BackendSpec | None:
        """The backend calls run on, where known without measuring (None: --backend auto has not chosen yet)."""
        if not self._auto_pending:
            return self.spec
        return _backend_for(self.source, None) if self.source.loaded is None else None  # an export runs on what it holds

    def _size(self, image_size: ImageSize | None) -> tuple[int, int]:
        if image_size is None:
            return self.image_size
        size = parse_image_size(image_size)
        if self.source.export_size is not None and size != self.source.export_size:
            h, w = self.source.export_size
            raise UsageError(f"this export is fixed at {h}x{w}; another image size needs a new export")
        check_image_size(*size, self.config.patch_size)
        return size

    def __call__(
        self,
        classes: Sequence[int] | None = None,
        seeds: Sequence[int] | None = None,
        settings: SamplerSettings | None = None,
        *,
        num_samples: int | None = None,
        seed: int | None = None,
        image_size: ImageSize | None = None,
        batch_size: int | None = None,
        cuda_graphs: bool | None = None,
        callback: ProgressCallback | None = None,
        **overrides: Any,
    ) -> np.ndarray:
        """Sample images: uint8 numpy (N, H, W, 3), the same images dip-sample writes for these arguments.

        Args:
            classes, seeds: one class per seed (a single class goes with every seed); or
            num_samples, seed: sample i gets seed `seed + i` (seed: default 0) and class `i % num_classes`.
            settings: a SamplerSettings (default: the model's recommendation, else the defaults).
            **overrides: SamplerSettings fields to change, validated like the object itself: steps,
                cfg, shift, guidance_interval, sampler (euler, heun, ab2, ab3, dpmpp_2m, unipc; `steps`
                counts network evaluations per image for all but heun: 2 * steps - 1), cache_interval
                and token_forecast (run the backbone every K evaluations and reuse (off) or
                extrapolate (linear, quadratic) its tokens in between).
            image_size, batch_size: per call (an export's size is fixed).
            cuda_graphs: replay each step as one CUDA graph: None (default) wherever it applies (CUDA; torch,
                compile, trt), True asked for (refused on a CPU device or ONNX Runtime), False off.
            callback: called as callback(steps_done, steps_total) after every sampler step.
        """
        _check_plan_options(classes, seeds, num_samples, seed)  # an argument the call would ignore, before any work
        self.use_cuda_graphs(cuda_graphs)
        sampler = self.sampler_settings(settings, **overrides)
        optional_callable(callback, "callback", args=2)  # callback(steps_done, steps_total), from on_step below
        batch = self.batch_size if batch_size is None else exact_int(batch_size, "batch_size", 1, MAX_BATCH)
        count = _planned_count(classes, seeds, num_samples)
        if count is not None:  # the images kept, against memory, before a plan of that length is built
            self.check_budget(count, batch, self._size(image_size))
        plan = self.plan(classes, seeds, num_samples=num_samples, seed=seed)
        total = sampler.steps * -(-len(plan) // batch)
        done = [0]

        def on_step(_: int) -> None:
            done[0] += 1
            if callback is not None:
                callback(done[0], total)

        return self.generate(plan, sampler, image_size=image_size, batch_size=batch, cuda_graphs=cuda_graphs, on_step=on_step)

    def __repr__(self) -> str:
        where = self.source.export_dir or (self.source.loaded.source if self.source.loaded else "?")
        from dip_export.text import visible

        return f"DiPPipeline('{visible(self.name)}' from {visible(str(where))}, backend={self.spec}, device={self.device})"


def _is_method(name: str) -> bool:
    """A method of DiPPipeline (replaceable on an instance, as test doubles do), not a setting or an unknown name."""
    import inspect

    found = inspect.getattr_static(DiPPipeline, name, None)
    return callable(found) or isinstance(found, classmethod | staticmethod)


def _fixed(name: str) -> FixedSettingError:
    how = _HOW_TO_CHANGE.get(name)
    if how is None:
        shown = plain_value(name)
        return FixedSettingError(f"DiPPipeline has no setting {shown} to set; settings are given to load() or the call")
    return FixedSettingError(f"DiPPipeline.{name} is read-only (fixed at load); {how}")


def _check_console(console: Any) -> None:
    """None or a rich Console (a caller's subclass of one too); its type is read, nothing is asked of the object."""
    from rich.console import Console

    if console is not None and not issubclass(type(console), Console):
        raise UsageError(f"console must be a rich Console or None, got {type(console).__name__}")


def _check_plan_options(classes: Any, seeds: Any, num_samples: Any, seed: Any) -> None:
    """The call's image arguments against the options' rules (`settings.SAMPLE_RULES`, as dip-sample checks them)."""
    given = {"--classes": classes, "--seeds": seeds, "--num-samples": num_samples, "--seed": seed}
    check_options(SAMPLE_RULES, {name for name, value in given.items() if value is not None})  # seed=False: given (and refused)


def _planned_count(classes: Any, seeds: Any, num_samples: Any) -> int | None:
    """How many images a call asks for, from lengths alone (None: the plan will say why it is wrong)."""
    if num_samples is not None:
        return exact_int(num_samples, "num_samples", 1, MAX_SAMPLES)
    lengths = []
    for values in (classes, seeds):  # a list or tuple through its builtin length: a caller's __len__ never runs
        if type(values) is range:  # no subclass exists; its length is exact whatever its ends (the plan checks them)
            lengths.append(_range_length(values))
        elif issubclass(type(values), list | tuple | np.ndarray):
            items = plain_items(values, "classes/seeds", MAX_SAMPLES)
            if items is not None:
                lengths.append(len(items))
    if not lengths:  # any other kind: the plan reads it (once, bounded) and says what is wrong
        return None
    return exact_int(max(lengths), "the number of classes/seeds", 1, MAX_SAMPLES)


def _range_length(values: range) -> int:
    """A range's exact length, also past sys.maxsize (where `len` overflows)."""
    step = values.step
    return max(0, (values.stop - values.start + step - (1 if step > 0 else -1)) // step)


def _backend_for(source: ModelSource, backend: str | None) -> BackendSpec:
    """The backend asked for, or the default: torch for a checkpoint, onnx:<precision> for an export folder.

    The one place an export is matched with a backend (load, and --backend auto on an export folder): ONNX Runtime
    runs an export of its precision made for it, never one made for TensorRT (`--target trt`)."""
    if source.export_dir is None:
        return BackendSpec.parse(backend or "torch")
    from dip_export.runtime.backends import check_runs_from

    p = source.export_precision
    spec = BackendSpec.parse(backend) if backend is not None else None
    if spec is not None:
        check_runs_from(spec, export=True)  # torch and compile: refused here, as the CLI's engine refuses them
    if source.export_target == "trt" and (spec is None or spec.name == "onnx"):
        raise UsageError(f"{source.export_dir}: this {p} export was made for TensorRT (--target trt): use --backend trt:{p}")
    spec = spec or BackendSpec.parse(f"onnx:{p}")
    if spec.name == "onnx" and spec.precision != p:
        raise UsageError(f"{source.export_dir} is a {p} export; use --backend onnx:{p} or omit it")
    return spec


def checked_device(device: Any) -> torch.device:
    """A device as load() and the constructor take it (text or torch.device, one check for both): auto, cpu, or a
    CUDA device PyTorch sees."""
    from dip_export.runtime.torch_engine import resolve_device

    return resolve_device(str(device) if isinstance(device, torch.device) else device)


def checked_backend(source: ModelSource, spec: BackendSpec, device: torch.device) -> BackendSpec:
    """The one check of a backend against a model and a device (load() and the constructor): a known name and
    precision (a BackendSpec made by hand is read as its text), one that runs from this source, and one this machine
    can run on `device` with its packages."""
    from dip_export.runtime.backends import check_available

    chosen = _backend_for(source, str(spec))
    check_available(chosen, device, from_model=source.loaded is not None)
    return chosen


def quiet_console() -> Any:
    """The console a pipeline with console=None gives every export and build it makes: it prints nothing (the stages'
    own fallback is the terminal); errors are still raised."""
    from rich.console import Console

    return Console(quiet=True, stderr=True)
