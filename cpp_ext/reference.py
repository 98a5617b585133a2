"""Eager PyTorch reference of the multi-positive contrastive loss (the specification).

Everything here materialises the full ``B x M`` similarity matrix; it exists to define the
semantics, to check the fused operator against, and as the fallback when no compiled
extension is available.

For query row ``i``:

* ``logits_ij = q_i . k_j / tau`` for every key ``j`` except ``self_index[i]`` (its own entry);
* the softmax of row ``i`` runs over those keys;
* ``P_i`` is the set of keys with ``k_labels[j] == q_labels[i]``, again without ``self_index[i]``;
* ``mean_log``: ``loss_i = -(1/|P_i|) * sum_{p in P_i} log softmax_i(p)``;
* ``log_sum``:  ``loss_i = -log sum_{p in P_i} softmax_i(p)``.

Rows with ``P_i`` empty are not valid: their loss is 0 and they do not enter the mean.
Computation is done in float32 for float16/bfloat16/float32 inputs and in float64 for float64
inputs; the loss is returned in that accumulation dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MODES", "accumulation_dtype", "multi_positive_loss_reference", "multi_positive_loss_reference_mean"]

MODES = ("mean_log", "log_sum")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype the loss is computed and returned in: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def multi_positive_loss_reference(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_index: Tensor | None = None,
    tau: float = 0.05,
    mode: str = "mean_log",
) -> tuple[Tensor, Tensor]:
    """Per-row multi-positive contrastive loss, computed eagerly.

    Args:
        q: queries ``[B, D]`` (the caller L2-normalises them).
        k: keys ``[M, D]``, same dtype and device as ``q``; may be ``q`` itself (in-batch mode).
        q_labels: pseudo-labels of the queries, int64 ``[B]``.
        k_labels: pseudo-labels of the keys, int64 ``[M]``.
        self_index: int64 ``[B]``, position of each query's own entry in ``k`` or -1;
            ``None`` means no key is excluded.
        tau: softmax temperature, > 0.
        mode: ``"mean_log"`` or ``"log_sum"``.

    Returns:
        ``(loss, valid)``: ``loss`` is ``[B]`` in the accumulation dtype with 0 in invalid rows,
        ``valid`` is a bool ``[B]`` mask of rows that have at least one positive.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    acc = accumulation_dtype(q.dtype)
    qf = q.to(acc)
    kf = k.to(acc)
    num_keys = kf.shape[0]

    logits = (qf @ kf.T) / tau  # [B, M]
    cols = torch.arange(num_keys, device=q.device)
    if self_index is None:
        self_mask = torch.zeros_like(logits, dtype=torch.bool)
    else:
        self_mask = cols[None, :] == self_index[:, None]  # -1 never matches
    pos = (q_labels[:, None] == k_labels[None, :]) & ~self_mask
    count = pos.sum(dim=1)
    valid = count > 0

    # Self is removed with the most negative finite value rather than -inf: exp() of it is
    # exactly 0 next to any real logit, and rows without any usable key stay finite (and
    # NaN-free in backward); such rows have no positive, so their loss is zeroed below.
    neg = torch.finfo(acc).min
    logits = logits.masked_fill(self_mask, neg)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)

    if mode == "mean_log":
        loss = -(log_prob * pos).sum(dim=1) / count.clamp(min=1)
    else:
        loss = -torch.logsumexp(log_prob.masked_fill(~pos, neg), dim=1)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss, valid


def multi_positive_loss_reference_mean(
    q: Tensor,
    k: Tensor,
    q_labels: Tensor,
    k_labels: Tensor,
    self_index: Tensor | None = None,
    tau: float = 0.05,
    mode: str = "mean_log",
) -> Tensor:
    """Mean of :func:`multi_positive_loss_reference` over valid rows (0 when there is none)."""
    loss, valid = multi_positive_loss_reference(q, k, q_labels, k_labels, self_index, tau, mode)
    return loss.sum() / valid.sum().clamp(min=1)
