"""Device memory and copies for :class:`~export.tensorrt.runtime.TrtRunner`: cuda-python (the default, so a
service needs no torch), torch CUDA tensors on torch's current stream, or PyCUDA (on the primary context).
Each package is imported only when its backend is made."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..errors import EngineError, RuntimeUnavailableError

__all__ = [
    "BACKENDS", "CUDA_PYTHON_MISSING", "Buffer", "CudaPythonBackend", "DeviceBackend", "DeviceBuffer", "PyCudaBackend",
    "TorchCudaBackend", "device_facts", "import_cudart", "make_backend",
]

CUDA_PYTHON_MISSING = "cuda-python is not installed: pip install pruneopt[trt] (or use the torch or pycuda backend)"
BACKENDS = ("cuda-python", "torch", "pycuda")


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
class Buffer:
    """A device allocation: its address, size, and the object that keeps it alive."""

    ptr: int
    nbytes: int
    handle: Any = None  # what keeps the allocation alive (torch tensor, pycuda allocation)


def import_cudart() -> ModuleType:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart  # lazy: optional (trt extra)
    except ImportError:
        try:
            from cuda import cudart  # lazy: cuda-python is optional
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

    def alloc(self, nbytes: int) -> Buffer:
        return Buffer(int(self._check(self.rt.cudaMalloc(max(1, nbytes)), "cudaMalloc")), nbytes)

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
        import torch  # lazy: the serving path must not load torch; only this backend uses it

        if not torch.cuda.is_available():
            raise RuntimeUnavailableError("the torch backend needs a CUDA build of torch and a GPU")
        self.torch = torch
        self.device = torch.device("cuda", device)

    @property
    def stream(self) -> int:
        return int(self.torch.cuda.current_stream(self.device).cuda_stream)

    def alloc(self, nbytes: int) -> Buffer:
        t = self.torch.empty(max(1, nbytes), dtype=self.torch.uint8, device=self.device)
        return Buffer(int(t.data_ptr()), nbytes, t)

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
            import pycuda.driver as drv  # lazy: optional (pycuda extra)
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

    def alloc(self, nbytes: int) -> Buffer:
        mem = self.drv.mem_alloc(max(1, nbytes))
        return Buffer(int(mem), nbytes, mem)

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
