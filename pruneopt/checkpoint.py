"""A subnetwork on disk: ``spec.json`` + ``weights.safetensors``, rebuildable without its parent."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import SpecError
from .models import ModelSpec, build

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"


def save_subnet(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model`` (built by :mod:`pruneopt.models`) to ``folder``; returns the folder."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise SpecError("only models built by pruneopt.models can be saved as a subnetwork (model.spec is missing)")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"spec_hash": spec.hash(), "arch": spec.arch})
    tmp.replace(out / WEIGHTS_FILE)  # atomic: a crash never leaves a half-written weights file
    spec.save(out / SPEC_FILE)
    return out


def load_subnet(folder: str | Path) -> nn.Module:
    """Rebuild a subnetwork saved by :func:`save_subnet` (in eval mode)."""
    root = Path(folder)
    spec = ModelSpec.load(root / SPEC_FILE)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise SpecError(f"{weights} is missing (a subnetwork folder holds {SPEC_FILE} and {WEIGHTS_FILE})")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise SpecError(f"{weights}: cannot read weights: {exc}") from exc
    model = build(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
        raise SpecError(f"{weights} does not fit {root / SPEC_FILE}: {first}") from exc
    return model.eval()
