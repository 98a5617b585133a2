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

Modules: :mod:`.compat` (importing TensorRT, versions, the sidecar and its checks), :mod:`.devices` (buffer
backends), :mod:`.build` (building engines) and :mod:`.runtime` (loading and running them).
"""

from __future__ import annotations

from .build import BatchProfile, EngineBuild, EngineConfig, build_engine
from .compat import (
    SIDECAR_FORMAT,
    TRT_MISSING,
    check_compatible,
    fp16_strategy,
    import_tensorrt,
    network_flags,
    read_sidecar,
    sidecar_path,
    trt_major,
    trt_version,
)
from .devices import (
    BACKENDS,
    CUDA_PYTHON_MISSING,
    CudaPythonBackend,
    DeviceBackend,
    DeviceBuffer,
    PyCudaBackend,
    TorchCudaBackend,
    device_facts,
    import_cudart,
    make_backend,
)
from .runtime import (
    LoadedEngine,
    TensorInfo,
    TrtRunner,
    capacity_batch,
    io_tensors,
    load_engine,
    numpy_dtype,
    tensor_nbytes,
    tensorrt_available,
)

__all__ = [
    "BACKENDS", "CUDA_PYTHON_MISSING", "SIDECAR_FORMAT", "TRT_MISSING", "BatchProfile", "CudaPythonBackend",
    "DeviceBackend", "DeviceBuffer", "EngineBuild", "EngineConfig", "LoadedEngine", "PyCudaBackend", "TensorInfo",
    "TorchCudaBackend", "TrtRunner", "build_engine", "capacity_batch", "check_compatible", "device_facts",
    "fp16_strategy", "import_cudart", "import_tensorrt", "io_tensors", "load_engine", "make_backend", "network_flags",
    "numpy_dtype", "read_sidecar", "sidecar_path", "tensor_nbytes", "tensorrt_available", "trt_major", "trt_version",
]
