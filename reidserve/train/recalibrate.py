"""Adaptive batch norm for a thinned re-ID candidate: re-estimate its running statistics on unlabelled images.

Thinning keeps a parent's largest filters, but the batch-norm statistics it copies were measured with all the
filters in place. Before a candidate's fine-tune (whose first step clusters features extracted in eval mode, with
those statistics) :func:`recalibrate_bn` resets them and averages them over a few batches of training images (the
evaluation transform: resize and normalise; no labels, no gradients), as the classification task does for its
candidates (:func:`pruneopt.train.recalibrate_bn`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import TestTransform
from .images import DecodedImages

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: DecodedImages, batches: int, batch_size: int, seed: int) -> nn.Module:
    """Reset ``model``'s batch-norm statistics and re-estimate them (cumulative average, train mode) on ``batches``
    batches of ``batch_size`` images drawn from ``images`` without replacement (cycled when there are too few) in a
    ``seed``-determined order; returns the model in eval mode, momentum as it was. ``batches <= 0``: unchanged."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0 or len(images) == 0:
        return model.eval()
    order = np.random.default_rng(seed).permutation(len(images))
    picks = np.resize(order, batches * batch_size)  # repeats the permutation when the images are too few
    transform = TestTransform(images.size)
    saved = [(m, m.momentum) for m in bns]
    device = next(model.parameters()).device
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
        model.train()
        for start in range(0, len(picks), batch_size):
            x = np.stack([transform(images.get(int(i))) for i in picks[start:start + batch_size]])
            model(torch.from_numpy(x).to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
    return model.eval()
