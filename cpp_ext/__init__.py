"""Fused multi-positive contrastive loss (TMP loss) as a C++/CUDA PyTorch operator.

Every query is compared with a set of keys (the other samples of the batch, or a memory bank of
cluster centroids / instances) and every key sharing the query's pseudo-label is a positive. The
fused operator streams over key tiles with an online log-sum-exp and never stores the ``B x M``
similarity matrix; backward recomputes the tiles from saved per-row statistics. See
:mod:`cpp_ext.reference` for the exact definition.

Public API:

* :func:`multi_positive_loss` -> ``(loss_per_row, valid)``
* :func:`multi_positive_loss_mean` -> mean over valid rows (what training uses)
* :func:`backend` -> ``"prebuilt"``, ``"jit"`` or ``"reference"``; :func:`backend_reason`

Nothing is compiled at import time; the backend is resolved on first use (see
:mod:`cpp_ext._loader`). ``PRUNEOPT_CPP_EXT=0`` forces the eager reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _loader
from ._ops import validate_inputs
from .reference import MODES, multi_positive_loss_reference, multi_positive_loss_reference_mean

__all__ = [
    "MODES",
    "backend",
    "backend_reason",
    "has_cuda_kernel",
    "multi_positive_loss",
    "multi_positive_loss_mean",
    "multi_positive_loss_reference",
    "multi_positive_loss_reference_mean",
]


def backend() -> str:
    """Active implementation: ``"prebuilt"``, ``"jit"`` or ``"reference"`` (resolves it on first call)."""
    return _loader.state().name


def backend_reason() -> str:
    """Why the active backend was chosen (for the reference: why the compiled one is unavailable)."""
    return _loader.state().reason


def has_cuda_kernel() -> bool:
    """Whether the loaded operator library contains the CUDA kernels."""
    return _loader.state().has_cuda


def multi_positive_loss(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_index: Tensor | None = None,
    tau: float = 0.05,
    mode: str = "mean_log",
) -> tuple[Tensor, Tensor]:
    """Per-row multi-positive contrastive loss.

    Args:
        q: queries ``[B, D]``, float16/bfloat16/float32/float64, contiguous, L2-normalised by the caller.
        k: keys ``[M, D]`` with q's dtype and device. Pass ``q`` itself (and
            ``self_index=torch.arange(B)``) for in-batch mode; gradients of both uses are summed.
        q_labels: int64 ``[B]`` pseudo-labels of the queries.
        k_labels: int64 ``[M]`` pseudo-labels of the keys.
        self_index: int64 ``[B]``: position of each query's own entry in ``k`` (excluded from the
            softmax and from the positives), or -1. ``None`` excludes nothing.
        tau: temperature (> 0); logits are ``q . k / tau``.
        mode: ``"mean_log"`` (mean of the log-probabilities of the positives) or ``"log_sum"``
            (log of the summed probability of the positives).

    Returns:
        ``(loss, valid)``: ``loss`` ``[B]`` in float32 (float64 for float64 inputs), 0 for rows
        without a positive; ``valid`` bool ``[B]`` marks rows with at least one positive.
        Differentiable w.r.t. ``q`` and ``k``.

    Raises:
        TypeError / ValueError: for bad dtypes, shapes, devices, non-contiguous tensors,
            ``tau <= 0``, an unknown ``mode`` or ``self_index`` values outside ``[-1, M)``.
    """
    validate_inputs(q, k, q_labels, k_labels, self_index, tau, mode)
    if self_index is None:
        self_index = torch.full_like(q_labels, -1)
    state = _loader.state()
    use_op = state.name != "reference" and (q.device.type == "cpu" or (q.device.type == "cuda" and state.has_cuda))
    if not use_op:
        if state.name != "reference":
            _loader.warn_once(
                f"device:{q.device.type}",
                f"cpp_ext: the compiled operator has no kernel for {q.device.type} tensors; "
                "using the eager reference there",
            )
        if self_index.numel() and not torch.compiler.is_compiling():
            lo, hi = int(self_index.min()), int(self_index.max())
            if lo < -1 or hi >= k.shape[0]:
                raise ValueError(f"self_index values must lie in [-1, {k.shape[0]}), got range [{lo}, {hi}]")
        return multi_positive_loss_reference(q, k, q_labels, k_labels, self_index, float(tau), mode)
    # The per-row q-gradient is only worth computing when autograd will ask for it.
    with_row_grad = torch.is_grad_enabled() and q.requires_grad
    loss, valid, _, _ = torch.ops.pruneopt.multipos_loss_fwd(
        q, k, q_labels, k_labels, self_index, float(tau), mode, with_row_grad
    )
    return loss, valid


def multi_positive_loss_mean(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_index: Tensor | None = None,
    tau: float = 0.05,
    mode: str = "mean_log",
) -> Tensor:
    """Mean of :func:`multi_positive_loss` over the valid rows (0, with zero gradient, if none is valid)."""
    loss, valid = multi_positive_loss(q, k, q_labels, k_labels, self_index, tau, mode)
    return loss.sum() / valid.sum().clamp(min=1)
