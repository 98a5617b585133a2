"""Unsupervised re-ID training with TMP ("Take More Positives") and the standard re-ID evaluation.

Each epoch (cluster-contrast-reid's loop, with TMP's loss):

1. extract L2-normalised features of the training images (eval mode, test transform);
2. cluster them into pseudo-identities (:mod:`reidserve.cluster`: FAISS kNN, k-reciprocal Jaccard
   distance, DBSCAN); outliers are dropped or kept as singletons (``--outliers``). When dropping them
   leaves fewer than P clusters (typical of an untrained network) that epoch keeps them as singletons
   and its log line says ``"fallback": "singleton"``; fewer than P identities even then is an error;
3. rebuild a :class:`~reidserve.data.PKSampler` over the pseudo-labels (P identities x K images per batch);
4. train ``iters`` steps. Every image of a batch is augmented twice (:func:`train_transform`); the ``2B``
   embeddings are both the queries and the keys of :func:`cpp_ext.multi_positive_loss_mean` with
   ``self_index`` excluding each embedding itself, so the other view *and every same-cluster sample* are
   positives (``--loss tmp``).
   ``--memory`` adds a cluster-centroid memory (centroids of step 1, momentum-updated with the batch):
   InfoNCE of every embedding against all centroids, its own cluster's centroid being the positive.
   ``--loss centroid`` is that memory loss alone -- the single-positive baseline of cluster-contrast-reid,
   another loss family. ``--loss single-neg`` / ``single-mask`` are TMP's loss with one positive (the other
   view of the same image), the same-cluster others being negatives or left out of the softmax
   (:mod:`.losses`). ``labels="true"`` skips steps 1-2 and trains with the true identities, a seeded
   fraction ``label_noise`` of them reassigned at random (:mod:`.labels`: the mechanism test);
5. Adam (lr 3.5e-4, weight decay 5e-4), learning rate times ``gamma`` every ``step_size`` epochs;
6. log one JSON line (clusters, outliers, NMI/ARI of the pseudo-labels against the true training ids,
   loss, validation mAP/rank-1 on the query/gallery split), save the model and an epoch checkpoint.

Every random choice is derived from ``seed`` (model initialisation, ``(seed, epoch, pass)`` for the
sampler, ``(seed, epoch, batch, slot, view)`` for each augmentation), so an interrupted run resumed from
its last checkpoint ends in the same state as an uninterrupted one (same machine and thread count).

Distributed (``torchrun``; gloo on CPU, NCCL on CUDA): every rank extracts a shard of the images and the
features are all-gathered; rank 0 clusters and broadcasts the labels; the stream of P x K batches is
dealt round-robin to the ranks (each rank trains ``iters`` batches per epoch; gradients are averaged by
DDP); the memory is updated with the all-gathered batch; only rank 0 writes the run folder.

A run folder holds ``config.json``, ``log.jsonl`` (one line per epoch), ``checkpoint.pt`` (written
atomically after every epoch) and ``model/`` (the latest re-ID model, see :mod:`reidserve.model`).

Modules: :mod:`.config` (the configuration, ``PxK`` parsing), :mod:`.distributed` (ranks and collectives),
:mod:`.images` (decoded images shared between runs), :mod:`.views` (the torch datasets), :mod:`.features`
(embeddings and evaluation), :mod:`.losses`, :mod:`.labels` (true labels with injected noise),
:mod:`.runfolder` (checkpoint, log, config on disk), :mod:`.trainer` (one epoch), :mod:`.run` (a whole run),
:mod:`.finetune` (the search's short fine-tunes) and :mod:`.pretrain` (a supervised source backbone).
"""

from __future__ import annotations

from ..data import load_image  # noqa: F401 - importable from here before the split; decoding is in .images
from .config import (
    BATCH_LOSSES,
    LABEL_SOURCES,
    LOSSES,
    RUNTIME_FIELDS,
    LossName,
    ReidTrainConfig,
    TrainError,
    parse_batch,
)
from .features import evaluate_model, extract_features
from .finetune import finetune_and_score, finetune_config
from .images import DecodedImages, clear_shared_image_cache, shared_image_cache_limit
from .labels import dense_labels, inject_label_noise
from .losses import compute_loss, single_positive_masked_loss, update_memory
from .pretrain import PretrainConfig, pretrain_backbone
from .run import TrainResult, train_reid
from .views import TwoViewSet, train_transform

__all__ = [
    "BATCH_LOSSES",
    "LABEL_SOURCES",
    "LOSSES",
    "LossName",
    "PretrainConfig",
    "RUNTIME_FIELDS",
    "DecodedImages",
    "ReidTrainConfig",
    "TrainError",
    "TrainResult",
    "TwoViewSet",
    "clear_shared_image_cache",
    "compute_loss",
    "dense_labels",
    "evaluate_model",
    "extract_features",
    "finetune_and_score",
    "finetune_config",
    "inject_label_noise",
    "parse_batch",
    "pretrain_backbone",
    "shared_image_cache_limit",
    "single_positive_masked_loss",
    "train_reid",
    "train_transform",
    "update_memory",
]
