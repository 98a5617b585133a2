"""Verified ONNX export of pruneopt networks (``pruneopt export PATH --onnx``).

:func:`export_onnx` wraps the network (:class:`ExportWrapper`: a features-only network that returns a feature map
gets global average pooling, and optionally L2 normalisation, so it outputs an embedding; a whole model such as a
re-ID backbone + GeM + BNNeck + L2 is exported as it is), exports it with a dynamic batch axis, and

1. uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) and, if that raises, the legacy TorchScript
   exporter, with a warning naming the reason (``exporter="auto"``; ``"dynamo"`` or ``"legacy"`` force one);
2. slims the graph with onnxscript's optimizer (``onnxscript.optimizer.optimize``: constant folding, removal of
   dead and Identity nodes, Conv + BatchNorm fusion; the dynamo exporter runs it through ``optimize=True``, the
   legacy exporter's output gets it afterwards, its batch norms already folded by ``do_constant_folding``; no
   onnxsim), and inlines local functions;
3. refuses graphs with ops outside the standard ONNX domains and graphs whose batch axis is not dynamic, and runs
   ``onnx.checker``;
4. stores the preprocessing and provenance facts in ``metadata_props`` (:mod:`export.metadata`);
5. runs the file in ONNX Runtime (CPU) against PyTorch at several batch sizes, on random inputs and on real
   (``calib``) or generated-realistic images, and fails with :class:`~export.errors.VerificationError` when the
   largest error relative to the largest output magnitude exceeds the tolerance (default 1e-4). A file that fails
   is kept as ``<name>.unverified.onnx``, never at the requested path.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pruneopt import __version__ as PRUNEOPT_VERSION
from pruneopt.complexity import count
from pruneopt.errors import PruneoptError
from pruneopt.model_formats import load_model_folder
from pruneopt.models import ModelSpec, build, get_arch

from .errors import ExportError, VerificationError
from .inputs import random_inputs, realistic_inputs, take
from .metadata import (
    ExportMetadata,
    check_standard_ops,
    default_mean_std,
    load_onnx,
    read_metadata,
    save_onnx,
    write_metadata,
)

__all__ = [
    "ExportFallbackWarning",
    "ExportResult",
    "ExportWrapper",
    "VerificationReport",
    "export_onnx",
    "load_model",
    "read_metadata",
    "verify_onnx",
]

DEFAULT_OPSET = 18
DEFAULT_BATCHES = (1, 7, 64)
DEFAULT_TOLERANCE = 1e-4
EXPORTERS = ("auto", "dynamo", "legacy")


class ExportFallbackWarning(UserWarning):
    """The dynamo exporter failed and the legacy TorchScript exporter was used instead."""


class ExportWrapper(nn.Module):
    """What gets exported: the network, plus pooling (features-only networks that return a feature map) and optional
    L2 normalisation.

    A model whose ``output_normalized`` attribute is true (a whole re-ID model) ends in L2 normalisation already:
    nothing is appended, and the export is marked normalised (:attr:`normalized`).
    """

    def __init__(self, model: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        spec = getattr(model, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise ExportError("only networks built by pruneopt.models can be exported (model.spec is missing)")
        if normalize and not spec.features_only:
            raise ExportError(
                f"--normalize is for embedding networks (features_only specs); this {spec.arch} spec ends in a "
                f"{spec.num_classes}-way classifier and outputs logits"
            )
        self.model = model
        self.spec = spec
        self.model_normalizes = bool(getattr(model, "output_normalized", False))
        self.normalize = normalize and not self.model_normalizes

    @property
    def output_kind(self) -> str:
        return "embedding" if self.spec.features_only else "logits"

    @property
    def normalized(self) -> bool:
        """Whether the exported output is L2-normalised (appended here, or by the model itself)."""
        return self.normalize or self.model_normalizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        if self.spec.features_only and y.dim() == 4:  # a feature map (fixed when traced): pool it
            y = y.mean(dim=(2, 3))
        if self.normalize:
            y = nn.functional.normalize(y, p=2.0, dim=1)
        return y


def load_model(path: str | Path | None = None, arch: str | None = None, *, in_chans: int | None = None,
               num_classes: int | None = None, last_stride: int | None = None,
               features_only: bool = False) -> nn.Module:
    """A model folder of any registered format (:mod:`pruneopt.model_formats`: a subnetwork folder, ``spec.json`` +
    ``weights.safetensors``, e.g. a run's ``winner/``, or a ``spec.json`` next to its weights; a re-ID model or
    training run folder with reidserve installed); or, with ``arch``, the unpruned reference network with random
    weights. Eval mode."""
    if (path is None) == (arch is None):
        raise ExportError("give exactly one of a subnetwork folder (PATH) or --arch NAME")
    if arch is not None:
        spec = get_arch(arch).default_spec(in_chans=in_chans, num_classes=num_classes, last_stride=last_stride or 2,
                                           features_only=features_only)
        return build(spec).eval()
    if any(v is not None for v in (in_chans, num_classes, last_stride)) or features_only:
        raise ExportError("--num-classes, --last-stride and --features-only come from the spec file; do not pass "
                          "them with a subnetwork folder")
    try:
        return load_model_folder(path).model.eval()  # type: ignore[arg-type]
    except ExportError:
        raise
    except PruneoptError as exc:
        raise ExportError(str(exc)) from None


# -- verification ---------------------------------------------------------------------------------------------
@dataclass
class BatchCheck:
    """The error of one verification run: batch size, kind of input, largest absolute and relative error."""

    batch: int
    inputs: str
    max_abs: float
    rel: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "inputs": self.inputs, "max_abs": self.max_abs, "rel": self.rel, "ok": self.ok}


@dataclass
class VerificationReport:
    """ONNX Runtime vs PyTorch at several batch sizes; ``rel`` = max |onnx - torch| / max |torch|."""

    tolerance: float
    checks: list[BatchCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def worst(self) -> BatchCheck:
        return max(self.checks, key=lambda c: c.rel)

    def lines(self) -> list[str]:
        out = [f"{'batch':>5}  {'inputs':<10} {'max abs err':>12} {'rel err':>10}  result"]
        for c in self.checks:
            out.append(f"{c.batch:>5}  {c.inputs:<10} {c.max_abs:>12.3e} {c.rel:>10.3e}  "
                       f"{'ok' if c.ok else f'FAIL (> {self.tolerance:g})'}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


def verify_onnx(path: str | Path, reference: nn.Module, input_shape: tuple[int, int, int], *,
                batches: Sequence[int] = DEFAULT_BATCHES, tolerance: float = DEFAULT_TOLERANCE,
                real: np.ndarray | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, seed: int = 0, threads: int | None = None) -> VerificationReport:
    """Run ``path`` in ONNX Runtime (CPU) and ``reference`` in PyTorch on the same inputs; report the errors.

    Every batch size is checked on standard-normal inputs and on ``real`` inputs (cycled to the batch size) or,
    without them, on generated-realistic images normalised with ``mean``/``std``. Does not raise on a mismatch:
    look at :attr:`VerificationReport.passed`.
    """
    import onnxruntime as ort  # lazy: only when verifying

    load_onnx(path)  # clear errors for broken files, digest check
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from exc
    in_name = sess.get_inputs()[0].name
    if mean is None or std is None:
        mean, std = default_mean_std(input_shape[0])
    cases: list[tuple[int, str, np.ndarray]] = []
    for i, b in enumerate(batches):
        cases.append((b, "random", random_inputs(b, input_shape, seed + i)))
        cases.append((b, "real" if real is not None else "realistic",
                      take(real, b) if real is not None else realistic_inputs(b, input_shape, mean, std, seed + i)))
    # all PyTorch runs first, then all ONNX Runtime runs: alternating two thread pools on a busy machine makes
    # OpenMP's spin-waiting threads crawl (see export.bench)
    reference = reference.eval()
    with torch.inference_mode():
        wants = [reference(torch.from_numpy(x)).float().numpy() for _, _, x in cases]
    report = VerificationReport(tolerance)
    for (b, kind, x), want in zip(cases, wants, strict=True):
        got = sess.run(None, {in_name: x})[0]
        if got.shape != want.shape:
            raise VerificationError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {want.shape} "
                                    f"at batch {b}")
        max_abs = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        rel = max_abs / max(scale, 1e-12)
        ok = bool(np.isfinite(got).all()) and rel <= tolerance
        report.checks.append(BatchCheck(b, kind, max_abs, rel, ok))
    return report


# -- export ---------------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    """A verified export: the file, its metadata, the exporter really used and the verification report."""

    path: Path
    metadata: ExportMetadata
    exporter: str
    fallback_reason: str | None
    verification: VerificationReport | None
    seconds: float


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, out_name: str, opset: int, max_batch: int,
                   slim: bool) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" and the like
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(wrapper, (example,), None, input_names=["input"], output_names=[out_name],
                                        dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True,
                                        optimize=slim, verbose=False)
    finally:
        quiet.setLevel(level)
    if program is None:
        raise ExportError("the dynamo exporter returned no program")
    return program.model_proto


def _export_legacy(wrapper: nn.Module, example: torch.Tensor, out_name: str, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        # the legacy exporter writes to a file-like object too; torch's annotation of `f` names paths only
        torch.onnx.export(wrapper, (example,), buf, input_names=["input"], output_names=[out_name],  # type: ignore[arg-type]
                          dynamic_axes={"input": {0: "batch"}, out_name: {0: "batch"}}, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxscript.optimizer  # lazy: heavy, only when slimming

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return onnxscript.optimizer.optimize(model)


def _check_dynamic_batch(model: onnx.ModelProto) -> None:
    for vi in (*model.graph.input, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ExportError(f"the exported graph has a fixed batch size on {vi.name!r}; the export must keep the "
                              "batch axis dynamic (try --exporter legacy)")


def to_onnx(wrapper: ExportWrapper, input_shape: tuple[int, int, int], *, opset: int = DEFAULT_OPSET,
            exporter: str = "auto", slim: bool = True,
            max_batch: int = 4096) -> tuple[onnx.ModelProto, str, str | None]:
    """Export ``wrapper`` to an in-memory ONNX model: ``(model, exporter used, reason for a fallback or None)``."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not 7 <= opset <= 23:
        raise ExportError(f"--opset must be between 7 and 23, got {opset}")
    out_name = wrapper.output_kind
    wrapper = wrapper.eval()
    example = torch.randn(2, *input_shape)  # batch 2: a size-1 example lets torch.export specialise the axis
    used, reason = exporter, None
    model: onnx.ModelProto | None = None
    if exporter in ("auto", "dynamo"):
        try:
            model = _export_dynamo(wrapper, example, out_name, opset, max_batch, slim)
            used = "dynamo"
        except Exception as exc:
            if exporter == "dynamo":
                raise ExportError(f"the dynamo exporter failed: {_first_line(exc)} (try --exporter legacy)") from exc
            reason = _first_line(exc)
            warnings.warn(f"the dynamo exporter failed ({reason}); falling back to the legacy TorchScript exporter",
                          ExportFallbackWarning, stacklevel=2)
    if model is None:
        try:
            model = _export_legacy(wrapper, example, out_name, opset)
        except Exception as exc:
            raise ExportError(f"the legacy ONNX exporter failed: {_first_line(exc)}") from exc
        used = "legacy"
        if slim:
            model = _slim(model)
    if model.functions:
        from onnx import inliner  # lazy: only for inlining functions

        model = inliner.inline_local_functions(model)
    check_standard_ops(model)
    _check_dynamic_batch(model)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails the ONNX checker: {_first_line(exc)}") from exc
    return model, used, reason


def export_onnx(model: nn.Module, out: str | Path, input_shape: tuple[int, int, int], *,
                opset: int = DEFAULT_OPSET, exporter: str = "auto", slim: bool = True, normalize: bool = False,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, verify: bool = True,
                batches: Sequence[int] = DEFAULT_BATCHES, tolerance: float = DEFAULT_TOLERANCE,
                calib: np.ndarray | None = None, max_batch: int = 4096, seed: int = 0,
                pixel_scale: float = 1.0 / 255.0, extra: dict[str, str] | None = None) -> ExportResult:
    """Export ``model`` (built by :mod:`pruneopt.models`, or a model with a ``spec`` such as a re-ID model) to
    ``out`` as verified ONNX; see the module docstring. ``pixel_scale`` and ``extra`` go into the metadata."""
    t0 = time.perf_counter()
    spec: ModelSpec = getattr(model, "spec", None)  # type: ignore[assignment]
    wrapper = ExportWrapper(model, normalize).eval()
    if input_shape[0] != spec.in_chans:
        raise ExportError(f"--input has {input_shape[0]} channels but the network takes {spec.in_chans}")
    if mean is None or std is None:
        mean, std = default_mean_std(input_shape[0])
    if len(mean) != input_shape[0] or len(std) != input_shape[0] or min(std) <= 0:
        raise ExportError(f"--mean and --std need {input_shape[0]} values (std > 0), got {list(mean)} / {list(std)}")
    if max(batches, default=1) > max_batch:
        raise ExportError(f"verification batch {max(batches)} exceeds the exported maximum batch {max_batch}")
    with torch.inference_mode():
        probe = wrapper(torch.zeros(1, *input_shape))
    if probe.dim() != 2:
        raise ExportError(f"the network outputs a {probe.dim()}-d tensor for one image; expected [batch, features]")
    onnx_model, used, reason = to_onnx(wrapper, input_shape, opset=opset, exporter=exporter, slim=slim,
                                       max_batch=max_batch)
    c = count(spec, input_shape[1:])
    meta = ExportMetadata(
        arch=spec.arch, spec=spec.to_dict(), spec_hash=spec.hash(), input_shape=tuple(input_shape),  # type: ignore[arg-type]
        mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std), output_kind=wrapper.output_kind,
        output_dim=int(probe.shape[1]), normalized=wrapper.normalized, input_name="input",
        output_name=wrapper.output_kind, pixel_scale=float(pixel_scale), extra=dict(extra or {}),
        color="RGB" if input_shape[0] == 3 else "L" if input_shape[0] == 1 else f"{input_shape[0]}-channel",
        max_batch=max_batch, macs=c.macs, params=c.params,
        opset=next((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), opset),
        exporter=used, slimmed=slim, pruneopt_version=PRUNEOPT_VERSION, torch_version=torch.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if reason:
        meta.extra["fallback_reason"] = reason
    write_metadata(onnx_model, meta)
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"--out must end in .onnx, got {out}")
    report = None
    if verify:
        pending = save_onnx(onnx_model, out.with_name(out.stem + ".unverified.onnx"))
        report = verify_onnx(pending, wrapper, input_shape, batches=batches, tolerance=tolerance, real=calib,
                             mean=mean, std=std, seed=seed)
        if not report.passed:
            w = report.worst
            raise VerificationError(
                f"the exported model differs from PyTorch: relative error {w.rel:.2e} (max abs {w.max_abs:.2e}) at "
                f"batch {w.batch} on {w.inputs} inputs, above the tolerance {tolerance:g}; the file is kept at "
                f"{pending} for inspection (try --exporter legacy, or raise --tolerance if the model is fp16-bound)"
            )
        meta.verification = report.to_dict()
        write_metadata(onnx_model, meta)
        save_onnx(onnx_model, out)
        pending.unlink(missing_ok=True)
    else:
        save_onnx(onnx_model, out)
    return ExportResult(out, meta, used, reason, report, time.perf_counter() - t0)
