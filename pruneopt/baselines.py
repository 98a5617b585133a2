"""The usual baselines at a FLOPs target, in the same pruning space as the search.

* **uniform**: every group keeps the same fraction of its channels, chosen so the subnetwork lands at the target;
* **global L1**: channels of all groups ranked together by their mean absolute filter weight (the L1 norm summed
  over a group's writers, divided by the number of weights those filters hold, so layers of different sizes are
  comparable), and the weakest removed until the subnetwork lands at the target; no group goes below the space's
  smallest keep ratio (without that floor, global magnitude pruning empties whole stages).

Both return a spec; :func:`pruneopt.thinning.thin` then keeps each group's largest-L1 filters, exactly as for
searched candidates, and the final fine-tune budget is the same for every model.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .errors import PruneoptError
from .models import ModelSpec, get_arch
from .space import PruningSpace, Regime
from .thinning import channel_importance


def _closest(space: PruningSpace, candidates: np.ndarray, regime: Regime, what: str) -> np.ndarray:
    frac = space.stats(candidates).flops_fraction
    best = int(np.argmin(np.abs(frac - regime.fraction)))
    if abs(frac[best] - regime.fraction) > regime.band:
        raise PruneoptError(f"no {what} subnetwork within {regime} (closest: {frac[best]:.3f})")
    return candidates[best]


def uniform_spec(space: PruningSpace, regime: Regime) -> ModelSpec:
    """The subnetwork keeping the same ratio of every group whose FLOPs fraction is closest to the target."""
    ratios = np.linspace(1.0 / max(g.channels for g in space.groups), 1.0, 4001)
    widths = space.widths(ratios[:, None] * np.ones((1, len(space.groups))))
    return space.spec(_closest(space, widths, regime, "uniform-width"))


def global_l1_spec(parent: nn.Module, space: PruningSpace, regime: Regime) -> ModelSpec:
    """Global magnitude pruning: drop the channels with the smallest mean |weight| across all groups."""
    spec = parent.spec
    scores = channel_importance(parent, "l1")
    sizes = _writer_sizes(spec)
    per_group = [(scores[g.name] / sizes[g.name]).numpy() for g in space.groups]
    thresholds = np.unique(np.concatenate(per_group))
    step = space.round_to or 1
    full = np.array([g.channels for g in space.groups])
    lo = space.widths(np.full((1, len(full)), space.r_min))[0]  # the space's floor applies to the baseline too
    # keep the channels at or above each candidate threshold, rounded up to the space's multiple
    qs = np.quantile(thresholds, np.linspace(0, 1, 2001))
    kept = np.stack([np.array([(s >= t).sum() for s in per_group]) for t in qs])
    widths = np.clip(np.ceil(kept / step) * step, lo, full).astype(np.int64)
    return space.spec(_closest(space, widths, regime, "global-L1"))


def _writer_sizes(spec: ModelSpec) -> dict[str, float]:
    """Weights per output channel, summed over each slot's conv writers (for mean-|w| scores)."""
    widths = spec.width_map()
    sizes: dict[str, float] = {}
    for layer in get_arch(spec.arch).layers(spec):
        if layer.kind == "conv" and isinstance(layer.cout, str):
            cin = 1 if layer.depthwise else layer.channels(widths)[0]
            sizes[layer.cout] = sizes.get(layer.cout, 0.0) + cin * layer.kernel**2
    return sizes


