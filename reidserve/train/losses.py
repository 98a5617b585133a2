"""The training losses (TMP's multi-positive loss, the cluster-centroid memory) and the memory's updates."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import cpp_ext

from .config import LOSSES, TrainError

__all__ = ["centroids", "compute_loss", "update_memory"]


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
    """The training loss of L2-normalised embeddings ``z`` [2B, D] with pseudo-labels ``y`` [2B].

    ``tmp``: :func:`cpp_ext.multi_positive_loss_mean` with ``z`` as queries and keys and ``self_index``
    excluding each row itself (positives: every other row with the same label, i.e. the other view and the
    same-cluster samples), plus ``memory_weight`` x the memory loss when ``memory`` is given. ``centroid``:
    the memory loss alone. Memory loss: InfoNCE of each row against all centroids ``memory`` [C, D]
    (positive: centroid ``y``). Returns ``loss`` and its parts (``loss_batch``, ``loss_memory``) and the
    detached ``z``.
    """
    if loss not in LOSSES:
        raise TrainError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if loss == "centroid" and memory is None:
        raise TrainError("the centroid loss needs the cluster-centroid memory")
    out: dict[str, torch.Tensor] = {"z": z.detach()}
    total = z.new_zeros(())
    if loss == "tmp":
        self_index = torch.arange(z.shape[0], device=z.device)
        lb = cpp_ext.multi_positive_loss_mean(z, z, y, y, self_index, tau, tmp_mode)
        out["loss_batch"] = lb
        total = total + lb
    if memory is not None:
        centre_ids = torch.arange(memory.shape[0], device=z.device)
        lm = cpp_ext.multi_positive_loss_mean(z, memory, y, centre_ids, None, tau, "mean_log")
        out["loss_memory"] = lm
        total = total + (memory_weight if loss == "tmp" else 1.0) * lm
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
