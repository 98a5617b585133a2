"""P x K identity sampler that prefers instances from different cameras."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .datasets import Item

__all__ = ["PKSampler"]


class PKSampler(Sampler[list[int]]):
    """Batch sampler: every batch holds ``p`` identities with ``k`` instances each (``p * k`` indices).

    * Identities are the distinct values of ``labels`` (true or pseudo labels); label ``-1`` marks
      an outlier and is never sampled. Only identities are needed, not contiguous labels.
    * An epoch visits every identity once in a random order, in groups of ``p``; the last
      incomplete group is dropped, so ``len(sampler) == num_identities // p``.
    * The ``k`` instances of an identity are drawn camera by camera in round-robin order (cameras and
      instances shuffled), so a batch shows an identity under as many cameras as it has, up to ``k``.
      An identity with fewer than ``k`` instances is completed by sampling with replacement.
    * Deterministic: epoch ``e`` uses ``numpy.random.default_rng([seed, e])``. Each ``iter()`` uses
      the current epoch (initially 0) and advances it by one; :meth:`set_epoch` chooses the next one.
    * :meth:`set_labels` rebuilds the identity index, e.g. every epoch from new pseudo-labels.
    """

    def __init__(
        self, labels: Sequence[int] | np.ndarray, camids: Sequence[int] | np.ndarray, p: int = 16, k: int = 4, *,
        seed: int = 0
    ) -> None:
        if p < 1 or k < 1:
            raise ValueError(f"p and k must be >= 1, got p={p}, k={k}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        self._epoch = 0
        self.camids = np.asarray(camids, dtype=np.int64)
        self.set_labels(labels)

    @classmethod
    def from_items(cls, items: Sequence[Item], p: int = 16, k: int = 4, *, seed: int = 0) -> PKSampler:
        return cls([it.pid for it in items], [it.camid for it in items], p, k, seed=seed)

    def set_labels(self, labels: Sequence[int] | np.ndarray, camids: Sequence[int] | np.ndarray | None = None) -> None:
        """Use new (pseudo-)labels; ``-1`` = outlier. ``camids`` may change too (same length)."""
        lab = np.asarray(labels, dtype=np.int64)
        if camids is not None:
            self.camids = np.asarray(camids, dtype=np.int64)
        if lab.ndim != 1 or lab.shape != self.camids.shape:
            raise ValueError(
                f"labels ({lab.shape}) and camids ({self.camids.shape}) must be 1-D of equal length"
            )
        if (lab < -1).any():
            raise ValueError("labels must be >= 0, or -1 for outliers")
        self.labels = lab
        # identity -> {camera -> indices}, identities in increasing order for determinism
        valid = np.flatnonzero(lab >= 0)
        order = valid[np.lexsort((valid, self.camids[valid], lab[valid]))]
        self._ids: list[int] = []
        self._by_cam: list[list[np.ndarray]] = []
        if order.size:
            lab_o, cam_o = lab[order], self.camids[order]
            id_starts = np.flatnonzero(np.r_[True, lab_o[1:] != lab_o[:-1]])
            for s, e in zip(id_starts, np.r_[id_starts[1:], order.size], strict=True):
                cams = cam_o[s:e]
                cam_starts = np.flatnonzero(np.r_[True, cams[1:] != cams[:-1]])
                groups = np.split(order[s:e], cam_starts[1:])
                self._ids.append(int(lab_o[s]))
                self._by_cam.append(groups)
        if len(self._ids) < self.p:
            raise ValueError(
                f"PKSampler needs at least p={self.p} identities, got {len(self._ids)} "
                f"(after removing outliers labelled -1); lower p or provide more identities"
            )

    @property
    def num_identities(self) -> int:
        return len(self._ids)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._ids) // self.p

    def _instances(self, groups: list[np.ndarray], rng: np.random.Generator) -> list[int]:
        cam_order = rng.permutation(len(groups))
        shuffled = [rng.permutation(groups[c]) for c in cam_order]
        depth = max(len(g) for g in shuffled)
        robin = [int(g[d]) for d in range(depth) for g in shuffled if d < len(g)]
        chosen = robin[: self.k]
        if len(chosen) < self.k:
            chosen += [int(i) for i in rng.choice(robin, size=self.k - len(chosen), replace=True)]
        return chosen

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self._epoch])
        self._epoch += 1
        id_order = rng.permutation(len(self._ids))
        for b in range(len(self)):
            batch: list[int] = []
            for j in id_order[b * self.p : (b + 1) * self.p]:
                batch.extend(self._instances(self._by_cam[j], rng))
            yield batch
