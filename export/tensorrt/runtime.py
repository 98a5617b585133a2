"""Running engines: :func:`load_engine` (sidecar checks, then deserialisation) and :class:`TrtRunner` on the
name-based (v3) execution API: ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``; tensor names
from ``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import EngineError, RuntimeUnavailableError
from .compat import check_compatible, import_tensorrt, make_logger, read_sidecar, sha256_hex, trt_version
from .devices import Buffer, DeviceBackend, device_facts, import_cudart, make_backend

__all__ = [
    "LoadedEngine", "TensorInfo", "TrtRunner", "capacity_batch", "io_tensors", "load_engine", "numpy_dtype",
    "tensor_nbytes", "tensorrt_available",
]

# TensorRT DataType name -> numpy dtype (BF16 / FP8 / INT4 I/O have no numpy type and are refused)
_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
           "BOOL": np.bool_, "UINT8": np.uint8}


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
    if len(data) != sidecar.get("engine_bytes") or sha256_hex(data) != sidecar.get("engine_sha256"):
        raise EngineError(f"{p} is truncated or corrupted ({len(data)} bytes, its sidecar says "
                          f"{sidecar.get('engine_bytes')} with another checksum); rebuild the engine")
    runtime = trt.Runtime(make_logger(trt))
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
        self._buffers: dict[str, Buffer] = {}
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

