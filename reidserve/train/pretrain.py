"""A supervised source-domain backbone: the stand-in for the ImageNet weights unsupervised re-ID starts from.

Unsupervised re-ID (TMP, cluster-contrast) starts from a pretrained network; with no model hub, the benches
train one with labels on *other* synthetic people and cameras (a dataset generated with another seed) and
then adapt it without labels to the target data. The recipe: a cosine classifier (scale 16, label smoothing
0.1) over the true identities on top of the L2-normalised re-ID embedding, Adam, P x K batches from
:class:`~reidserve.data.PKSampler`, the training augmentation of :func:`~reidserve.train.train_transform`
(optionally with colour jitter). Every random choice is derived from ``seed``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pruneopt.checkpoint import save_subnet
from pruneopt.common.threads import torch_threads

from ..data import PKSampler, load_dataset, relabel
from ..model import HeadConfig, build_reid_model
from .config import TrainError
from .features import evaluate_model
from .images import DecodedImages
from .views import train_transform

__all__ = ["PretrainConfig", "pretrain_backbone"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """What a source-domain pretraining depends on (``steps`` optimiser steps of ``p`` x ``k`` images)."""

    data: str
    arch: str = "resnet18"
    size: tuple[int, int] = (64, 32)
    p: int = 16
    k: int = 4
    steps: int = 150
    lr: float = 3e-3
    seed: int = 0
    color_jitter: float = 0.0
    eval_every: int = 50
    threads: int | None = None

    def validate(self) -> PretrainConfig:
        if self.steps < 1 or self.eval_every < 1:
            raise TrainError(f"steps and eval_every must be >= 1, got {self.steps} and {self.eval_every}")
        if self.p < 2 or self.k < 1:
            raise TrainError(f"batch needs P >= 2 and K >= 1, got {self.p}x{self.k}")
        if self.lr <= 0 or self.seed < 0:
            raise TrainError(f"lr must be > 0 and seed >= 0, got lr={self.lr}, seed={self.seed}")
        if not 0.0 <= self.color_jitter < 1.0:
            raise TrainError(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        return self


def pretrain_backbone(
    cfg: PretrainConfig, out: str | os.PathLike[str], *, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train ``cfg.arch`` with the true identities of ``cfg.data``'s training split, save its backbone into
    ``out`` (``spec.json`` + weights, usable as ``--backbone``) and return the last source-domain metrics
    (query/gallery of the same data, as a dict) with the seconds it took. ``log`` gets the progress lines
    (default: this module's logger, at INFO)."""
    cfg = cfg.validate()
    say = log or logger.info
    ds = load_dataset(cfg.data)
    items, _ = relabel(ds.train)
    with torch_threads(cfg.threads):
        model = build_reid_model(cfg.arch, HeadConfig(input_size=cfg.size), seed=cfg.seed)
        num_ids = len({it.pid for it in items})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            weight = nn.Parameter(torch.randn(num_ids, model.embed_dim) * 0.01)
        params = [q for q in model.parameters() if q.requires_grad] + [weight]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=5e-4)
        sampler = PKSampler([it.pid for it in items], [it.camid for it in items], cfg.p, cfg.k, seed=cfg.seed)
        images = DecodedImages(items, cfg.size, cache=True)
        transform = train_transform(cfg.size, cfg.color_jitter)
        labels = torch.tensor([it.pid for it in items])
        t0 = time.perf_counter()
        step, epoch, total, count = 0, 0, 0.0, 0
        metrics: dict[str, Any] = {}
        while step < cfg.steps:
            sampler.set_epoch(epoch)  # one pass visits every identity once: len(sampler) batches
            model.train()
            for b, batch in enumerate(sampler):
                x = torch.stack([
                    torch.from_numpy(transform(images.get(i), np.random.default_rng([cfg.seed, epoch, b, j])))
                    for j, i in enumerate(batch)
                ])
                z = model(x)  # L2-normalised embeddings; cosine classifier with scale 16, label smoothing 0.1
                logits = 16.0 * z @ F.normalize(weight, dim=1).T
                loss = F.cross_entropy(logits, labels[batch], label_smoothing=0.1)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, count, step = total + loss.item(), count + 1, step + 1
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    m = evaluate_model(model.eval(), ds, size=cfg.size)
                    model.train()
                    metrics = {} if m is None else dict(m.to_dict())
                    say(f"step {step}/{cfg.steps}: loss {total / count:.3f}, source val {m}, "
                        f"{time.perf_counter() - t0:.0f} s")
                    total, count = 0.0, 0
                if step == cfg.steps:
                    break
            epoch += 1
        save_subnet(model.backbone, out)
    return {**metrics, "seconds": time.perf_counter() - t0}
