"""Short fine-tunes for the pruning search: a TMP fine-tune of an in-memory network, scored by validation mAP.

The search's fine-tunes (every candidate's, and the finals' through :func:`~reidserve.train.train_reid` with
``trainer_cls=SearchTrainer``) must not stop on small data: a thinned, barely trained candidate often makes DBSCAN
find a handful of big clusters and few outliers, so that even with its outliers as singletons (the fallback of
``reidserve train``) an epoch has fewer than P pseudo-identities to fill a P x K batch. :class:`SearchTrainer` then
takes every training image as its own pseudo-identity for that epoch (the log record says
``"fallback": "all_singletons"``), and its messages name ``pruneopt search``'s options (``--reid-batch``).
"""

from __future__ import annotations

import math
import os

import numpy as np
from torch import nn

from ..cluster import ClusterConfig, ClusterResult
from .config import LossName, ReidTrainConfig, TrainError
from .run import run_training
from .trainer import Times, Trainer

__all__ = ["SearchTrainer", "finetune_and_score", "finetune_config"]


class SearchTrainer(Trainer):
    """The trainer of the search's fine-tunes: the pseudo-label fallback of the module docstring."""

    def _pseudo_labels(self, feats: np.ndarray, epoch: int, times: Times) -> tuple[ClusterResult, np.ndarray,
                                                                                      str | None]:
        result, labels, fallback = super()._pseudo_labels(feats, epoch, times)
        p, have = self.cfg.p, int(np.unique(labels[labels >= 0]).size)
        if have >= p:
            return result, labels, fallback
        if len(labels) < p:
            raise TrainError(f"epoch {epoch}: the {len(labels)} training images of {self.cfg.data} cannot fill "
                             f"P={p} pseudo-identities per batch even one image each; use a smaller P in --reid-batch")
        if self.dist.main:
            self.log(f"epoch {epoch}: only {have} pseudo-identities (< P={p}); this epoch takes each of the "
                     f"{len(labels)} training images as its own identity")
        return result, np.arange(len(labels), dtype=np.int64), "all_singletons"


def finetune_config(
    data_root: str | os.PathLike[str],
    steps: int = 200,
    seed: int = 0,
    *,
    rounds: int = 1,
    size: tuple[int, int] = (256, 128),
    batch: tuple[int, int] = (16, 4),
    loss: LossName = "tmp",
    cluster: ClusterConfig | None = None,
    lr: float = 3.5e-4,
    threads: int | None = None,
    device: str = "cpu",
    workers: int = 0,
    backbone: str | os.PathLike[str] | None = None,
) -> ReidTrainConfig:
    """The :class:`ReidTrainConfig` of :func:`finetune_and_score`'s fine-tune (``steps`` split over ``rounds``).

    With ``backbone`` (a subnetwork folder), :func:`train_reid` into a run folder does the same fine-tune as
    :func:`finetune_and_score` on that network, resumably, and keeps the model; without it the config names
    ``"<module>"`` and is for :func:`finetune_and_score`'s in-memory backbone.
    """
    if steps < rounds or rounds < 1:
        raise TrainError(f"need rounds >= 1 and steps >= rounds, got steps={steps}, rounds={rounds}")
    cl = cluster or ClusterConfig()
    return ReidTrainConfig(
        data=str(data_root),
        arch=None,
        backbone="<module>" if backbone is None else str(backbone),
        epochs=rounds,
        iters=math.ceil(steps / rounds),
        p=batch[0],
        k=batch[1],
        loss=loss,
        lr=lr,
        step_size=max(rounds, 1),
        size=size,
        seed=seed,
        k1=cl.k1,
        k2=cl.k2,
        eps=cl.eps,
        min_samples=cl.min_samples,
        outliers=cl.outliers,
        threads=threads,
        device=device,
        workers=workers,
        eval_every=rounds,
        progress=False,
    )


def finetune_and_score(
    backbone_model: nn.Module,
    data_root: str | os.PathLike[str],
    steps: int = 200,
    seed: int = 0,
    *,
    rounds: int = 1,
    size: tuple[int, int] = (256, 128),
    batch: tuple[int, int] = (16, 4),
    loss: LossName = "tmp",
    cluster: ClusterConfig | None = None,
    lr: float = 3.5e-4,
    threads: int | None = None,
    device: str = "cpu",
    workers: int = 0,
) -> float:
    """Short TMP fine-tune of a ``pruneopt`` network (e.g. a pruned search candidate), then validation mAP.

    The backbone's weights are copied (its classifier dropped; a grey ``in_chans=1`` stem becomes RGB) into
    a fresh :class:`~reidserve.model.ReidModel`; ``steps`` optimiser steps of P x K = ``batch`` images are
    split over ``rounds`` cluster-and-train rounds; then the query/gallery mAP (in ``[0, 1]``) is returned.
    Nothing is written to disk and ``backbone_model`` is not modified. The result is a deterministic function
    of the arguments on a given machine and thread count. An epoch whose clustering leaves fewer than P
    pseudo-identities trains with every image as its own (:class:`SearchTrainer`); only data with fewer than P
    training images raises :class:`TrainError`.
    """
    cfg = finetune_config(data_root, steps, seed, rounds=rounds, size=size, batch=batch, loss=loss, cluster=cluster,
                          lr=lr, threads=threads, device=device, workers=workers)
    result = run_training(cfg, None, resume=False, log=lambda s: None, backbone_module=backbone_model,
                          trainer_cls=SearchTrainer)
    last = result.last
    if last is None or last.get("val") is None:
        raise TrainError("fine-tuning produced no validation result")
    return float(last["val"]["mAP"])
