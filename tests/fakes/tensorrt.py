"""A `tensorrt` module that enforces what the real one enforces, over CPU memory and ONNX Runtime.

Installed with `install(monkeypatch, version)` as `sys.modules["tensorrt"]`. What it checks, after
the TensorRT 10.x / 11.x Python API references and the parser's sources:
- OnnxParser.parse_from_file loads the file with the real onnx package (external data beside it),
  runs onnx.checker, and applies the parser's Q/DQ rules: no DequantizeLinear on INT32 input
  (NVIDIA/TensorRT#4542), no UINT8, positive scales, zero zero-points, one scale per channel.
- 10.x and 11.x enums as the bindings have them: 11.x has no EXPLICIT_BATCH (STRONGLY_TYPED is 0)
  and no FP16/BF16/INT8/FP8 builder flags; BuilderFlag.TF32 exists in both and is on by default.
- add_optimization_profile returns -1 for an invalid profile; create_timing_cache logs and returns
  None for a corrupt blob.
- Engines compute in the engine's precision, so verification meets realistic errors: with TF32 on, fp32
  graphs run with every MatMul/Gemm/Conv input rounded to a 10-bit mantissa; fp16 MatMuls run split-K
  (two half-depth products summed in fp16); Q/DQ graphs run each DequantizeLinear -> GEMM as an int8
  GEMM rescaled once (no fp16 rounding of the dequantised values, as ONNX Runtime does).
- ICudaEngine reports I/O dtypes and shapes (get_tensor_dtype / get_tensor_shape) and device_memory_size_v2;
  a USER_MANAGED context runs only after set_device_memory (256-byte aligned, big enough); STATIC
  contexts are counted in `context_memory`. Addresses must be multiples of 256 bytes; an enqueue
  fails unless the engine's device is the current one.
- Builder.build_serialized_network returns None (never raises) when a dynamic input has no profile
  shape or the build is made to fail; on 10.x it records whether the network is strongly typed.
- IBuilderConfig.set_timing_cache returns False for a cache from another GPU or TensorRT version.
- 11.x has no BuilderFlag.FP16/BF16/INT8/FP8 (weak typing is gone).
- IExecutionContext.set_input_shape returns False outside the profile; set_tensor_address returns
  False for an unknown name or a null address; execute_async_v3 returns False with a shape or an
  address unset, and during a CUDA-graph capture when the shapes changed since the last normal
  enqueue (or always, with `refuse_capture`). A captured enqueue replays with the shapes and
  addresses of the capture, and refuses to replay once they changed (one context per graph).
- Engines execute: inputs are read from the bound addresses, the ONNX the plan was built from (rewritten
  for the engine's precision, above) runs in ONNX Runtime, outputs are written to the bound addresses.
  `corrupt_outputs` adds an error.
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
from onnx import helper, numpy_helper

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


class DataType(IntEnum):  # tensorrt.DataType (the members this project's graphs use)
    FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64 = 0, 1, 2, 3, 4, 5, 6, 7, 8


DATA_TYPES = {"float32": DataType.FLOAT, "float16": DataType.HALF, "int64": DataType.INT64}
ALIGNMENT = 256  # set_tensor_address / set_device_memory refuse addresses that are not multiples of it


class ExecutionContextAllocationStrategy(IntEnum):
    STATIC, ON_PROFILE_CHANGE, USER_MANAGED = 0, 1, 2


class _Network:
    def __init__(self, flags: int, strongly_typed: bool) -> None:
        self.flags, self.strongly_typed = flags, strongly_typed
        self.onnx_path: Path | None = None
        self.inputs: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.outputs: dict[str, tuple[str, tuple[int, ...]]] = {}


def _value_info(value: Any) -> tuple[str, tuple[int, ...]]:
    tt = value.type.tensor_type
    return ONNX_DTYPES[tt.elem_type], tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)


def _qdq_errors(graph: Any) -> list[str]:
    """The ONNX parser's Q/DQ rules (onnx-tensorrt's importers): no INT32 (bias) dequantisation, no UINT8,
    positive scales, zero zero-points, one scale per channel along the axis for per-channel weights."""
    inits = {i.name: i for i in graph.initializer}
    errors = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        where = f"In node {node.name} (parseGraph): INVALID_NODE: {node.op_type}"
        data, scale = inits.get(node.input[0]), inits.get(node.input[1])
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "DequantizeLinear" and data is not None and data.data_type == onnx.TensorProto.INT32:
            errors.append(f"{where} of INT32 input {node.input[0]} is not supported")
        if zero is not None and zero.data_type == onnx.TensorProto.UINT8:
            errors.append(f"{where}: UINT8 quantization is not supported ({node.input[2]}); use signed INT8")
        if zero is not None and np.any(numpy_helper.to_array(zero) != 0):
            errors.append(f"{where}: non-zero zero point {node.input[2]} (TensorRT quantization is symmetric)")
        if scale is not None:
            values = numpy_helper.to_array(scale)
            if np.any(values <= 0):
                errors.append(f"{where}: scale {node.input[1]} must be positive")
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if values.size > 1 and data is not None and values.size != list(data.dims)[axis]:
                errors.append(f"{where}: {values.size} scales for {list(data.dims)[axis]} channels on axis {axis}")
    return errors


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
        self.errors += _qdq_errors(graph)
        if self.errors:
            return False
        inits = {i.name for i in graph.initializer}
        self.network.onnx_path = Path(path)
        self.network.inputs = {v.name: _value_info(v) for v in graph.input if v.name not in inits}
        self.network.outputs = {v.name: _value_info(v) for v in graph.output}
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
        self.flags: set[Any] = {module.BuilderFlag.TF32}  # TF32 is on by default (BuilderFlag docs)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pool_limits[pool] = size

    def add_optimization_profile(self, profile: _Profile) -> int:
        if not profile.shapes or self.module.refuse_profiles:
            return -1  # "the profile is invalid": logged, -1 returned, nothing added
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_flag(self, flag: Any) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: Any) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: Any) -> bool:
        return flag in self.flags

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        if not data:
            return _TimingCache(_owner(self.module), 0)
        try:
            info = json.loads(data[len(CACHE_MAGIC) :]) if data.startswith(CACHE_MAGIC) else None
        except ValueError:
            info = None
        if not isinstance(info, dict) or "owner" not in info:
            self.module.logged.append("ERROR: Failed to deserialize timing cache: corrupted or wrong format")
            return None  # the real binding logs the error and returns None
        return _TimingCache(info["owner"], info["entries"])

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        if cache is None:
            raise TypeError("set_timing_cache(): incompatible function arguments (cache is None)")
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
                        "opt_level": config.builder_optimization_level, "profile": profile,
                        "tf32": m.BuilderFlag.TF32 in config.flags})  # fmt: skip
        body = {
            "onnx": str(network.onnx_path), "version": m.__version__, "gpu": _gpu(),
            "inputs": {k: [dt, list(s)] for k, (dt, s) in network.inputs.items()},
            "outputs": {k: [dt, list(s)] for k, (dt, s) in network.outputs.items()},
            "profile": {k: [list(s) for s in v] for k, v in profile.items()},
            "tf32": m.BuilderFlag.TF32 in config.flags,
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
        return _Engine(self.module, body, _device_index())


def _tf32_model(model: Any) -> None:
    """Every MatMul/Gemm/Conv input rounded to TF32 (10-bit mantissa), as TensorRT's fp32 kernels do while
    BuilderFlag.TF32 is set (accumulation stays fp32)."""
    graph = model.graph
    consts = {"tf32_tiny": 1e-30, "tf32_ln2": float(np.log(2.0)), "tf32_two": 2.0, "tf32_ten": 10.0}
    graph.initializer.extend(numpy_helper.from_array(np.array(v, dtype=np.float32), k) for k, v in consts.items())
    rounded: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            for i in (0, 1):
                name = node.input[i]
                if name not in rounded:
                    r = f"{name}__tf32"
                    step = [("Abs", [name], "a"), ("Max", ["a", "tf32_tiny"], "m"), ("Log", ["m"], "l"),
                            ("Div", ["l", "tf32_ln2"], "e"), ("Floor", ["e"], "f"), ("Sub", ["f", "tf32_ten"], "g"),
                            ("Pow", ["tf32_two", "g"], "u"), ("Div", [name, "u"], "q"), ("Round", ["q"], "n")]  # fmt: skip
                    nodes += [helper.make_node(op, [x if x in (name,) or x.startswith("tf32_") else f"{r}_{x}" for x in ins],
                                               [f"{r}_{out}"]) for op, ins, out in step]  # fmt: skip
                    nodes.append(helper.make_node("Mul", [f"{r}_n", f"{r}_u"], [r]))
                    rounded[name] = r
                node.input[i] = rounded[name]
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _tensor_info(model: Any) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Element type and static shape (-1 where unknown) of every named tensor, after shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    shapes = {i.name: list(i.dims) for i in g.initializer}
    for v in [*g.value_info, *g.input, *g.output]:
        tt = v.type.tensor_type
        types[v.name] = tt.elem_type
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    return types, shapes


def _int8_gemms(model: Any, types: dict[str, int]) -> set[str]:
    """TensorRT fuses DequantizeLinear -> MatMul/Gemm/Conv into an int8 kernel: int32 accumulation of the
    integer products, one rescale, one rounding to the output type. The graph as written (ONNX Runtime)
    rounds each dequantised value to the scale's type (fp16) first. Rewritten here: the DQs feeding a GEMM
    dequantise to float32, the GEMM runs in float32 (exact for int8 products) and its output is cast back."""
    graph = model.graph
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    done: set[str] = set()
    made: set[str] = set()
    nodes = []
    for node in graph.node:
        fused = node.op_type in ("MatMul", "Gemm", "Conv") and all(i in dq for i in node.input[:2])
        if fused and types.get(node.output[0]) != onnx.TensorProto.FLOAT:
            for i, name in enumerate(node.input):
                if f"{name}__f32" not in made and i < 2:
                    src = dq[name]
                    scale = f"{name}__scale32"
                    nodes.append(helper.make_node("Cast", [src.input[1]], [scale], to=onnx.TensorProto.FLOAT))
                    nodes.append(helper.make_node("DequantizeLinear", [src.input[0], scale, *src.input[2:]], [f"{name}__f32"],
                                                  axis=next((a.i for a in src.attribute if a.name == "axis"), 1)))  # fmt: skip
                elif f"{name}__f32" not in made and name:
                    nodes.append(helper.make_node("Cast", [name], [f"{name}__f32"], to=onnx.TensorProto.FLOAT))
                made.add(f"{name}__f32")
                node.input[i] = f"{name}__f32" if name else name
            out = node.output[0]
            node.output[0] = f"{out}__i8"
            nodes += [node, helper.make_node("Cast", [f"{out}__i8"], [out], to=types[out])]
            done.add(out)
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return done


def _fp16_split_k(model: Any, types: dict[str, int], shapes: dict[str, list[int]], skip: set[str]) -> None:
    """fp16 MatMuls as TensorRT's split-K kernels run them: two half-depth products, each rounded to fp16,
    summed in fp16 (one more fp16 rounding than ONNX Runtime's single product)."""
    graph = model.graph
    nodes = []
    for node in graph.node:
        b_shape = shapes.get(node.input[1], []) if node.op_type == "MatMul" else []
        k = b_shape[-2] if len(b_shape) >= 2 else -1
        if node.output[0] in skip or types.get(node.output[0]) != onnx.TensorProto.FLOAT16 or k < 2:
            nodes.append(node)
            continue
        out, h = node.output[0], k // 2
        for part, (lo, hi) in enumerate(((0, h), (h, k))):
            values = enumerate((lo, hi, -1, -2))
            bounds = [numpy_helper.from_array(np.array([v], np.int64), f"{out}__k{part}_{i}") for i, v in values]
            graph.initializer.extend(bounds)
            b = [t.name for t in bounds]
            nodes += [helper.make_node("Slice", [node.input[0], b[0], b[1], b[2]], [f"{out}__a{part}"]),
                      helper.make_node("Slice", [node.input[1], b[0], b[1], b[3]], [f"{out}__b{part}"]),
                      helper.make_node("MatMul", [f"{out}__a{part}", f"{out}__b{part}"], [f"{out}__p{part}"])]  # fmt: skip
        nodes.append(helper.make_node("Add", [f"{out}__p0", f"{out}__p1"], [out]))
    del graph.node[:]
    graph.node.extend(nodes)


def _engine_model(path: str, tf32: bool) -> Any:
    """What the engine computes, as an ONNX graph ONNX Runtime can run: the plan's graph in the engine's precision.
    fp32 graphs: TF32-rounded GEMM inputs while the flag is set; fp16 graphs: split-K fp16 matmuls; Q/DQ graphs:
    int8 GEMMs rescaled once (and the remaining fp16 matmuls split-K)."""
    model = onnx.load(path)
    kinds = {i.data_type for i in model.graph.initializer}
    if not kinds & {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8}:
        if not tf32:
            return path
        _tf32_model(model)
        return model.SerializeToString()
    types, shapes = _tensor_info(model)
    done = _int8_gemms(model, types) if onnx.TensorProto.INT8 in kinds else set()
    _fp16_split_k(model, types, shapes, done)
    return model.SerializeToString()


class _Engine:
    def __init__(self, module: types.ModuleType, body: dict[str, Any], device: int) -> None:
        self.module, self.body, self.device = module, body, device
        self.names = list(body["inputs"]) + list(body["outputs"])
        self.session: Any = None
        rows = max((s[2][0] for s in body["profile"].values()), default=1)
        self.device_memory_size_v2 = 4096 * rows  # activations for the largest profile shape

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.body["inputs"] else TensorIOMode.OUTPUT

    def _io(self, name: str) -> list[Any]:
        return self.body["inputs"].get(name) or self.body["outputs"][name]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DATA_TYPES[self._io(name)[0]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._io(name)[1])

    def create_execution_context(self, strategy: Any = ExecutionContextAllocationStrategy.STATIC) -> _Context:
        if strategy != ExecutionContextAllocationStrategy.USER_MANAGED:
            self.module.context_memory.append(self.device_memory_size_v2)  # a block of its own, for its lifetime
        return _Context(self, user_managed=strategy == ExecutionContextAllocationStrategy.USER_MANAGED)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            import onnxruntime

            model = _engine_model(self.body["onnx"], bool(self.body.get("tf32")))
            self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        names = list(self.body["outputs"])
        return dict(zip(names, self.session.run(names, feeds), strict=True))


def _view(address: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    np_dtype = np.dtype(dtype)
    count = int(np.prod(shape)) if shape else 1
    buf = (ctypes.c_byte * (count * np_dtype.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype=np_dtype, count=count).reshape(shape)


class _Context:
    def __init__(self, engine: _Engine, user_managed: bool = False) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.shapes_enqueued = False  # a normal enqueue ran since the last shape change
        self.memory: int | None = None if user_managed else -1  # -1: its own block (STATIC)

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
        if name not in self.engine.names or not address or int(address) % ALIGNMENT:
            return False  # unknown name, null or misaligned address ("must be aligned to 256 bytes")
        self.addresses[name] = int(address)
        return True

    def set_device_memory(self, memory: int, size: int) -> None:
        if self.memory == -1:
            raise RuntimeError("set_device_memory on a context that owns its memory (not USER_MANAGED)")
        if int(memory) % ALIGNMENT or size < self.engine.device_memory_size_v2:
            raise RuntimeError("device memory too small or not 256-byte aligned")  # the binding raises on this error
        self.memory = int(memory)

    def _state(self) -> tuple[Any, ...]:
        return tuple(sorted(self.shapes.items())), tuple(sorted(self.addresses.items()))

    def execute_async_v3(self, stream_handle: int) -> bool:
        m = self.engine.module
        if set(self.shapes) != set(self.engine.body["inputs"]) or set(self.addresses) != set(self.engine.names):
            return False
        if self.memory is None or _device_index() != self.engine.device:
            return False  # USER_MANAGED without memory; the engine's device is not the current one
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
            dst = _view(self.addresses[name], body["outputs"][name][0], value.shape)
            dst[...] = value + (1.0 if m.corrupt_outputs else 0.0)
        m.enqueues += 1


def make_module(version: str = "10.13.0") -> types.ModuleType:
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    major = int(version.split(".")[0])
    m.Logger, m.OnnxParser, m.MemoryPoolType, m.TensorIOMode = Logger, OnnxParser, MemoryPoolType, TensorIOMode
    m.Builder = type("Builder", (Builder,), {"module": m})
    m.Runtime = type("Runtime", (Runtime,), {"module": m})
    m.DataType, m.ExecutionContextAllocationStrategy = DataType, ExecutionContextAllocationStrategy
    # 10.x: EXPLICIT_BATCH (deprecated, ignored) = 0, STRONGLY_TYPED = 1; 11.x: no EXPLICIT_BATCH, STRONGLY_TYPED = 0
    creation = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if major < 11 else {"STRONGLY_TYPED": 0}
    m.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", creation)
    flags = {"DEBUG": 2, "REFIT": 4, "TF32": 6, "STRIP_PLAN": 19 if major < 11 else 18}  # TF32 in both, on by default
    if major < 11:  # weak typing, removed in 11
        flags |= {"FP16": 0, "INT8": 1, "OBEY_PRECISION_CONSTRAINTS": 9, "FP8": 15, "BF16": 17}
    m.BuilderFlag = IntEnum("BuilderFlag", flags)
    m.fail_builds, m.corrupt_outputs, m.refuse_capture, m.refuse_profiles = False, False, False, False
    m.built, m.streams, m.deserialized_on, m.logged, m.context_memory = [], [], [], [], []
    m.enqueues = 0
    return m


def install(monkeypatch: Any, version: str = "10.13.0") -> types.ModuleType:
    module = make_module(version)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module
