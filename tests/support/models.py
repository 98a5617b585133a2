"""Model helpers shared by the test folders: random width specs and batch norms with non-trivial statistics."""

from __future__ import annotations

import numpy as np
import torch

from pruneopt.models import ModelSpec, get_arch
from pruneopt.space import PruningSpace

__all__ = ["random_specs", "randomise_bn"]


def random_specs(arch: str, n: int, seed: int, r_min: float = 0.05, **options: object) -> list[ModelSpec]:
    """``n`` specs with independent random widths on every slot (round_to 1, so odd widths occur)."""
    parent = get_arch(arch).default_spec(**options)  # type: ignore[arg-type]
    space = PruningSpace(parent, r_min=r_min, r_max=1.0, round_to=1)
    rng = np.random.default_rng(seed)
    widths = space.widths(rng.uniform(r_min, 1.0, size=(n, len(space.groups))))
    return [space.spec(w) for w in widths]


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters (fresh ones are identities)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model
