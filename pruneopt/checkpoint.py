"""A subnetwork on disk: ``spec.json`` + ``weights.safetensors``, rebuildable without its parent.

This module is the one reader and writer of "a spec file next to a safetensors file": :func:`read_subnet` and
:func:`write_subnet` take the weights file's name, so other folder layouts built on the same pair (a re-ID model
folder holds ``spec.json`` + ``model.safetensors``) load and save through them too. Both files are written
atomically (:func:`pruneopt.common.files.atomic_write`): a crash never leaves a half-written one behind.

A model that is more than a pruneopt network (a re-ID backbone with its pooling and neck) saves its own folder:
:func:`save_subnet` hands it over when it has a ``save_folder`` method (:class:`SavesOwnFolder`), so a stage that
saves "the model" (the search's winner) writes whatever folder that model is read back from (see
:mod:`pruneopt.model_formats`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .common.files import atomic_write
from .errors import SpecError
from .models import ModelSpec, build
from .preprocess import Preprocess

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"


def write_subnet(folder: str | os.PathLike[str], spec: ModelSpec, state: Mapping[str, torch.Tensor], *,
                 weights_file: str = WEIGHTS_FILE, metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` (to ``weights_file``, with ``metadata``) and ``spec`` (to ``spec.json``) into ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(out / weights_file, safetensors_bytes(tensors, metadata=metadata))
    spec.save(out / SPEC_FILE)
    return out


@runtime_checkable
class SavesOwnFolder(Protocol):
    """A model that writes its own folder (spec, weights, preprocessing record) instead of a subnetwork folder."""

    def save_folder(self, folder: Path, preprocess: Preprocess | None) -> Path:
        """Write the model into ``folder`` (with ``preprocess``, corrected to what this model outputs)."""
        ...


def save_subnet(model: nn.Module, folder: str | os.PathLike[str], preprocess: Preprocess | None = None) -> Path:
    """Write ``model`` (built by :mod:`pruneopt.models`) to ``folder``; returns the folder.

    ``preprocess`` (how its input is made, what it outputs) goes beside the spec as ``preprocess.json``. A model
    with its own folder format (:class:`SavesOwnFolder`) writes that instead.
    """
    if isinstance(model, SavesOwnFolder):
        return model.save_folder(Path(folder), preprocess)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise SpecError("only models built by pruneopt.models can be saved as a subnetwork (model.spec is missing)")
    out = write_subnet(folder, spec, model.state_dict(), metadata={"spec_hash": spec.hash(), "arch": spec.arch})
    if preprocess is not None:
        if preprocess.input_shape[0] != spec.in_chans:
            raise SpecError(f"the preprocessing feeds {preprocess.input_shape[0]} channel(s) to a {spec.arch} with "
                            f"in_chans={spec.in_chans}")
        preprocess.save(out)
    return out


def read_subnet(folder: str | os.PathLike[str], *, weights_file: str = WEIGHTS_FILE,
                device: str = "cpu") -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and the (unchecked) state dict of a folder holding ``spec.json`` and ``weights_file``.

    Raises :class:`SpecError` naming the file when either is missing or unreadable.
    """
    root = Path(folder)
    spec = ModelSpec.load(root / SPEC_FILE)
    weights = root / weights_file
    if not weights.is_file():
        raise SpecError(f"{weights} is missing (a subnetwork folder holds {SPEC_FILE} and {weights_file})")
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError) as exc:
        raise SpecError(f"{weights}: cannot read weights: {exc}") from exc
    return spec, state


def state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], shown: int = 3) -> str | None:
    """How ``state`` fails to fit ``model``, in one line naming the first ``shown`` tensors of each kind (shape
    mismatches, missing, unexpected), or ``None`` when every key is there with its shape."""
    want = model.state_dict()
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in want.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]

    def first(items: list[str]) -> str:
        return "; ".join(items[:shown]) + ("; ..." if len(items) > shown else "")

    parts = []
    if shapes:
        parts.append(f"{len(shapes)} of {len(want)} tensors differ in shape (" + first(
            [f"{k}: saved {list(a)} vs model {list(b)}" for k, a, b in shapes]) + ")")
    if missing:
        parts.append(f"{len(missing)} missing ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({first(unexpected)})")
    return ", ".join(parts) if parts else None


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                      error: type[Exception] = SpecError) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch raises ``error("{what}: <mismatch>")``, naming
    the first mismatching keys and their shapes (:func:`state_mismatch`)."""
    problem = state_mismatch(model, state)
    if problem is not None:
        raise error(f"{what}: {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        text = " ".join(str(exc).split())
        raise error(f"{what}: {text[:300] or type(exc).__name__}") from exc


def load_subnet(folder: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a subnetwork saved by :func:`save_subnet` (in eval mode)."""
    root = Path(folder)
    spec, state = read_subnet(root)
    model = build(spec)
    load_state_strict(model, state, f"{root / WEIGHTS_FILE} does not fit {root / SPEC_FILE}")
    return model.eval()
