"""One runner protocol for PyTorch eager, ONNX Runtime (CPU / CUDA / TensorRT providers) and native TensorRT.

A :class:`Runner` has a ``name``, ``providers`` (what really runs it), ``info()`` (device facts),
``run(batch: np.ndarray) -> np.ndarray`` and ``close()``. :func:`make_runner` builds one by kind:

=============  =====================================  =============================================
kind           model path                             runs on
=============  =====================================  =============================================
``torch``      subnetwork folder (spec + weights)     CUDA when torch sees a GPU, else CPU
``torch-cpu``  subnetwork folder                      CPU
``torch-cuda`` subnetwork folder                      CUDA
``ort-cpu``    ``.onnx``                              ONNX Runtime CPUExecutionProvider
``ort-cuda``   ``.onnx``                              CUDAExecutionProvider (IOBinding)
``ort-trt``    ``.onnx``                              TensorrtExecutionProvider (IOBinding)
``trt``        ``.engine`` with its ``.engine.json``  TensorRT, name-based v3 API
=============  =====================================  =============================================

This module does not import torch: only the torch runner does, when it is created, so a service that serves ONNX
Runtime or TensorRT runners never loads it.

ONNX Runtime silently falls back to the CPU when a GPU provider is missing or fails to initialise; the
:class:`OrtRunner` checks which provider the session really got and, with ``strict=True`` (the default), raises
:class:`~export.errors.RuntimeUnavailableError` instead, or warns and records the fallback with ``strict=False``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pruneopt.common.threads import torch_threads

from .errors import OnnxFileError, RuntimeUnavailableError
from .metadata import ExportMetadata, load_onnx

RUNTIMES = ("torch", "torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-trt", "trt")
ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


@runtime_checkable
class Runner(Protocol):
    """What the benchmark and the re-ID service need from a runtime."""

    name: str

    @property
    def providers(self) -> list[str]: ...
    def info(self) -> dict[str, Any]: ...
    def run(self, batch: np.ndarray) -> np.ndarray: ...
    def close(self) -> None: ...


class _Closing:
    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # type: ignore[attr-defined]


class OrtRunner(_Closing):
    """An ONNX Runtime session on one execution provider (``device``: ``cpu``, ``cuda`` or ``trt``).

    ``threads`` sets ``intra_op_num_threads`` (None: ONNX Runtime's default, one per physical core);
    ``spin=False`` stops idle intra-op threads from busy-waiting between runs (fairer when several runtimes share
    the cores). On GPU providers inputs and outputs go through IOBinding (``io_binding=None`` means: on GPU only).
    ``trt_options`` are extra TensorRT-provider options (engine cache path, ``trt_fp16_enable``, profile shapes).
    The pruneopt graph digest is checked first when the file has one (``verify_integrity``).
    """

    def __init__(self, path: str | Path, device: str = "cpu", *, strict: bool = True, threads: int | None = None,
                 spin: bool = True, io_binding: bool | None = None, trt_options: dict[str, Any] | None = None,
                 verify_integrity: bool = True, device_id: int = 0) -> None:
        import onnxruntime as ort  # lazy: onnxruntime only for its runners

        if device not in ORT_PROVIDERS:
            raise RuntimeUnavailableError(f"unknown ONNX Runtime device {device!r}; choose cpu, cuda or trt")
        self.path = Path(path)
        if verify_integrity:
            load_onnx(self.path, check=False)
        elif not self.path.is_file():
            raise OnnxFileError(f"{self.path} does not exist")
        self.ort = ort
        self.name = f"ort-{device}"
        self.device = device
        self.fallback: str | None = None
        wanted = ORT_PROVIDERS[device]
        available = ort.get_available_providers()
        chain: list[Any]
        if device == "cpu":
            chain = ["CPUExecutionProvider"]
        elif wanted not in available:
            self._fail_or_warn(strict, f"{wanted} is not available in onnxruntime {ort.__version__} (available: "
                                       f"{', '.join(available)}); install onnxruntime-gpu"
                                       + (" and TensorRT" if device == "trt" else ""))
            chain = ["CPUExecutionProvider"]
        else:
            cuda = ("CUDAExecutionProvider", {"device_id": device_id})
            if device == "trt":
                opts = {"device_id": device_id, "trt_engine_cache_enable": True, "trt_timing_cache_enable": True,
                        **(trt_options or {})}
                chain = [(wanted, opts), cuda, "CPUExecutionProvider"]
            else:
                chain = [cuda, "CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = threads
        self.spin = spin
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ORT warns on provider fallback; checked explicitly below
                self.session = ort.InferenceSession(str(self.path), so, providers=chain)
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "protobuf" in text.lower() or "INVALID_PROTOBUF" in text or "invalid model" in text.lower():
                raise OnnxFileError(f"{self.path} cannot be loaded by ONNX Runtime ({text}); the file is truncated "
                                    "or corrupted: export it again") from exc
            raise RuntimeUnavailableError(f"ONNX Runtime cannot create a {wanted} session for {self.path}: {text}") \
                from exc
        got = self.session.get_providers()
        if device != "cpu" and self.fallback is None and (not got or got[0] != wanted):
            self._fail_or_warn(strict, f"{wanted} was requested but the session runs on {got[0] if got else 'none'}"
                                       " (the provider failed to initialise: check the CUDA/cuDNN/TensorRT libraries)")
        self._providers = list(got)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise OnnxFileError(f"{self.path} has {len(inputs)} inputs; a runner feeds exactly one image batch")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape = list(inputs[0].shape)
        self._dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        on_gpu = self._providers[0] != "CPUExecutionProvider"
        self.io_binding = on_gpu if io_binding is None else io_binding
        self._bind_device = "cuda" if on_gpu else "cpu"
        self.device_id = device_id
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.metadata: ExportMetadata | None = ExportMetadata.from_props(props, str(self.path))
        except OnnxFileError:
            self.metadata = None

    def _fail_or_warn(self, strict: bool, message: str) -> None:
        if strict:
            raise RuntimeUnavailableError(message)
        self.fallback = message
        warnings.warn(message + "; running on CPUExecutionProvider instead", RuntimeWarning, stacklevel=3)

    @property
    def providers(self) -> list[str]:
        return self._providers

    def info(self) -> dict[str, Any]:
        return {"runtime": self.name, "providers": self._providers, "fallback": self.fallback,
                "threads": self.threads, "spin": self.spin, "io_binding": self.io_binding,
                "onnxruntime": self.ort.__version__}

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self._dtype)
        if not self.io_binding:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        binding = self.session.io_binding()
        value = self.ort.OrtValue.ortvalue_from_numpy(x, self._bind_device, self.device_id)
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, self._bind_device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def close(self) -> None:
        self.session = None


class TorchRunner(_Closing):
    """PyTorch eager inference of a pruneopt network (with the same pooling / normalisation as its export).

    ``threads`` sets torch's intra-op threads for each :meth:`run` (restored afterwards; None: torch's setting).
    """

    def __init__(self, model: Any, device: str = "cpu", *, normalize: bool = False, threads: int | None = None) -> None:
        import torch  # lazy: torch only for the PyTorch runner

        from .onnx import ExportWrapper, load_model

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeUnavailableError("torch-cuda needs a CUDA build of torch and a GPU (torch.cuda is not "
                                          "available)")
        self.threads = int(threads) if threads else None
        self.torch = torch
        module = model if isinstance(model, torch.nn.Module) else load_model(Path(model))
        self.module = ExportWrapper(module, normalize).eval().to(device)
        self.device = torch.device(device)
        self.name = f"torch-{device}"

    @property
    def providers(self) -> list[str]:
        if self.device.type == "cuda":
            return [f"torch {self.torch.__version__} CUDA ({self.torch.cuda.get_device_name(self.device)})"]
        return [f"torch {self.torch.__version__} CPU ({self._threads()} threads)"]

    def info(self) -> dict[str, Any]:
        return {"runtime": self.name, "providers": self.providers, "threads": self._threads(),
                "torch": self.torch.__version__}

    def _threads(self) -> int:
        return self.threads or self.torch.get_num_threads()

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch_threads(self.threads), self.torch.inference_mode():
            x = self.torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.module(x).float().cpu().numpy()

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def _torch_cuda_available() -> bool:
    try:
        import torch  # lazy: torch only for the PyTorch runner
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_kind(kind: str) -> str:
    """``torch`` -> ``torch-cuda`` when torch sees a GPU, else ``torch-cpu``; other kinds unchanged."""
    if kind not in RUNTIMES:
        raise RuntimeUnavailableError(f"unknown runtime {kind!r}; choose from {', '.join(RUNTIMES)}")
    if kind == "torch":
        return "torch-cuda" if _torch_cuda_available() else "torch-cpu"
    return kind


def runtime_available(kind: str) -> tuple[bool, str]:
    """Whether runtime ``kind`` can run here, and if not, why (without building anything)."""
    kind = resolve_kind(kind)
    if kind == "torch-cpu":
        return True, ""
    if kind == "torch-cuda":
        return (True, "") if _torch_cuda_available() else (False, "torch.cuda is not available (CPU build or no GPU)")
    if kind.startswith("ort-"):
        import onnxruntime as ort  # lazy: onnxruntime only for its runners

        wanted = ORT_PROVIDERS[kind[4:]]
        if wanted in ort.get_available_providers():
            return True, ""
        return False, (f"{wanted} is not in onnxruntime {ort.__version__}'s providers "
                       f"({', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    from .tensorrt import tensorrt_available  # lazy: TensorRT is optional

    return tensorrt_available()


def make_runner(kind: str, model_path: str | Path | Any, *, strict: bool = True, threads: int | None = None,
                spin: bool = True, normalize: bool = False, device_id: int = 0,
                trt_options: dict[str, Any] | None = None, trt_backend: str = "cuda-python",
                verify_integrity: bool = True) -> Runner:
    """A :class:`Runner` of ``kind`` (see the module table) for ``model_path``.

    ``verify_integrity`` (ONNX Runtime kinds) checks the pruneopt graph digest before loading (it parses the file
    once with ``onnx``)."""
    kind = resolve_kind(kind)
    if kind.startswith("torch"):
        if isinstance(model_path, str | os.PathLike) and Path(model_path).suffix in (".onnx", ".engine", ".plan"):
            raise RuntimeUnavailableError(f"the {kind} runtime needs a subnetwork folder (spec.json + weights), "
                                          f"got {model_path}")
        return TorchRunner(model_path, kind.split("-")[1], normalize=normalize, threads=threads)
    path = Path(model_path)
    if kind.startswith("ort-"):
        if path.suffix != ".onnx":
            raise OnnxFileError(f"the {kind} runtime needs an .onnx file, got {path}")
        return OrtRunner(path, kind[4:], strict=strict, threads=threads, spin=spin, trt_options=trt_options,
                         device_id=device_id, verify_integrity=verify_integrity)
    from .tensorrt import TrtRunner  # lazy: TensorRT is optional

    if path.suffix not in (".engine", ".plan"):
        raise OnnxFileError(f"the trt runtime needs a TensorRT .engine built by `pruneopt export --trt`, got {path}")
    return TrtRunner(path, backend=trt_backend, device=device_id)
