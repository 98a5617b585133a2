"""Thinning: cut a trained parent down to a sampled subnetwork, keeping its most important filters.

``thin(parent, spec)`` builds a new, physically smaller network (real conv / batch-norm / linear shapes, no masks)
and fills it from the parent. In every prunable group (channel slot) it keeps the channels with the largest
importance, summed over all layers that write the group (a residual-tied group scores each channel over every
block of its stage), and slices the batch norms and the next layers' input channels to match. Kept channels stay
in their original order, so thinning to the parent's own widths reproduces the parent exactly.

Importance criteria: ``"l1"`` (default; sum of absolute filter weights, Li et al. 2017), ``"l2"`` (filter norm),
``"bn"`` (absolute batch-norm scale, as in network slimming).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import SpecError
from .models import ModelSpec, get_arch
from .models.graph import Layer


def _filter_scores(layer: Layer, module: nn.Module, criterion: str) -> torch.Tensor | None:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    w = weight.detach()
    if layer.kind == "conv" and criterion in ("l1", "l2"):
        order = 1 if criterion == "l1" else 2
        return torch.linalg.vector_norm(w.flatten(1), ord=order, dim=1, dtype=torch.float64)
    if layer.kind == "bn" and criterion == "bn":
        return w.abs().double()
    return None


CRITERIA = ("l1", "l2", "bn")


def channel_importance(parent: nn.Module, criterion: str = "l1") -> dict[str, torch.Tensor]:
    """Per-slot channel scores of a model built by :mod:`pruneopt.models` (summed over each slot's writers)."""
    if criterion not in CRITERIA:
        raise SpecError(f"unknown importance criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    spec = _spec_of(parent)
    modules = dict(parent.named_modules())
    scores: dict[str, torch.Tensor] = {}
    for layer in get_arch(spec.arch).layers(spec):
        if not isinstance(layer.cout, str):
            continue
        s = _filter_scores(layer, modules[layer.name], criterion)
        if s is not None:
            scores[layer.cout] = scores[layer.cout] + s if layer.cout in scores else s
    return scores


def keep_indices(parent: nn.Module, spec: ModelSpec, criterion: str = "l1") -> dict[str, torch.Tensor]:
    """For each slot, the (sorted) parent channel indices that ``spec`` keeps."""
    pspec = _spec_of(parent)
    _check_compatible(pspec, spec)
    scores = channel_importance(parent, criterion)
    keep: dict[str, torch.Tensor] = {}
    for slot, n in spec.width_map().items():
        order = torch.argsort(scores[slot], descending=True, stable=True)
        keep[slot] = torch.sort(order[:n]).values
    return keep


def thin(parent: nn.Module, spec: ModelSpec, criterion: str = "l1") -> nn.Module:
    """A new ``nn.Module`` with ``spec``'s widths, holding the parent's most important filters."""
    pspec = _spec_of(parent)
    keep = keep_indices(parent, spec, criterion)
    arch = get_arch(spec.arch)
    child = arch.build(spec)
    src = dict(parent.named_modules())
    dst = dict(child.named_modules())
    filled: set[str] = set()

    def idx(ch: str | int) -> torch.Tensor | slice:
        return keep[ch] if isinstance(ch, str) else slice(None)

    with torch.no_grad():
        for layer in arch.layers(pspec):
            a, b = src[layer.name], dst[layer.name]
            out_i, in_i = idx(layer.cout), idx(layer.cin)
            own = [*b.named_parameters(recurse=False), *b.named_buffers(recurse=False)]
            for name, tensor in own:
                t = getattr(a, name)
                if t.dim() > 0:  # every per-channel tensor is indexed by output channel first
                    t = t[out_i]
                    if name == "weight" and layer.kind in ("conv", "linear") and not layer.depthwise:
                        t = t[:, in_i]
                tensor.copy_(t)
                filled.add(f"{layer.name}.{name}")
    missing = set(child.state_dict()) - filled
    if missing:  # the channel graph and the module disagree: a bug in an architecture definition
        raise RuntimeError(f"thinning left tensors unfilled: {sorted(missing)[:5]}")
    child.train(parent.training)
    return child


def _spec_of(model: nn.Module) -> ModelSpec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise SpecError("thinning needs a model built by pruneopt.models (it carries its spec as model.spec)")
    return spec


def _check_compatible(parent: ModelSpec, spec: ModelSpec) -> None:
    if spec.arch != parent.arch:
        raise SpecError(f"cannot thin a {parent.arch} parent to a {spec.arch} spec")
    for field in ("in_chans", "num_classes", "last_stride", "features_only"):
        if getattr(spec, field) != getattr(parent, field):
            raise SpecError(
                f"spec {field}={getattr(spec, field)!r} differs from the parent's {getattr(parent, field)!r}"
            )
    spec.validate()
    wider = [
        f"{s}: {w} > {p}"
        for s, w, p in zip(parent.slots, spec.widths, parent.widths, strict=True)
        if w > p
    ]
    if wider:
        raise SpecError(f"spec is wider than the parent in {len(wider)} slot(s): {', '.join(wider[:4])}")
