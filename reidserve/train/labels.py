"""Training labels that are not DBSCAN pseudo-labels: the true identities, optionally with injected label noise.

The mechanism test of "Take More Positives" trains with the true identities and a known fraction of wrong
labels instead of clustering, so the effect of wrong positives can be measured without the clustering's
other effects (how many clusters, which outliers).
"""

from __future__ import annotations

import numpy as np

from .config import TrainError

__all__ = ["NOISE_STREAM", "dense_labels", "inject_label_noise"]

NOISE_STREAM = 0x4E01  # tag of the label-noise random stream: default_rng([seed, NOISE_STREAM])


def dense_labels(pids: np.ndarray) -> np.ndarray:
    """``pids`` renumbered ``0..C-1`` in increasing order of the original value (int64)."""
    _, dense = np.unique(np.asarray(pids), return_inverse=True)
    return dense.astype(np.int64).reshape(-1)


def inject_label_noise(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A copy of ``labels`` (``0..C-1``) in which exactly ``round(fraction * N)`` entries, chosen without
    replacement, are reassigned to another label drawn uniformly from the ``C - 1`` others.

    Deterministic in ``seed`` (stream ``default_rng([seed, NOISE_STREAM])``); ``fraction`` 0 returns an
    unchanged copy. Needs at least two distinct labels when ``fraction > 0``.
    """
    lab = np.asarray(labels, dtype=np.int64).copy()
    if not 0.0 <= fraction <= 1.0:
        raise TrainError(f"label noise must be a fraction in [0, 1], got {fraction}")
    if lab.ndim != 1 or (lab.size and lab.min() < 0):
        raise TrainError("label noise needs a 1-D array of labels >= 0")
    count = int(round(fraction * lab.size))
    if count == 0:
        return lab
    num = int(lab.max()) + 1
    if num < 2:
        raise TrainError("label noise needs at least two identities to swap between")
    rng = np.random.default_rng([seed, NOISE_STREAM])
    chosen = rng.choice(lab.size, size=count, replace=False)
    shift = rng.integers(1, num, size=count)  # 1..C-1: never the label itself
    lab[chosen] = (lab[chosen] + shift) % num
    return lab
