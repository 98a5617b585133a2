"""The usual baselines at a FLOPs target, in the same pruning space as the search.

* **uniform**: every group keeps the same fraction of its channels, chosen so the subnetwork lands at the target;
* **global_l1** (mean-|w| global magnitude): channels of all groups ranked together by their mean absolute filter
  weight (the L1 norm summed over a group's writers, divided by the number of weights those filters hold, so layers
  of different sizes are comparable);
* **layer_l1** (layer-normalised L1): each writer layer's filter L1 norms divided by that layer's largest, averaged
  over a group's writers, then ranked globally (every layer's strongest filter scores 1, whatever its size);
* **bn_gamma** (network slimming): the |gamma| of the batch norm after each of a group's writers, averaged over
  them, ranked globally.

The three global rankings remove the weakest channels until the subnetwork lands closest to the target (every
cut is tried), with each group's width rounded up to the space's multiple and never below the space's smallest keep
ratio (without that floor, global pruning empties whole stages); where a rounding step jumps over the final band
(:data:`FINAL_BAND`), one group of the cuts either side of the target may move by one rounding step to land in it.
All return a spec; :func:`pruneopt.thinning.thin` then keeps each group's largest-L1 filters, as for every model of
the search, except for **bn_gamma**, which keeps the channels of largest |gamma| as network slimming does
(:func:`final_criterion`, used by the tasks' final fine-tunes); the final fine-tune budget is the same for every
model. :data:`FINAL_LABELS` names every final model of a search, baselines and winners, in the order reports
list them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .errors import PruneoptError
from .models import ModelSpec, get_arch
from .pretrained import spec_of
from .space import PruningSpace, Regime

FINAL_LABELS: dict[str, str] = {
    "winner": "search winner (best candidate of the initial and refined spaces)",
    "initial_best": "random search + adaptive BN (EagleEye-style: best candidate of the initial space)",
    "uniform": "uniform width",
    "global_l1": "global magnitude (mean absolute weight per filter)",
    "layer_l1": "layer-normalised L1, ranked globally",
    "bn_gamma": "BN gamma (network slimming), ranked globally",
}
# how each final is cut out of the parent inside its groups: network slimming keeps the channels of largest BN
# gamma, every other final (and every candidate) the filters of largest L1 norm
FINAL_CRITERIA: dict[str, str] = {"bn_gamma": "bn"}
FINAL_BAND = 0.005  # every final model lands within this of its regime's FLOPs fraction (absolute)
BASELINES = ("uniform", "global_l1", "layer_l1", "bn_gamma")  # the FINAL_LABELS keys that are baselines


def _closest(space: PruningSpace, candidates: np.ndarray, regime: Regime, what: str) -> np.ndarray:
    frac = space.stats(candidates).flops_fraction
    best = int(np.argmin(np.abs(frac - regime.fraction)))
    if abs(frac[best] - regime.fraction) > regime.band:
        raise PruneoptError(f"no {what} subnetwork within {regime} (closest: {frac[best]:.3f})")
    chosen: np.ndarray = candidates[best]
    return chosen


def _uniform_widths(space: PruningSpace) -> np.ndarray:
    """Every uniform-width subnetwork of ``space`` (the same keep ratio in every group), one row each."""
    ratios = np.linspace(1.0 / max(g.channels for g in space.groups), 1.0, 4001)
    return space.widths(ratios[:, None] * np.ones((1, len(space.groups))))


def uniform_spec(space: PruningSpace, regime: Regime) -> ModelSpec:
    """The subnetwork keeping the same ratio of every group whose FLOPs fraction is closest to the target."""
    return space.spec(_closest(space, _uniform_widths(space), regime, "uniform-width"))


def uniform_fraction(space: PruningSpace, regime: Regime) -> float:
    """The FLOPs fraction of the uniform-width subnetwork closest to ``regime`` (rounding may keep it off target)."""
    frac = space.stats(_uniform_widths(space)).flops_fraction
    return float(frac[int(np.argmin(np.abs(frac - regime.fraction)))])


def global_spec(space: PruningSpace, scores: list[np.ndarray], regime: Regime, what: str) -> ModelSpec:
    """Global pruning by ``scores`` (one array of channel scores per group of ``space``): the channels of all groups
    are removed one at a time, weakest first (ties in group order); after each removal every group keeps what is
    left of it, rounded up to the space's multiple and at least the space's floor. Of those subnetworks, the one
    whose FLOPs fraction is closest to the target."""
    step = space.round_to or 1
    full = np.array([g.channels for g in space.groups])
    lo = space.widths(np.full((1, len(full)), space.r_min))[0]  # the space's floor applies to the baselines too
    group_of = np.concatenate([np.full(len(s), i) for i, s in enumerate(scores)])
    order = np.argsort(np.concatenate(scores), kind="stable")
    removed = np.zeros((len(order) + 1, len(full)), dtype=np.int64)
    np.cumsum(np.eye(len(full), dtype=np.int64)[group_of[order]], axis=0, out=removed[1:])
    kept = full[None, :] - removed
    widths = np.unique(np.clip(np.ceil(kept / step) * step, lo, full).astype(np.int64), axis=0)
    frac = space.stats(widths).flops_fraction
    if np.min(np.abs(frac - regime.fraction)) > FINAL_BAND:  # a rounding step jumped over the final band
        below, above = frac < regime.fraction, frac >= regime.fraction
        bracket = [widths[below][np.argmax(frac[below])]] if below.any() else []
        bracket += [widths[above][np.argmin(frac[above])]] if above.any() else []
        widths = np.concatenate([widths, *(_one_step_away(w, step, lo, full) for w in bracket)])
    return space.spec(_closest(space, widths, regime, what))


def _one_step_away(widths: np.ndarray, step: int, lo: np.ndarray, full: np.ndarray) -> np.ndarray:
    """``widths`` with one group one rounding step wider or narrower (within the space), for every group."""
    eye = np.eye(len(widths), dtype=np.int64) * step
    moved: np.ndarray = np.clip(np.concatenate([widths + eye, widths - eye]), lo, full)
    return moved


def global_l1_spec(parent: nn.Module, space: PruningSpace, regime: Regime) -> ModelSpec:
    """Global magnitude pruning: drop the channels with the smallest mean |weight| across all groups."""
    sums = _writer_scores(parent, "conv", lambda w: w.abs().flatten(1).sum(1), combine="sum")
    sizes = _writer_sizes(spec_of(parent))
    return global_spec(space, [sums[g.name] / sizes[g.name] for g in space.groups], regime, "global-L1")


def layer_l1_spec(parent: nn.Module, space: PruningSpace, regime: Regime) -> ModelSpec:
    """Layer-normalised L1: each layer's filter L1 norms over that layer's largest, averaged over a group's
    writers, ranked globally."""
    def normalised(w: torch.Tensor) -> torch.Tensor:
        l1 = w.abs().flatten(1).sum(1)
        return l1 / l1.max().clamp_min(torch.finfo(l1.dtype).tiny)

    scores = _writer_scores(parent, "conv", normalised, combine="mean")
    return global_spec(space, [scores[g.name] for g in space.groups], regime, "layer-normalised-L1")


def bn_gamma_spec(parent: nn.Module, space: PruningSpace, regime: Regime) -> ModelSpec:
    """Network slimming: the |gamma| of the batch norms after a group's writers, averaged over them, ranked
    globally."""
    scores = _writer_scores(parent, "bn", lambda w: w.abs(), combine="mean")
    missing = [g.name for g in space.groups if g.name not in scores]
    if missing:
        raise PruneoptError(f"the BN-gamma baseline needs a batch norm after every group's writer; {missing[0]} "
                            "has none")
    return global_spec(space, [scores[g.name] for g in space.groups], regime, "BN-gamma")


def baseline_specs(parent: nn.Module, space: PruningSpace, regime: Regime) -> dict[str, ModelSpec]:
    """Every baseline of :data:`BASELINES` at ``regime``, by name."""
    return {"uniform": uniform_spec(space, regime), "global_l1": global_l1_spec(parent, space, regime),
            "layer_l1": layer_l1_spec(parent, space, regime), "bn_gamma": bn_gamma_spec(parent, space, regime)}


def _writer_scores(parent: nn.Module, kind: str, score: Callable[[torch.Tensor], torch.Tensor],
                   combine: str) -> dict[str, np.ndarray]:
    """Per slot, ``score`` of each ``kind`` layer writing it (its weight, float64), summed or averaged over them."""
    spec = spec_of(parent)
    modules = dict(parent.named_modules())
    parts: dict[str, list[torch.Tensor]] = {}
    for layer in get_arch(spec.arch).layers(spec):
        if layer.kind == kind and isinstance(layer.cout, str):
            weight = modules[layer.name].weight
            assert isinstance(weight, torch.Tensor)
            parts.setdefault(layer.cout, []).append(score(weight.detach().double()))
    reduce = torch.sum if combine == "sum" else torch.mean
    return {slot: reduce(torch.stack(p), dim=0).numpy() for slot, p in parts.items()}


def _writer_sizes(spec: ModelSpec) -> dict[str, float]:
    """Weights per output channel, summed over each slot's conv writers (for mean-|w| scores)."""
    widths = spec.width_map()
    sizes: dict[str, float] = {}
    for layer in get_arch(spec.arch).layers(spec):
        if layer.kind == "conv" and isinstance(layer.cout, str):
            cin = 1 if layer.depthwise else layer.channels(widths)[0]
            sizes[layer.cout] = sizes.get(layer.cout, 0.0) + cin * layer.kernel**2
    return sizes


def final_criterion(name: str) -> str:
    """The thinning criterion (:func:`pruneopt.thinning.thin`) of the final ``name``: ``bn`` for the BN-gamma
    baseline (network slimming keeps the largest-gamma channels), ``l1`` for the others."""
    return FINAL_CRITERIA.get(name, "l1")
