"""Building engines from exported ONNX (:func:`build_engine`).

Parse the ONNX with ``trt.OnnxParser``, add one optimisation profile over the batch axis (min/opt/max), cap the
builder workspace (``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)``), reuse and update a timing-cache
file, and serialise. FP16 is requested the way each TensorRT version supports it
(:func:`~export.tensorrt.compat.fp16_strategy`): the builder flag on TensorRT 10, a float16 ONNX
(:func:`export.fp16.convert_to_fp16`) parsed into a strongly typed network on 11. The engine and its sidecar are
written atomically (:func:`pruneopt.common.files.atomic_write`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from pruneopt.common.files import atomic_write, atomic_write_json

from ..errors import EngineError, ExportError
from ..fp16 import convert_to_fp16
from ..metadata import load_onnx
from .compat import (
    SIDECAR_FORMAT,
    fp16_strategy,
    import_tensorrt,
    make_logger,
    network_flags,
    sha256_hex,
    sidecar_path,
    trt_version,
)
from .devices import device_facts

__all__ = ["BatchProfile", "EngineBuild", "EngineConfig", "build_engine"]

Log = Callable[[str], None]


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


@dataclass
class _Network:
    """A parsed network and the builder objects that must stay alive until it is built (the parser owns the
    network's weights)."""

    builder: Any
    network: Any
    parser: Any
    config: Any


def _parse(trt: ModuleType, onnx_bytes: bytes, onnx_path: Path, mode: str | None, config: EngineConfig,
           chw: Sequence[int]) -> _Network:
    """Parse the ONNX into a network and configure the builder: workspace, FP16 flag, batch profile."""
    logger = make_logger(trt)
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
    return _Network(builder, network, parser, bconfig)


def _use_timing_cache(bconfig: Any, cache_path: Path, log: Log | None) -> bool:
    """Give the builder the timing cache of ``cache_path`` (a fresh one if it is missing or unreadable);
    whether entries were reused."""
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
    return reused


def _fp16_onnx(model: Any, log: Log | None) -> Any:
    """The float16 ONNX a strongly typed network is parsed from."""
    model, report = convert_to_fp16(model)
    if log:
        log(f"fp16 (strongly typed): {report.fp16_nodes} nodes in float16, {report.fp32_nodes} kept in float32"
            f", {report.casts} casts" + (f", {report.clipped_values} weights clipped" if report.clipped_values
                                       else ""))
    return model


def build_engine(onnx_path: str | Path, engine_path: str | Path, config: EngineConfig | None = None, *,
                 trt: ModuleType | None = None, device: dict[str, Any] | None = None,
                 log: Log | None = None) -> EngineBuild:
    """Build, serialise and describe a TensorRT engine for an ONNX exported by ``pruneopt export``."""
    trt = import_tensorrt(trt)
    config = config or EngineConfig()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    model = load_onnx(onnx_path)
    props = {m.key: m.value for m in model.metadata_props}
    input_name, chw = _onnx_input(model)
    mode = fp16_strategy(trt) if config.fp16 else None
    if mode == "strongly-typed":
        model = _fp16_onnx(model, log)
    net = _parse(trt, model.SerializeToString(), onnx_path, mode, config, chw)
    reused = False
    if config.timing_cache is not None:
        reused = _use_timing_cache(net.config, Path(config.timing_cache), log)
    serialized = net.builder.build_serialized_network(net.network, net.config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above; a "
                          "larger --workspace-mb or a smaller --trt-max-batch may help)")
    engine_bytes = bytes(serialized)
    if config.timing_cache is not None:
        _write(Path(config.timing_cache), bytes(net.config.get_timing_cache().serialize()))
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
        "engine_sha256": sha256_hex(engine_bytes),
        "onnx": str(onnx_path),
        "onnx_graph_digest": props.get("pruneopt.graph_digest") or sha256_hex(onnx_path.read_bytes()),
        "device": device if device is not None else device_facts(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metadata": {k: v for k, v in props.items() if k.startswith("pruneopt.")},
    }
    _write(engine_path, engine_bytes)
    atomic_write_json(sidecar_path(engine_path), sidecar)
    return EngineBuild(engine_path, sidecar, mode, reused)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
