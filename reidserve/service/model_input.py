"""What the service feeds a model, and where it learnt it (:func:`read_model_input`, :func:`assume_input`).

A model written by ``pruneopt export`` carries its input facts (size, colour, mean/std) in its metadata (an ONNX
file's ``metadata_props``, a TensorRT engine's sidecar); flags that contradict them are refused. An ONNX model from
elsewhere has none: ``reidserve serve`` takes it when ``--input``, ``--mean`` and ``--std`` (and optionally
``--colour``) say how to feed it, runs one batch at start to check that the model accepts that input and gives one
finite ``[batch, dim]`` output row per image, and logs the values it assumed. No torch is imported here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.metadata import PREFIX, ExportMetadata, load_onnx, metadata_of
from pruneopt.errors import PruneoptError

from ..errors import ReidserveError
from .settings import GivenInput

__all__ = ["ModelLoadError", "assume_input", "check_agrees", "described_input", "read_model_input"]

log = logging.getLogger(__name__)

HOW_TO_DESCRIBE = "--input CxHxW --mean M[,M,M] --std S[,S,S] [--colour RGB|L]"
_PROBE_BATCH = 2


class ModelLoadError(ReidserveError):
    """The model cannot be served (missing, not exported by pruneopt, unsupported input, runtime missing)."""


def read_model_input(path: Path) -> tuple[ExportMetadata | None, str]:
    """The pruneopt metadata of ``path`` (None for an ONNX file without any) and the model's id (its graph digest,
    else a hash of the file)."""
    try:
        if path.suffix in (".engine", ".plan"):
            from export.tensorrt import read_sidecar  # lazy: only for TensorRT engines

            side = read_sidecar(path)
            meta = ExportMetadata.from_props(side.get("metadata") or {}, f"{path} (sidecar)")
            return meta, str(side.get("onnx_graph_digest") or side.get("engine_sha256") or "")
        if path.suffix != ".onnx":
            raise ModelLoadError(f"--model {path}: give an .onnx file from `pruneopt export --onnx` (or any ONNX "
                                 f"model with {HOW_TO_DESCRIBE}), or a TensorRT .engine/.plan from `pruneopt "
                                 "export --trt`")
        model = load_onnx(path, check=False)
        if not any(m.key.startswith(PREFIX) for m in model.metadata_props):
            return None, hashlib.sha256(path.read_bytes()).hexdigest()
        meta = metadata_of(model, str(path))
        return meta, meta.graph_digest or hashlib.sha256(path.read_bytes()).hexdigest()
    except PruneoptError as exc:
        raise ModelLoadError(str(exc)) from exc


def check_agrees(meta: ExportMetadata, given: GivenInput, path: Path) -> None:
    """Refuse flags that contradict the model's metadata (they cannot be meant: the metadata is what it was
    exported with)."""
    facts: dict[str, tuple[Any, Any]] = {
        "--input": (given.input_shape, tuple(meta.input_shape)),
        "--colour": (given.colour, meta.color),
        "--mean": (given.mean, tuple(meta.mean)),
        "--std": (given.std, tuple(meta.std)),
    }
    for flag, (wanted, known) in facts.items():
        if wanted is None:
            continue
        if flag in ("--mean", "--std"):
            wanted = wanted * len(known) if len(wanted) == 1 and given.input_shape is None else wanted
            same = len(wanted) == len(known) and bool(np.allclose(wanted, known, rtol=0, atol=1e-6))
        else:
            same = wanted == known
        if not same:
            shown = "x".join(map(str, known)) if flag == "--input" else known
            raise ModelLoadError(f"{path}: {flag} {_show(wanted)} contradicts the model's pruneopt metadata "
                                 f"({flag[2:]} {_show(shown)}); drop the flag: a pruneopt export says how it is fed")


def _show(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], int) and len(value) == 3:
        return "x".join(map(str, value))
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return str(value)


def described_input(given: GivenInput | None, path: Path) -> tuple[tuple[int, int, int], tuple[float, ...],
                                                              tuple[float, ...], str]:
    """The input an ONNX model without metadata is fed, from the flags (a :class:`ModelLoadError` naming them when
    they are missing or do not fit together)."""
    missing = [f for f, v in (("--input", given and given.input_shape), ("--mean", given and given.mean),
                              ("--std", given and given.std)) if not v]
    if given is None or missing:
        raise ModelLoadError(f"{path} has no pruneopt metadata (it was not written by `pruneopt export`), so the "
                             f"service does not know how to feed it: give {HOW_TO_DESCRIBE} (missing: "
                             f"{', '.join(missing)}), or export it with `pruneopt export PATH --onnx`")
    assert given.input_shape is not None and given.mean is not None and given.std is not None
    c = given.input_shape[0]
    colour = given.colour or ("L" if c == 1 else "RGB")
    if (c, colour) not in ((3, "RGB"), (1, "L")):
        raise ModelLoadError(f"--input {_show(given.input_shape)} --colour {colour}: the service feeds RGB images to "
                             "3-channel models and grey (L) images to 1-channel models")
    return given.input_shape, given.mean, given.std, colour


def assume_input(path: Path, runner: Any, given: GivenInput | None) -> ExportMetadata:
    """Metadata for an ONNX model without any, from the flags, checked by running one batch of images through
    ``runner``: the model must take that input and return one finite row per image. Logs what it assumed."""
    shape, mean, std, colour = described_input(given, path)
    c, h, w = shape
    declared = list(getattr(runner, "input_shape", []) or [])
    fixed = [d if isinstance(d, int) and d > 0 else None for d in declared]
    if len(fixed) == 4 and any(d is not None and d != want for d, want in zip(fixed[1:], shape, strict=True)):
        have = "x".join(str(d) if d is not None else "?" for d in fixed[1:])
        raise ModelLoadError(f"{path} takes input {have} (C x H x W) but --input says {_show(shape)}")
    if fixed and fixed[0] is not None and fixed[0] > 1:
        raise ModelLoadError(f"{path} has a fixed batch size of {fixed[0]}; the service runs batches of any size: "
                             "export the model with a dynamic batch axis (or batch 1)")
    batch = 1 if fixed and fixed[0] == 1 else _PROBE_BATCH
    meta = ExportMetadata(arch="", spec={}, spec_hash="", input_shape=shape, mean=mean, std=std,
                          output_kind="embedding", output_dim=0, color=colour,
                          input_name=str(getattr(runner, "input_name", "input")),
                          output_name=str(getattr(runner, "output_name", "output")),
                          max_batch=batch if batch == 1 else ExportMetadata.max_batch, exporter="unknown")
    pixels = np.random.default_rng(0).integers(0, 256, size=(batch, h, w, c), dtype=np.uint8)
    try:
        y = np.asarray(runner.run(meta.preprocess(pixels)))
    except Exception as exc:  # whatever the runtime raises: the model does not take this input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} does not run on a batch of {batch} {_show(shape)} images ({first[:300]}); "
                             "check --input") from exc
    if y.ndim != 2 or y.shape[0] != batch:
        raise ModelLoadError(f"{path} returned shape {list(y.shape)} for a batch of {batch} images; the service "
                             "needs one row per image ([batch, dim]: an embedding or logits)")
    if not np.isfinite(y).all():
        raise ModelLoadError(f"{path} returned NaN or infinite values on a batch of {batch} images at the given "
                             "--mean/--std; check them")
    meta = dataclasses.replace(meta, output_dim=int(y.shape[1]))
    log.warning("%s has no pruneopt metadata; assuming (from the command line) input %s, colour %s, pixels x 1/255, "
                "mean %s, std %s; checked on a batch of %d: %d-d output, L2-normalised by the service", path.name,
                _show(shape), colour, _show(mean), _show(std), batch, meta.output_dim)
    return meta
