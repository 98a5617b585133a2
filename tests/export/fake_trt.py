"""A stand-in ``tensorrt`` module for tests: the documented Python API surface pruneopt uses, recording calls.

It does not run networks. Its "engine" is a JSON blob describing what the builder was asked for (network flags,
builder flags, profile shapes, workspace, the parsed ONNX's input/output types); its execution context "runs" by
writing ``output[i, :] = mean(input[i])`` into the output buffer through a host-memory :class:`HostBackend`, which
is enough to check the runner's plumbing: shapes, buffer sizes, tensor addresses, copies and the v3 call order.
TensorRT 10 has ``BuilderFlag.FP16``; TensorRT 11 does not (it was removed with weak typing).
"""

from __future__ import annotations

import enum
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8
    BF16 = 9


_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF"}


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class Logger:
    WARNING = 2

    def __init__(self, severity: int = 2) -> None:
        self.severity = severity


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        self.onnx: onnx.ModelProto | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]


class OnnxParser:
    fail_with: list[str] = []  # set by a test to make parsing fail

    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse(self, data: bytes) -> bool:
        if OnnxParser.fail_with:
            self.errors = list(OnnxParser.fail_with)
            return False
        model = onnx.load_from_string(data)
        self.network.onnx = model
        init = {t.name for t in model.graph.initializer}
        for vi in model.graph.input:
            if vi.name not in init:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
                self.network.inputs.append(_Tensor(vi.name, dims, _ONNX_TO_TRT[vi.type.tensor_type.elem_type]))
        for vi in model.graph.output:
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)
            self.network.outputs.append(_Tensor(vi.name, dims, _ONNX_TO_TRT[vi.type.tensor_type.elem_type]))
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


class Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class TimingCache:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def serialize(self) -> bytes:
        return self.blob + b"+entry"


class BuilderConfig:
    def __init__(self, module: SimpleNamespace) -> None:
        self.module = module
        self.flags: list[Any] = []
        self.pools: dict[Any, int] = {}
        self.profiles: list[Profile] = []
        self.cache: TimingCache | None = None
        self.cache_blob_in: bytes | None = None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: Any) -> None:
        self.flags.append(flag)

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob: bytes) -> TimingCache:
        self.cache_blob_in = bytes(blob)
        return TimingCache(bytes(blob))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        assert self.cache is not None
        return self.cache


class Builder:
    return_none = False  # set by a test to make the build fail

    def __init__(self, logger: Logger, module: SimpleNamespace) -> None:
        self.module = module
        module.calls.append(("Builder",))

    def create_network(self, flags: int = 0) -> Network:
        self.module.calls.append(("create_network", flags))
        self.module.last_network = Network(flags)
        return self.module.last_network

    def create_builder_config(self) -> BuilderConfig:
        self.module.last_config = BuilderConfig(self.module)
        return self.module.last_config

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        if Builder.return_none:
            return None
        prof = config.profiles[0]
        out_dim = network.outputs[0].shape[1]
        desc = {
            "inputs": [[t.name, t.dtype, list(t.shape)] for t in network.inputs],
            "outputs": [[t.name, t.dtype, [-1, out_dim]] for t in network.outputs],
            "profile": {k: [list(s) for s in v] for k, v in prof.shapes.items()},
            "network_flags": network.flags,
            "builder_flags": [str(f) for f in config.flags],
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
        }
        return json.dumps(desc).encode()


class Engine:
    def __init__(self, desc: dict[str, Any]) -> None:
        self.desc = desc
        self.io = [(n, TensorIOMode.INPUT, d, s) for n, d, s in desc["inputs"]]
        self.io += [(n, TensorIOMode.OUTPUT, d, s) for n, d, s in desc["outputs"]]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def _t(self, name: str) -> tuple[str, TensorIOMode, str, list[int]]:
        return next(t for t in self.io if t[0] == name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._t(name)[1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._t(name)[2]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t(name)[3])

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.desc["profile"][name]]

    def create_execution_context(self) -> Context:
        return Context(self)


class Context:
    memory: dict[int, np.ndarray] = {}  # the HostBackend's "device" memory, by pointer

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.calls: list[tuple[Any, ...]] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("set_input_shape", name, tuple(shape)))
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self.shapes.get(name, self.engine.get_tensor_shape(name))
        batch = next(iter(self.shapes.values()))[0]
        return (batch, self.engine.get_tensor_shape(name)[1])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.calls.append(("set_tensor_address", name, ptr))
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.calls.append(("execute_async_v3", stream_handle))
        (iname, _, idt, _), (oname, _, odt, _) = self.engine.io[0], self.engine.io[-1]
        ishape = self.shapes[iname]
        x = Context.memory[self.addresses[iname]][: int(np.prod(ishape)) * np.dtype(_NP[idt]).itemsize]
        x = x.view(_NP[idt]).reshape(ishape)
        oshape = self.get_tensor_shape(oname)
        y = np.repeat(x.reshape(ishape[0], -1).astype(np.float64).mean(axis=1, keepdims=True), oshape[1], axis=1)
        out = Context.memory[self.addresses[oname]]
        n = int(np.prod(oshape)) * np.dtype(_NP[odt]).itemsize
        out[:n] = y.astype(_NP[odt]).reshape(-1).view(np.uint8)
        return True


_NP = {"FLOAT": np.float32, "HALF": np.float16}


class Runtime:
    def __init__(self, logger: Logger) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
        try:
            return Engine(json.loads(bytes(data)))
        except ValueError:
            return None


def make_fake_trt(version: str = "10.3.0.26") -> SimpleNamespace:
    """A fake ``tensorrt`` module of ``version`` (FP16 builder flag only before 11)."""
    major = int(version.split(".")[0])
    module = SimpleNamespace(__version__=version, calls=[], last_network=None, last_config=None)
    flag_names = {"TF32": 1} | ({"FP16": 0} if major < 11 else {})
    module.BuilderFlag = enum.Enum("BuilderFlag", flag_names)
    module.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if major < 11
        else {"STRONGLY_TYPED": 0})
    module.Logger = Logger
    module.DataType = DataType
    module.TensorIOMode = TensorIOMode
    module.MemoryPoolType = MemoryPoolType
    module.OnnxParser = OnnxParser
    module.Runtime = Runtime
    module.Builder = lambda logger: Builder(logger, module)
    return module


class HostBackend:
    """A :class:`export.tensorrt.DeviceBackend` whose "device" memory is host numpy arrays (for the fake engine)."""

    name = "host"

    def __init__(self) -> None:
        self.next_ptr = 0x1000
        self.allocs: list[int] = []
        self.freed: list[int] = []
        self.syncs = 0

    @property
    def stream(self) -> int:
        return 0xABC

    def alloc(self, nbytes: int) -> SimpleNamespace:
        ptr = self.next_ptr
        self.next_ptr += nbytes + 0x100
        Context.memory[ptr] = np.zeros(nbytes, np.uint8)
        self.allocs.append(nbytes)
        return SimpleNamespace(ptr=ptr, nbytes=nbytes)

    def free(self, buf: SimpleNamespace) -> None:
        self.freed.append(buf.ptr)
        Context.memory.pop(buf.ptr, None)

    def h2d(self, buf: SimpleNamespace, host: np.ndarray) -> None:
        assert host.nbytes <= buf.nbytes, "host data larger than the device buffer"
        Context.memory[buf.ptr][: host.nbytes] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

    def d2h(self, host: np.ndarray, buf: SimpleNamespace) -> None:
        assert host.nbytes <= buf.nbytes, "device buffer smaller than the output"
        host.reshape(-1).view(np.uint8)[:] = Context.memory[buf.ptr][: host.nbytes]

    def synchronize(self) -> None:
        self.syncs += 1

    def close(self) -> None:
        pass
