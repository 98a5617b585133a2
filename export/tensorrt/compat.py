"""What building and running share: importing TensorRT, its version and FP16 strategy, and the engine sidecar.

Next to ``model.engine`` goes ``model.engine.json`` (:data:`SIDECAR_FORMAT`): the TensorRT version, precision,
profile, I/O names, the GPU it was built on, the SHA-256 of the engine bytes and the ONNX's pruneopt metadata.
:func:`check_compatible` refuses an engine built by another TensorRT version or for another GPU generation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import EngineError, EngineVersionError, RuntimeUnavailableError

__all__ = [
    "SIDECAR_FORMAT", "TRT_MISSING", "check_compatible", "fp16_strategy", "import_tensorrt", "make_logger",
    "network_flags", "read_sidecar", "sha256_hex", "sidecar_path", "trt_major", "trt_version",
]

SIDECAR_FORMAT = "pruneopt.trt/1"
TRT_MISSING = "tensorrt is not installed: pip install pruneopt[trt]"


def import_tensorrt(module: ModuleType | None = None) -> ModuleType:
    """``module`` if given (tests inject a fake), else ``import tensorrt`` with an actionable error."""
    if module is not None:
        return module
    try:
        import tensorrt  # lazy: optional (trt extra)
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


def make_logger(trt: ModuleType) -> Any:
    """TensorRT's stock logger at WARNING severity (it prints to stderr)."""
    return trt.Logger(trt.Logger.WARNING)


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as hex (engine checksums)."""
    return hashlib.sha256(data).hexdigest()


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
