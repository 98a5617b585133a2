"""The training losses and the memory's updates.

In-batch losses over the ``2B`` embeddings of a batch, rows ``i`` and ``i + B`` being the two views of image
``i`` (the layout :class:`~reidserve.train.trainer.Trainer` builds), with temperature ``tau``:

* ``tmp`` (Take More Positives): positives of row ``i`` are every other row with its (pseudo-)label;
  the softmax runs over every other row. :func:`cpp_ext.multi_positive_loss_mean`.
* ``single-neg``: the one positive is the other view of the same image; every other row, same label or
  not, is a negative (instance discrimination, NT-Xent). The same operator with per-image labels.
* ``single-mask``: the one positive is the other view; the other rows with the same label are left out of
  the softmax (neither positive nor negative). :func:`single_positive_masked_loss`, eager PyTorch.

And ``centroid``, another loss family: InfoNCE of each row against the cluster-centroid memory.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import cpp_ext

from .config import BATCH_LOSSES, LOSSES, TrainError

__all__ = ["centroids", "compute_loss", "image_index", "single_positive_masked_loss", "update_memory"]


def image_index(rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[0, 1, .., B-1, 0, 1, .., B-1]`` for ``rows = 2B``: the image each row of a two-view batch shows."""
    if rows % 2:
        raise TrainError(f"a two-view batch has an even number of rows, got {rows}")
    return torch.arange(rows // 2, device=device).repeat(2)


def single_positive_masked_loss(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over the ``2B`` rows of ``-log softmax_i(partner(i))``, where ``partner(i) = (i + B) mod 2B`` is the
    other view of row ``i``'s image and row ``i``'s softmax of ``z_i . z_j / tau`` runs over its partner and the
    rows with another label ``y_j != y_i`` only (itself and the other same-label rows are masked out).

    Eager PyTorch on the ``2B x 2B`` similarity matrix (small for a training batch); float64 inputs are
    computed in float64, others in float32. Every row has a positive, so every row counts in the mean.
    """
    rows = z.shape[0]
    if rows % 2:
        raise TrainError(f"a two-view batch has an even number of rows, got {rows}")
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    zf = z.to(acc)
    logits = zf @ zf.T / tau
    idx = torch.arange(rows, device=z.device)
    partner = (idx + rows // 2) % rows
    is_partner = idx[None, :] == partner[:, None]
    masked = (y[:, None] == y[None, :]) & ~is_partner  # includes the row itself
    logits = logits.masked_fill(masked, torch.finfo(acc).min)  # exp() of it is exactly 0 next to real logits
    log_prob = logits[idx, partner] - torch.logsumexp(logits, dim=1)
    return -log_prob.mean()


def compute_loss(
    z: torch.Tensor,
    y: torch.Tensor,
    memory: torch.Tensor | None,
    *,
    loss: str = "tmp",
    tau: float = 0.05,
    tmp_mode: str = "mean_log",
    memory_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """The training loss of L2-normalised embeddings ``z`` [2B, D] with pseudo-labels ``y`` [2B] (rows ``i`` and
    ``i + B`` are the two views of image ``i``).

    ``tmp``: :func:`cpp_ext.multi_positive_loss_mean` with ``z`` as queries and keys and ``self_index``
    excluding each row itself (positives: every other row with the same label, i.e. the other view and the
    same-cluster samples). ``single-neg``: the same operator with the image index as the label (the other
    view is the only positive). ``single-mask``: :func:`single_positive_masked_loss`. Each of these plus
    ``memory_weight`` x the memory loss when ``memory`` is given. ``centroid``: the memory loss alone.
    Memory loss: InfoNCE of each row against all centroids ``memory`` [C, D] (positive: centroid ``y``).
    Returns ``loss`` and its parts (``loss_batch``, ``loss_memory``) and the detached ``z``. ``tmp_mode``
    only matters for ``tmp`` (with one positive both modes are the same loss).
    """
    if loss not in LOSSES:
        raise TrainError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "centroid" and memory is None:
        raise TrainError("the centroid loss needs the cluster-centroid memory")
    out: dict[str, torch.Tensor] = {"z": z.detach()}
    total = z.new_zeros(())
    if loss in BATCH_LOSSES:
        self_index = torch.arange(z.shape[0], device=z.device)
        if loss == "tmp":
            lb = cpp_ext.multi_positive_loss_mean(z, z, y, y, self_index, tau, tmp_mode)
        elif loss == "single-neg":
            own = image_index(z.shape[0], z.device)
            lb = cpp_ext.multi_positive_loss_mean(z, z, own, own, self_index, tau, "mean_log")
        else:
            lb = single_positive_masked_loss(z, y, tau)
        out["loss_batch"] = lb
        total = total + lb
    if memory is not None:
        centre_ids = torch.arange(memory.shape[0], device=z.device)
        lm = cpp_ext.multi_positive_loss_mean(z, memory, y, centre_ids, None, tau, "mean_log")
        out["loss_memory"] = lm
        total = total + (memory_weight if loss in BATCH_LOSSES else 1.0) * lm
    out["loss"] = total
    return out


@torch.no_grad()
def update_memory(memory: torch.Tensor, z: torch.Tensor, y: torch.Tensor, momentum: float) -> None:
    """In place, for every centroid ``c`` with samples in the batch:
    ``memory[c] <- normalise(momentum * memory[c] + (1 - momentum) * mean of z[y == c])``."""
    sums = torch.zeros_like(memory).index_add_(0, y, z.to(memory.dtype))
    counts = torch.bincount(y, minlength=memory.shape[0])
    hit = counts > 0
    mean = sums[hit] / counts[hit, None].to(memory.dtype)
    memory[hit] = F.normalize(momentum * memory[hit] + (1.0 - momentum) * mean, dim=1)


def centroids(features: np.ndarray, labels: np.ndarray, num: int) -> torch.Tensor:
    """L2-normalised mean feature of every pseudo-identity ``0..num-1`` (outliers ``-1`` ignored): the memory."""
    keep = labels >= 0
    sums = torch.zeros(num, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, torch.from_numpy(labels[keep]), torch.from_numpy(features[keep]).double())
    return F.normalize(sums.float(), dim=1)
