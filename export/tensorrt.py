"""TensorRT engines from exported ONNX, and a runner on the name-based (v3) execution API. No torch import.

Building (:func:`build_engine`): parse the ONNX with ``trt.OnnxParser``, add one optimisation profile over the
batch axis (min/opt/max), cap the builder workspace (``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``),
reuse and update a timing-cache file, and serialise. FP16 is requested the way each TensorRT version supports it
(:func:`fp16_strategy`):

* TensorRT 10: ``config.set_flag(trt.BuilderFlag.FP16)`` on the float32 network ("builder-flag");
* TensorRT 11, where weak typing and ``BuilderFlag.FP16`` are gone: the ONNX is first converted to float16
  (:func:`export.fp16.convert_to_fp16`) and parsed into a strongly typed network
  (``1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED``, required on 10, accepted and ignored on 11)
  ("strongly-typed").

Next to ``model.engine`` goes ``model.engine.json`` (:data:`SIDECAR_FORMAT`): the TensorRT version, precision,
profile, I/O names, the GPU it was built on, the SHA-256 of the engine bytes and the ONNX's pruneopt metadata.
:func:`load_engine` refuses an engine built by another TensorRT version or for another GPU generation (engines are
not portable across either), and a truncated or corrupted engine file, each with a message saying to rebuild it.

Running (:class:`TrtRunner`): ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``; tensor names from
``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``. Device memory and copies go through a small
:class:`DeviceBackend`: cuda-python (``cuda.bindings.runtime``, or the older ``cuda.cudart``; the default, so a
service needs no torch), torch CUDA tensors on torch's current stream, or PyCUDA (on the primary context).

TensorRT is imported lazily: without it every entry point raises
:class:`~export.errors.RuntimeUnavailableError` ("tensorrt is not installed: pip install pruneopt[trt]").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from .errors import EngineError, EngineVersionError, ExportError, RuntimeUnavailableError

SIDECAR_FORMAT = "pruneopt.trt/1"
TRT_MISSING = "tensorrt is not installed: pip install pruneopt[trt]"
CUDA_PYTHON_MISSING = "cuda-python is not installed: pip install pruneopt[trt] (or use the torch or pycuda backend)"
BACKENDS = ("cuda-python", "torch", "pycuda")

# TensorRT DataType name -> numpy dtype (BF16 / FP8 / INT4 I/O have no numpy type and are refused)
_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
           "BOOL": np.bool_, "UINT8": np.uint8}


def import_tensorrt(module: ModuleType | None = None) -> ModuleType:
    """``module`` if given (tests inject a fake), else ``import tensorrt`` with an actionable error."""
    if module is not None:
        return module
    try:
        import tensorrt
    except ImportError as exc:
        raise RuntimeUnavailableError(TRT_MISSING) from exc
    return tensorrt


def trt_version(trt: ModuleType) -> str:
    return str(getattr(trt, "__version__", "0"))


def trt_major(trt: ModuleType) -> int:
    try:
        return int(trt_version(trt).split(".")[0])
    except ValueError:
        raise RuntimeUnavailableError(f"cannot read the TensorRT version {trt_version(trt)!r}") from None


def fp16_strategy(trt: ModuleType) -> str:
    """How to get FP16 kernels from this TensorRT: ``"builder-flag"`` (10.x) or ``"strongly-typed"`` (11+)."""
    major = trt_major(trt)
    if major < 10:
        raise RuntimeUnavailableError(f"TensorRT {trt_version(trt)} is too old: pruneopt needs TensorRT >= 10 "
                                      "(pip install 'pruneopt[trt]')")
    if major < 11 and hasattr(trt.BuilderFlag, "FP16"):
        return "builder-flag"
    if not hasattr(trt, "NetworkDefinitionCreationFlag") and major < 11:
        raise RuntimeUnavailableError(f"TensorRT {trt_version(trt)} has neither BuilderFlag.FP16 nor strongly "
                                      "typed networks")
    return "strongly-typed"


def network_flags(trt: ModuleType, strongly_typed: bool) -> int:
    """The ``create_network`` flags: STRONGLY_TYPED where asked for and still defined (ignored on 11)."""
    flag_enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if strongly_typed and flag_enum is not None and hasattr(flag_enum, "STRONGLY_TYPED"):
        return 1 << int(flag_enum.STRONGLY_TYPED)
    return 0


# -- profiles and buffers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """One optimisation profile over the batch axis; the other dimensions are the ONNX's fixed C, H, W."""

    min: int = 1
    opt: int = 8
    max: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ExportError(f"a TensorRT batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/"
                              f"{self.max}")

    def shapes(self, chw: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """``(min, opt, max)`` input shapes for ``profile.set_shape``."""
        rest = tuple(int(d) for d in chw)
        return (self.min, *rest), (self.opt, *rest), (self.max, *rest)


@dataclass(frozen=True)
class TensorInfo:
    """An engine I/O tensor: name, ``"input"``/``"output"``, numpy dtype and shape (``-1`` for dynamic axes)."""

    name: str
    mode: str
    dtype: np.dtype
    shape: tuple[int, ...]


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1])
    if name not in _DTYPES:
        raise EngineError(f"engine I/O type {name} has no numpy equivalent; export the ONNX with float32 I/O")
    return np.dtype(_DTYPES[name])


def io_tensors(engine: Any, trt: ModuleType) -> list[TensorInfo]:
    """The engine's I/O tensors through the name-based API (``num_io_tensors``, ``get_tensor_name``...)."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        out.append(TensorInfo(name, mode, numpy_dtype(engine.get_tensor_dtype(name)),
                              tuple(int(d) for d in engine.get_tensor_shape(name))))
    return out


def tensor_nbytes(shape: Sequence[int], dtype: np.dtype | type) -> int:
    """Bytes of a tensor of a concrete ``shape`` (every dimension >= 0)."""
    if any(int(d) < 0 for d in shape):
        raise EngineError(f"cannot size a buffer for the unresolved shape {tuple(shape)}")
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


def capacity_batch(batch: int, profile_max: int) -> int:
    """Batch size to allocate for: the next power of two >= ``batch``, capped at the profile's maximum.

    Buffers grow geometrically, so a stream of varying batch sizes reallocates O(log max) times at most.
    """
    if batch < 1 or batch > profile_max:
        raise EngineError(f"batch {batch} is outside the engine's profile (1..{profile_max})")
    return min(profile_max, 1 << (batch - 1).bit_length())


# -- device backends -----------------------------------------------------------------------------------------
class DeviceBuffer(Protocol):
    ptr: int
    nbytes: int


class DeviceBackend(Protocol):
    """Device memory and copies for :class:`TrtRunner` (all copies asynchronous on ``stream``)."""

    name: str

    @property
    def stream(self) -> int: ...
    def alloc(self, nbytes: int) -> DeviceBuffer: ...
    def free(self, buf: DeviceBuffer) -> None: ...
    def h2d(self, buf: DeviceBuffer, host: np.ndarray) -> None: ...
    def d2h(self, host: np.ndarray, buf: DeviceBuffer) -> None: ...
    def synchronize(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Buf:
    ptr: int
    nbytes: int
    handle: Any = None  # what keeps the allocation alive (torch tensor, pycuda allocation)


def import_cudart() -> ModuleType:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        except ImportError as exc:
            raise RuntimeUnavailableError(CUDA_PYTHON_MISSING) from exc
    return cudart


class CudaPythonBackend:
    """cuda-python runtime API: ``cudaMalloc``, ``cudaMemcpyAsync`` on a private stream."""

    name = "cuda-python"

    def __init__(self, device: int = 0, cudart: ModuleType | None = None) -> None:
        self.rt = cudart or import_cudart()
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self._stream = self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            msg = self.rt.cudaGetErrorString(err)
            text = msg[1].decode() if isinstance(msg, tuple) and isinstance(msg[1], bytes) else str(msg)
            raise EngineError(f"CUDA error in {what}: {text}")
        return rest[0] if len(rest) == 1 else tuple(rest)

    @property
    def stream(self) -> int:
        return int(self._stream)

    def alloc(self, nbytes: int) -> _Buf:
        return _Buf(int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc")), nbytes)

    def free(self, buf: DeviceBuffer) -> None:
        self._check(self.rt.cudaFree(buf.ptr), "cudaFree")

    def h2d(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(buf.ptr, host.ctypes.data, host.nbytes, kind, self._stream),
                    "cudaMemcpyAsync")

    def d2h(self, host: np.ndarray, buf: DeviceBuffer) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, buf.ptr, host.nbytes, kind, self._stream),
                    "cudaMemcpyAsync")

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            self._check(self.rt.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class TorchCudaBackend:
    """torch CUDA tensors as buffers, on torch's current stream (for use inside a torch process)."""

    name = "torch"

    def __init__(self, device: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailableError("the torch backend needs a CUDA build of torch and a GPU")
        self.torch = torch
        self.device = torch.device("cuda", device)

    @property
    def stream(self) -> int:
        return int(self.torch.cuda.current_stream(self.device).cuda_stream)

    def alloc(self, nbytes: int) -> _Buf:
        t = self.torch.empty(max(1, nbytes), dtype=self.torch.uint8, device=self.device)
        return _Buf(int(t.data_ptr()), nbytes, t)

    def free(self, buf: DeviceBuffer) -> None:
        buf.handle = None  # type: ignore[attr-defined]

    def h2d(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        src = self.torch.from_numpy(np.ascontiguousarray(host).reshape(-1).view(np.uint8))
        buf.handle[: host.nbytes].copy_(src, non_blocking=True)  # type: ignore[attr-defined]

    def d2h(self, host: np.ndarray, buf: DeviceBuffer) -> None:
        dst = self.torch.from_numpy(host.reshape(-1).view(np.uint8))
        dst.copy_(buf.handle[: host.nbytes], non_blocking=False)  # type: ignore[attr-defined]

    def synchronize(self) -> None:
        self.torch.cuda.current_stream(self.device).synchronize()

    def close(self) -> None:
        pass


class PyCudaBackend:
    """PyCUDA on the device's primary context (the one TensorRT and the CUDA runtime use)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        try:
            import pycuda.driver as drv  # type: ignore[import-not-found]
        except ImportError as exc:
            raise RuntimeUnavailableError("pycuda is not installed: pip install pruneopt[pycuda]") from exc
        drv.init()
        self.drv = drv
        self.ctx = drv.Device(device).retain_primary_context()
        self.ctx.push()
        self._stream = drv.Stream()

    @property
    def stream(self) -> int:
        return int(self._stream.handle)

    def alloc(self, nbytes: int) -> _Buf:
        mem = self.drv.mem_alloc(max(1, nbytes))
        return _Buf(int(mem), nbytes, mem)

    def free(self, buf: DeviceBuffer) -> None:
        buf.handle.free()  # type: ignore[attr-defined]

    def h2d(self, buf: DeviceBuffer, host: np.ndarray) -> None:
        self.drv.memcpy_htod_async(buf.ptr, host, self._stream)

    def d2h(self, host: np.ndarray, buf: DeviceBuffer) -> None:
        self.drv.memcpy_dtoh_async(host, buf.ptr, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self.ctx.pop()


def make_backend(kind: str | DeviceBackend = "cuda-python", device: int = 0) -> DeviceBackend:
    """A :class:`DeviceBackend` by name (``cuda-python``, ``torch``, ``pycuda``), or the object given."""
    if not isinstance(kind, str):
        return kind
    if kind == "cuda-python":
        return CudaPythonBackend(device)
    if kind == "torch":
        return TorchCudaBackend(device)
    if kind == "pycuda":
        return PyCudaBackend(device)
    raise RuntimeUnavailableError(f"unknown TensorRT buffer backend {kind!r}; choose one of {', '.join(BACKENDS)}")


def device_facts(device: int = 0) -> dict[str, Any] | None:
    """``{"name", "compute_capability"}`` of a CUDA device via cuda-python, or None when it cannot be asked."""
    try:
        rt = import_cudart()
        err, props = rt.cudaGetDeviceProperties(device)
        if err != rt.cudaError_t.cudaSuccess:
            return None
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except Exception:
        return None


# -- sidecar ---------------------------------------------------------------------------------------------------
def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The sidecar JSON of an engine (raises :class:`EngineError` when it is missing or malformed)."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise EngineError(f"{side} is missing: pruneopt only loads engines it built, with their sidecar; rebuild "
                          f"it with `pruneopt export MODEL.onnx --trt --engine {Path(engine_path).name}`")
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"{side} is not valid JSON ({exc}); rebuild the engine") from exc
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise EngineError(f"{side} is not a pruneopt engine sidecar (format {SIDECAR_FORMAT!r}); rebuild the engine")
    return data


def check_compatible(sidecar: dict[str, Any], trt: ModuleType, engine_path: str | Path,
                     device: dict[str, Any] | None = None) -> None:
    """Refuse an engine from another TensorRT version or GPU generation (:class:`EngineVersionError`)."""
    built, here = str(sidecar.get("tensorrt_version")), trt_version(trt)
    if built != here:
        raise EngineVersionError(
            f"{engine_path} was built by TensorRT {built} but this is TensorRT {here}; engines only load in the "
            "TensorRT version that built them: rebuild it here (pruneopt export MODEL.onnx --trt)"
        )
    cc_built = (sidecar.get("device") or {}).get("compute_capability")
    cc_here = (device or {}).get("compute_capability")
    if cc_built and cc_here and cc_built != cc_here:
        raise EngineVersionError(
            f"{engine_path} was built for a GPU of compute capability {cc_built} "
            f"({sidecar['device'].get('name')}), this GPU is {cc_here} ({device.get('name')}); rebuild it here"  # type: ignore[union-attr]
        )


# -- build -----------------------------------------------------------------------------------------------------
@dataclass
class EngineConfig:
    """Builder settings: batch profile, FP16, workspace limit (MiB) and timing-cache file."""

    profile: BatchProfile = BatchProfile()
    fp16: bool = False
    workspace_mb: int = 1024
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.workspace_mb < 1:
            raise ExportError(f"the TensorRT workspace must be >= 1 MiB, got {self.workspace_mb}")


@dataclass
class EngineBuild:
    """A built engine: its path, sidecar, and how FP16 was obtained."""

    path: Path
    sidecar: dict[str, Any]
    fp16_mode: str | None
    timing_cache_entries_reused: bool


def _make_logger(trt: ModuleType) -> Any:
    """TensorRT's stock logger at WARNING severity (it prints to stderr)."""
    return trt.Logger(trt.Logger.WARNING)


def _onnx_input(model: Any) -> tuple[str, tuple[int, ...]]:
    init = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in init]
    if len(inputs) != 1:
        raise EngineError(f"the ONNX has {len(inputs)} inputs; pruneopt engines take exactly one image batch")
    dims = inputs[0].type.tensor_type.shape.dim
    chw = tuple(int(d.dim_value) for d in dims[1:])
    if len(dims) < 2 or any(d <= 0 for d in chw):
        raise EngineError(f"the ONNX input {inputs[0].name!r} needs fixed non-batch dimensions, got {list(dims)}")
    return inputs[0].name, chw


def build_engine(onnx_path: str | Path, engine_path: str | Path, config: EngineConfig | None = None, *,
                 trt: ModuleType | None = None, device: dict[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> EngineBuild:
    """Build, serialise and describe a TensorRT engine for an ONNX exported by ``pruneopt export``."""
    from .fp16 import convert_to_fp16
    from .metadata import load_onnx

    trt = import_tensorrt(trt)
    config = config or EngineConfig()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model = load_onnx(onnx_path)
    props = {m.key: m.value for m in model.metadata_props}
    input_name, chw = _onnx_input(model)
    mode = fp16_strategy(trt) if config.fp16 else None
    if mode == "strongly-typed":
        model, report = convert_to_fp16(model)
        if log:
            log(f"fp16 (strongly typed): {report.fp16_nodes} nodes in float16, {report.fp32_nodes} kept in float32"
                f", {report.casts} casts" + (f", {report.clipped_values} weights clipped" if report.clipped_values
                                           else ""))
    onnx_bytes = model.SerializeToString()

    logger = _make_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, strongly_typed=mode == "strongly-typed"))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {'; '.join(errors) or 'unknown parser error'}")
    bconfig = builder.create_builder_config()
    bconfig.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if mode == "builder-flag":
        bconfig.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    lo, opt, hi = config.profile.shapes(chw)
    for i in range(network.num_inputs):
        profile.set_shape(network.get_input(i).name, lo, opt, hi)
    bconfig.add_optimization_profile(profile)

    reused = False
    if config.timing_cache is not None:
        cache_path = Path(config.timing_cache)
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        reused = bool(blob)
        try:
            cache = bconfig.create_timing_cache(blob)
        except Exception:  # TensorRT raises or returns None on a cache it cannot read
            cache = None
        if cache is None and blob:  # unreadable cache file: start a fresh one rather than fail the build
            if log:
                log(f"timing cache {cache_path} is unreadable; starting a new one")
            cache, reused = bconfig.create_timing_cache(b""), False
        bconfig.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, bconfig)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above; a "
                          "larger --workspace-mb or a smaller --trt-max-batch may help)")
    engine_bytes = bytes(serialized)
    if config.timing_cache is not None:
        _atomic_write(Path(config.timing_cache), bytes(bconfig.get_timing_cache().serialize()))

    sidecar = {
        "format": SIDECAR_FORMAT,
        "tensorrt_version": trt_version(trt),
        "precision": "fp16" if config.fp16 else "fp32",
        "fp16_mode": mode,
        "profile": asdict(config.profile),
        "input_name": input_name,
        "input_shape": list(chw),
        "workspace_mb": config.workspace_mb,
        "engine_bytes": len(engine_bytes),
        "engine_sha256": _sha256(engine_bytes),
        "onnx": str(onnx_path),
        "onnx_graph_digest": props.get("pruneopt.graph_digest") or _sha256(onnx_path.read_bytes()),
        "device": device if device is not None else device_facts(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metadata": {k: v for k, v in props.items() if k.startswith("pruneopt.")},
    }
    _atomic_write(engine_path, engine_bytes)
    _atomic_write(sidecar_path(engine_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    return EngineBuild(engine_path, sidecar, mode, reused)


# -- load and run ----------------------------------------------------------------------------------------------
@dataclass
class LoadedEngine:
    engine: Any
    runtime: Any  # keeps the runtime alive as long as the engine
    sidecar: dict[str, Any]


def load_engine(engine_path: str | Path, *, trt: ModuleType | None = None,
                device: dict[str, Any] | None = None) -> LoadedEngine:
    """Deserialise an engine after checking its sidecar: TensorRT version, GPU, and the bytes' SHA-256."""
    p = Path(engine_path)
    if not p.is_file():
        raise EngineError(f"{p} does not exist (build one with `pruneopt export MODEL.onnx --trt`)")
    sidecar = read_sidecar(p)
    trt = import_tensorrt(trt)
    check_compatible(sidecar, trt, p, device if device is not None else device_facts())
    data = p.read_bytes()
    if len(data) != sidecar.get("engine_bytes") or _sha256(data) != sidecar.get("engine_sha256"):
        raise EngineError(f"{p} is truncated or corrupted ({len(data)} bytes, its sidecar says "
                          f"{sidecar.get('engine_bytes')} with another checksum); rebuild the engine")
    runtime = trt.Runtime(_make_logger(trt))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineError(f"TensorRT could not deserialise {p} (see its log); rebuild the engine")
    return LoadedEngine(engine, runtime, sidecar)


class TrtRunner:
    """Runs a pruneopt TensorRT engine on numpy batches (one input, the first output returned)."""

    def __init__(self, engine_path: str | Path, *, backend: str | DeviceBackend = "cuda-python", device: int = 0,
                 trt: ModuleType | None = None, device_info: dict[str, Any] | None = None) -> None:
        self.trt = import_tensorrt(trt)
        self.backend = make_backend(backend, device)  # before loading: the CUDA context must exist
        try:
            loaded = load_engine(engine_path, trt=self.trt, device=device_info)
        except BaseException:
            self.backend.close()
            raise
        self.engine, self._runtime, self.sidecar = loaded.engine, loaded.runtime, loaded.sidecar
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for {engine_path} (out of memory?)")
        self.tensors = io_tensors(self.engine, self.trt)
        inputs = [t for t in self.tensors if t.mode == "input"]
        self.outputs = [t for t in self.tensors if t.mode == "output"]
        if len(inputs) != 1 or not self.outputs:
            raise EngineError(f"{engine_path}: expected one input and at least one output, got "
                              f"{len(inputs)} / {len(self.outputs)}")
        self.input = inputs[0]
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input.name, 0)
        self.max_batch = int(max_shape[0])
        self._buffers: dict[str, _Buf] = {}
        self._capacity = 0
        self.name = "trt"
        self.engine_path = Path(engine_path)

    @property
    def providers(self) -> list[str]:
        return [f"TensorRT {trt_version(self.trt)} ({self.sidecar.get('precision')}, {self.backend.name})"]

    def info(self) -> dict[str, Any]:
        return {"runtime": "trt", "providers": self.providers, "device": self.sidecar.get("device"),
                "precision": self.sidecar.get("precision"), "max_batch": self.max_batch,
                "backend": self.backend.name}

    def _ensure_buffers(self, batch: int, shapes: dict[str, tuple[int, ...]]) -> None:
        if batch <= self._capacity:
            return
        cap = capacity_batch(batch, self.max_batch)
        for buf in self._buffers.values():
            self.backend.free(buf)
        self._buffers = {}
        for t in self.tensors:
            per_item = tensor_nbytes(shapes[t.name][1:], t.dtype)
            self._buffers[t.name] = self.backend.alloc(per_item * cap)  # type: ignore[assignment]
        self._capacity = cap

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self.input.dtype)
        want = self.input.shape[1:]
        if x.ndim != len(self.input.shape) or tuple(x.shape[1:]) != tuple(want):
            raise ValueError(f"the engine takes [batch, {', '.join(map(str, want))}], got {list(x.shape)}")
        b = x.shape[0]
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"batch {b} is outside the engine's profile (1..{self.max_batch}); rebuild it with "
                             "a larger --trt-max-batch")
        if not self.context.set_input_shape(self.input.name, x.shape):
            raise EngineError(f"TensorRT rejected the input shape {list(x.shape)}")
        shapes = {t.name: tuple(int(d) for d in self.context.get_tensor_shape(t.name)) for t in self.tensors}
        shapes[self.input.name] = tuple(x.shape)
        self._ensure_buffers(b, shapes)
        for t in self.tensors:
            self.context.set_tensor_address(t.name, self._buffers[t.name].ptr)
        self.backend.h2d(self._buffers[self.input.name], x)
        if not self.context.execute_async_v3(self.backend.stream):
            raise EngineError("TensorRT execute_async_v3 failed (see its log)")
        first = self.outputs[0]
        out = np.empty(shapes[first.name], dtype=first.dtype)
        self.backend.d2h(out, self._buffers[first.name])
        self.backend.synchronize()
        return out

    def close(self) -> None:
        for buf in self._buffers.values():
            self.backend.free(buf)
        self._buffers, self._capacity = {}, 0
        self.context = None
        self.engine = None
        self.backend.close()

    def __enter__(self) -> TrtRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tensorrt_available() -> tuple[bool, str]:
    """Whether the native TensorRT runtime can be used here, and why not."""
    try:
        trt = import_tensorrt()
    except RuntimeUnavailableError as exc:
        return False, str(exc)
    try:
        import_cudart()
    except RuntimeUnavailableError as exc:
        return False, str(exc)
    if device_facts() is None:
        return False, f"TensorRT {trt_version(trt)} is installed but no CUDA device answers to cuda-python"
    return True, ""


__all__ = [
    "BACKENDS", "BatchProfile", "CudaPythonBackend", "DeviceBackend", "EngineBuild", "EngineConfig", "LoadedEngine",
    "PyCudaBackend", "SIDECAR_FORMAT", "TensorInfo", "TorchCudaBackend", "TrtRunner", "build_engine",
    "capacity_batch", "check_compatible", "device_facts", "fp16_strategy", "import_cudart", "import_tensorrt",
    "io_tensors", "load_engine", "make_backend", "network_flags", "numpy_dtype", "read_sidecar", "sidecar_path",
    "tensor_nbytes", "tensorrt_available", "trt_major", "trt_version",
]
