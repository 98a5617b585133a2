"""Exact complexity of a (sub)network: MACs, parameters and activations.

Conventions (those of pruning papers and torchvision's model tables):

* **MACs** ("FLOPs" in pruning papers) count the multiply-accumulates of convolutions and linear layers; batch
  norm, activations, pooling and additions are not counted. resnet50 at 3x224x224: 4.09 G.
* **params** counts every trainable parameter (batch-norm running statistics are buffers, not parameters).
* **activations** counts the output elements of every convolution and linear layer (pycls's "acts"), a proxy
  for memory traffic.

Three ways to count, which the tests hold equal:

* :func:`count` walks a spec's channel graph (:meth:`pruneopt.models.Arch.layers`);
* :class:`CostModel` compiles the same graph into quadratic forms in the slot widths, so that thousands of specs
  are counted in one vectorised NumPy call (every count is a sum of ``coef * width_a * width_b`` terms);
* :func:`count_module` runs the built ``nn.Module`` once with forward hooks, independently of the graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .common.params import parse_shape
from .errors import PruneoptError
from .models import ModelSpec, get_arch
from .models.graph import Channels, Layer


@dataclass(frozen=True)
class Complexity:
    macs: int
    params: int
    activations: int

    @property
    def ratio(self) -> float:
        """R = FLOPs / params (MACs per parameter), the statistic the search tracks."""
        return self.macs / self.params

    def to_dict(self) -> dict[str, int | float]:
        return {**asdict(self), "ratio": self.ratio}


def parse_input(text: str | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """Parse ``"3x224x224"`` (or ``"224x224"``, keeping the default channel count); ``None`` gives ``default``."""
    if text is None:
        return default
    return parse_shape(text, "--input", default_channels=default[0], error=PruneoptError)


MACS, PARAMS, ACTS = 0, 1, 2


def layer_terms(layer: Layer) -> list[tuple[int, Channels, Channels, int]]:
    """The costs of one layer as ``(which count, channels a, channels b, coefficient)`` product terms.

    Each term contributes ``coefficient * a * b``; a channel side is a slot name or a fixed integer (``1`` where
    a cost is linear in one side only).
    """
    hw = layer.out_hw[0] * layer.out_hw[1]
    k2 = layer.kernel * layer.kernel
    cin, cout = layer.cin, layer.cout
    if layer.kind == "bn":
        return [(PARAMS, 1, cout, 2)]
    terms: list[tuple[int, Channels, Channels, int]] = [(ACTS, 1, cout, hw)]
    if layer.bias:
        terms.append((PARAMS, 1, cout, 1))
    if layer.kind == "conv" and layer.depthwise:
        return terms + [(MACS, 1, cout, k2 * hw), (PARAMS, 1, cout, k2)]
    if layer.kind == "conv":
        return terms + [(MACS, cin, cout, k2 * hw), (PARAMS, cin, cout, k2)]
    if layer.kind == "linear":
        return terms + [(MACS, cin, cout, 1), (PARAMS, cin, cout, 1)]
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def count(spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> Complexity:
    """Analytic MACs, parameters and activations of ``spec`` at input size ``input_hw`` (H, W)."""
    arch = get_arch(spec.arch)
    widths = spec.width_map()
    totals = [0, 0, 0]
    for layer in arch.layers(spec, input_hw):
        for k, a, b, coef in layer_terms(layer):
            wa = widths[a] if isinstance(a, str) else a
            wb = widths[b] if isinstance(b, str) else b
            totals[k] += coef * wa * wb
    return Complexity(*totals)


class CostModel:
    """Vectorised counts for every width vector of one architecture, options and input size.

    Each count is ``w1 @ Q @ w1`` with ``w1 = [widths..., 1]`` and an upper-triangular ``Q`` compiled from the
    same per-layer terms as :func:`count`; :meth:`evaluate` does it for an ``[N, slots]`` array at once (exact in
    float64 below 2**53).
    """

    def __init__(self, spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> None:
        arch = get_arch(spec.arch)
        self.slots = arch.slots
        index = {s: i for i, s in enumerate(self.slots)}
        one = len(self.slots)
        q = np.zeros((3, one + 1, one + 1))

        def side(c: Channels) -> tuple[int, int]:  # (row in w1, constant factor)
            return (index[c], 1) if isinstance(c, str) else (one, c)

        for layer in arch.layers(spec, input_hw):
            for k, a, b, coef in layer_terms(layer):
                (ia, fa), (ib, fb) = side(a), side(b)
                q[k, min(ia, ib), max(ia, ib)] += coef * fa * fb
        self.q = q

    def evaluate(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(macs, params, activations) as float64 arrays for an ``[N, slots]`` array of widths."""
        w1 = self._augment(widths)
        macs, params, acts = (self._form(w1, k) for k in (MACS, PARAMS, ACTS))
        return macs, params, acts

    def macs(self, widths: np.ndarray) -> np.ndarray:
        """MACs only (the sampler's first, cheapest filter)."""
        return self._form(self._augment(widths), MACS)

    def _augment(self, widths: np.ndarray) -> np.ndarray:
        w = np.asarray(widths, dtype=np.float64)
        if w.ndim == 1:
            w = w[None, :]
        if w.shape[1] != len(self.slots):
            raise PruneoptError(f"expected {len(self.slots)} widths per row, got {w.shape[1]}")
        return np.concatenate([w, np.ones((w.shape[0], 1))], axis=1)

    def _form(self, w1: np.ndarray, k: int) -> np.ndarray:
        return np.einsum("ni,ni->n", w1 @ self.q[k], w1)


def count_module(model: nn.Module, input_shape: tuple[int, int, int]) -> Complexity:
    """Count by running ``model`` once on a zero input of ``input_shape`` (C, H, W) with forward hooks.

    Independent of the channel graph: MACs and activations come from the real tensor shapes of every
    ``Conv2d`` and ``Linear`` call, parameters from ``model.parameters()``. The input is made on the model's
    device, so a model built under ``torch.device("meta")`` is counted without allocating or computing anything.
    """
    totals = {"macs": 0, "acts": 0}

    def conv_hook(mod: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        per_sample = out[0].numel()
        kh, kw = mod.kernel_size
        totals["macs"] += per_sample * (mod.in_channels // mod.groups) * kh * kw
        totals["acts"] += per_sample

    def linear_hook(mod: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        totals["macs"] += mod.in_features * mod.out_features
        totals["acts"] += out[0].numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(totals["macs"], params, totals["acts"])
