"""Embeddings of a list of images (sharded over the ranks of a distributed run) and the re-ID evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..data import Item, ReidDataset, TestTransform
from ..metrics import ReidMetrics, evaluate_features
from .config import TrainError
from .distributed import DistContext
from .images import DecodedImages
from .views import TestViewSet, make_loader

__all__ = ["evaluate_model", "extract_features"]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: DecodedImages | Sequence[Item],
    *,
    size: tuple[int, int] | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    workers: int = 0,
    dist_info: DistContext | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised ``float32`` embeddings ``[N, D]`` of the images, in order, with the model in eval mode.

    ``images`` is a list of :class:`~reidserve.data.Item` (then ``size`` is required) or
    :class:`~reidserve.train.images.DecodedImages`. Under ``torch.distributed`` every rank embeds one contiguous
    shard and the shards are all-gathered.
    """
    if not isinstance(images, DecodedImages):
        if size is None:
            raise TrainError("extract_features needs size=(height, width) for a list of items")
        images = DecodedImages(images, size, cache=False)
    dist_info = dist_info or DistContext(device=torch.device(device))
    n = len(images)
    per = math.ceil(n / dist_info.world)
    lo, hi = min(dist_info.rank * per, n), min((dist_info.rank + 1) * per, n)
    was_training = model.training
    model.eval()
    feats: list[torch.Tensor] = []
    transform = TestTransform(images.size)
    loader = make_loader(TestViewSet(images, range(lo, hi), transform), workers, batch_size=batch_size,
                         shuffle=False)
    dev = dist_info.device
    for x in loader:
        feats.append(model(x.to(dev, non_blocking=True)).float())
        if on_batch is not None:
            on_batch(len(x))
    model.train(was_training)
    dim = _embed_dim(model)
    mine = torch.cat(feats) if feats else torch.zeros(0, dim, device=dev)
    if mine.shape[0] < per:  # pad the last shard so every rank contributes the same shape
        mine = torch.cat([mine, torch.zeros(per - mine.shape[0], dim, device=dev)])
    return dist_info.all_gather_rows(mine, n).cpu().numpy()


def _embed_dim(model: nn.Module) -> int:
    inner = model.module if hasattr(model, "module") else model
    return int(inner.embed_dim)  # type: ignore[union-attr,arg-type]


def evaluate_model(
    model: nn.Module,
    dataset: ReidDataset,
    *,
    size: tuple[int, int],
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    workers: int = 0,
    rerank: bool = False,
    cache: bool = False,
    images: DecodedImages | None = None,
    dist_info: DistContext | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ReidMetrics | None:
    """mAP / CMC / mINP of ``model`` on the dataset's query/gallery split (Market-1501 protocol).

    Features are L2-normalised embeddings compared by Euclidean distance (optionally k-reciprocal re-ranked).
    ``images`` may be the decoded query + gallery images (reused across calls during training). Under
    ``torch.distributed`` every rank extracts a shard; rank 0 returns the metrics, the others ``None``.
    """
    feats = extract_features(
        model,
        images if images is not None else DecodedImages([*dataset.query, *dataset.gallery], size, cache),
        batch_size=batch_size,
        device=device,
        workers=workers,
        dist_info=dist_info,
        on_batch=on_batch,
    )
    if dist_info is not None and not dist_info.main:
        return None
    nq = len(dataset.query)
    q, g = dataset.query, dataset.gallery
    return evaluate_features(
        feats[:nq],
        feats[nq:],
        [i.pid for i in q],
        [i.pid for i in g],
        [i.camid for i in q],
        [i.camid for i in g],
        metric="euclidean",
        rerank=rerank,
    )
