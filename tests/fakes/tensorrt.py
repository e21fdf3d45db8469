"""A `tensorrt` module that enforces what the real one enforces, over CPU memory and ONNX Runtime.

Installed with `install(monkeypatch, version)` as `sys.modules["tensorrt"]`. What it checks, after
the TensorRT 10.x / 11.x Python API references and the parser's sources:
- OnnxParser.parse_from_file loads the file with the real onnx package (external data beside it),
  runs onnx.checker, and refuses DequantizeLinear on INT32 input (NVIDIA/TensorRT#4542).
- Builder.build_serialized_network returns None (never raises) when a dynamic input has no profile
  shape or the build is made to fail; on 10.x it records whether the network is strongly typed.
- IBuilderConfig.set_timing_cache returns False for a cache from another GPU or TensorRT version.
- 11.x has no BuilderFlag.FP16/BF16/INT8/FP8 (weak typing is gone).
- IExecutionContext.set_input_shape returns False outside the profile; set_tensor_address returns
  False for an unknown name or a null address; execute_async_v3 returns False with a shape or an
  address unset, and during a CUDA-graph capture when the shapes changed since the last normal
  enqueue (or always, with `refuse_capture`). A captured enqueue replays with the shapes and
  addresses of the capture, and refuses to replay once they changed (one context per graph).
- Engines execute: inputs are read from the bound addresses, the ONNX the plan was built from runs
  in ONNX Runtime, outputs are written to the bound addresses. `corrupt_outputs` adds an error.
Everything it did is counted on the module (`built`, `enqueues`, `streams`, `deserialized_on`).
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tests.fakes import cuda as fake_cuda

PLAN_MAGIC = b"FAKEPLAN\n"
CACHE_MAGIC = b"FAKECACHE\n"
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}


def _gpu() -> str:
    active = fake_cuda.ACTIVE
    return active.get_device_name() if active is not None else "no gpu"


def _device_index() -> int:
    return fake_cuda.ACTIVE.device_index if fake_cuda.ACTIVE is not None else 0


class Logger:
    WARNING, ERROR, INFO, VERBOSE = 2, 1, 3, 4

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class MemoryPoolType(IntEnum):
    WORKSPACE = 0


class TensorIOMode(Enum):
    NONE, INPUT, OUTPUT = 0, 1, 2


class _Network:
    def __init__(self, flags: int, strongly_typed: bool) -> None:
        self.flags, self.strongly_typed = flags, strongly_typed
        self.onnx_path: Path | None = None
        self.inputs: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.outputs: dict[str, str] = {}


def _value_info(value: Any) -> tuple[str, tuple[int, ...]]:
    tt = value.type.tensor_type
    return ONNX_DTYPES[tt.elem_type], tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)


class OnnxParser:
    def __init__(self, network: _Network, logger: Logger) -> None:
        self.network, self.errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path)
        onnx.checker.check_model(path)
        graph = model.graph
        int32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT32}
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.input[0] in int32:
                self.errors.append(
                    f"In node {node.name} (parseGraph): INVALID_NODE: DequantizeLinear of INT32 input "
                    f"{node.input[0]} is not supported"
                )
        if self.errors:
            return False
        inits = {i.name for i in graph.initializer}
        self.network.onnx_path = Path(path)
        self.network.inputs = {v.name: _value_info(v) for v in graph.input if v.name not in inits}
        self.network.outputs = {v.name: _value_info(v)[0] for v in graph.output}
        return True


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        lo, opt, hi = tuple(lo), tuple(opt), tuple(hi)
        if not (len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True))):
            raise ValueError(f"invalid profile for {name}: {lo} {opt} {hi}")
        self.shapes[name] = (lo, opt, hi)


class _TimingCache:
    def __init__(self, owner: str, entries: int) -> None:
        self.owner, self.entries = owner, entries

    def serialize(self) -> bytes:
        return CACHE_MAGIC + json.dumps({"owner": self.owner, "entries": self.entries}).encode()


class _Config:
    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.profiles: list[_Profile] = []
        self.builder_optimization_level = 3
        self.pool_limits: dict[Any, int] = {}
        self.cache: _TimingCache | None = None
        self.flags: set[Any] = set()

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        if not data:
            return _TimingCache(_owner(self.module), 0)
        if not data.startswith(CACHE_MAGIC):
            raise RuntimeError("invalid timing cache")
        info = json.loads(data[len(CACHE_MAGIC) :])
        return _TimingCache(info["owner"], info["entries"])

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        if cache.owner != _owner(self.module) and not ignore_mismatch:
            return False  # "the cache was created on a different device or TensorRT version"
        self.cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self.cache


def _owner(module: types.ModuleType) -> str:
    return f"{module.__version__}|{_gpu()}"


class Builder:
    module: types.ModuleType

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> _Network:
        major = int(self.module.__version__.split(".")[0])
        typed = major >= 11 or bool(flags & (1 << int(self.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return _Network(flags, typed)

    def create_builder_config(self) -> _Config:
        return _Config(self.module)

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        m = self.module
        if m.fail_builds or network.onnx_path is None:
            return None
        profile = config.profiles[0].shapes if config.profiles else {}
        for name, (_, shape) in network.inputs.items():
            if -1 in shape and name not in profile:
                return None  # "Network has dynamic or shape inputs, but no optimization profile has been defined"
            if name in profile and any(len(s) != len(shape) for s in profile[name]):
                return None
        if config.cache is not None:
            config.cache.entries += 1
        m.built.append({"onnx": str(network.onnx_path), "strongly_typed": network.strongly_typed,
                        "opt_level": config.builder_optimization_level, "profile": profile})  # fmt: skip
        body = {
            "onnx": str(network.onnx_path), "version": m.__version__, "gpu": _gpu(),
            "inputs": {k: [dt, list(s)] for k, (dt, s) in network.inputs.items()}, "outputs": network.outputs,
            "profile": {k: [list(s) for s in v] for k, v in profile.items()},
        }  # fmt: skip
        return PLAN_MAGIC + json.dumps(body).encode()


class Runtime:
    module: types.ModuleType

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
        if not bytes(data).startswith(PLAN_MAGIC):
            return None
        body = json.loads(bytes(data)[len(PLAN_MAGIC) :])
        if body["version"] != self.module.__version__ or body["gpu"] != _gpu():
            return None  # plans run only on the GPU model and version that built them
        self.module.deserialized_on.append(_device_index())
        return _Engine(self.module, body)


class _Engine:
    def __init__(self, module: types.ModuleType, body: dict[str, Any]) -> None:
        self.module, self.body = module, body
        self.names = list(body["inputs"]) + list(body["outputs"])
        self.session: Any = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.body["inputs"] else TensorIOMode.OUTPUT

    def create_execution_context(self) -> _Context:
        return _Context(self)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            import onnxruntime

            self.session = onnxruntime.InferenceSession(self.body["onnx"], providers=["CPUExecutionProvider"])
        names = list(self.body["outputs"])
        return dict(zip(names, self.session.run(names, feeds), strict=True))


def _view(address: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    np_dtype = np.dtype(dtype)
    count = int(np.prod(shape)) if shape else 1
    buf = (ctypes.c_byte * (count * np_dtype.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype=np_dtype, count=count).reshape(shape)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.shapes_enqueued = False  # a normal enqueue ran since the last shape change

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(s) for s in shape)
        info = self.engine.body["inputs"].get(name)
        if info is None:
            return False
        lo, _, hi = self.engine.body["profile"].get(name, [info[1], info[1], info[1]])
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False  # "... is out of the optimization profile's range"
        if self.shapes.get(name) != shape:
            self.shapes_enqueued = False
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.names or not address:
            return False
        self.addresses[name] = int(address)
        return True

    def _state(self) -> tuple[Any, ...]:
        return tuple(sorted(self.shapes.items())), tuple(sorted(self.addresses.items()))

    def execute_async_v3(self, stream_handle: int) -> bool:
        m = self.engine.module
        if set(self.shapes) != set(self.engine.body["inputs"]) or set(self.addresses) != set(self.engine.names):
            return False
        m.streams.append(int(stream_handle))
        active = fake_cuda.ACTIVE
        if active is not None and active.capturing is not None:
            if not self.shapes_enqueued or m.refuse_capture:
                return False  # enqueue once (outside the capture) after every shape change; some graphs cannot be captured
            captured = self._state()

            def replay() -> None:
                if self._state() != captured:
                    raise RuntimeError("TensorRT graph replayed after its context's shapes or addresses changed")
                self._execute()

            active.record(replay)
            return True
        self._execute()
        self.shapes_enqueued = True
        return True

    def _execute(self) -> None:
        m, body = self.engine.module, self.engine.body
        feeds = {n: _view(self.addresses[n], body["inputs"][n][0], self.shapes[n]).copy() for n in body["inputs"]}
        outs = self.engine.run(feeds)
        for name, value in outs.items():
            dst = _view(self.addresses[name], body["outputs"][name], value.shape)
            dst[...] = value + (1.0 if m.corrupt_outputs else 0.0)
        m.enqueues += 1


def make_module(version: str = "10.13.0") -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    major = int(version.split(".")[0])
    m.Logger, m.OnnxParser, m.MemoryPoolType, m.TensorIOMode = Logger, OnnxParser, MemoryPoolType, TensorIOMode
    m.Builder = type("Builder", (Builder,), {"module": m})
    m.Runtime = type("Runtime", (Runtime,), {"module": m})
    m.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    flags = {"DEBUG": 0, "REFIT": 1, "STRIP_PLAN": 2}
    if major < 11:  # weak typing, removed in 11
        flags |= {"FP16": 10, "BF16": 11, "INT8": 12, "FP8": 13, "OBEY_PRECISION_CONSTRAINTS": 14}
    m.BuilderFlag = IntEnum("BuilderFlag", flags)
    m.fail_builds, m.corrupt_outputs, m.refuse_capture = False, False, False
    m.built, m.streams, m.deserialized_on = [], [], []
    m.enqueues = 0
    return m


def install(monkeypatch: Any, version: str = "10.13.0") -> types.ModuleType:
    module = make_module(version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module
