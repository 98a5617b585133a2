"""One training run's model, optimiser and data, and one epoch of TMP training (see :mod:`reidserve.train`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..cluster import ClusterResult, cluster_features, singleton_labels
from ..data import PKSampler, ReidDataset
from ..model import ReidModel
from .config import BATCH_LOSSES, ReidTrainConfig, TrainError
from .distributed import DistContext
from .features import evaluate_model, extract_features
from .images import DecodedImages
from .labels import dense_labels, inject_label_noise
from .losses import centroids, compute_loss, update_memory
from .runfolder import CKPT_FORMAT
from .views import TwoViewSet, make_loader, train_transform

__all__ = ["Trainer", "epoch_batches", "make_progress", "pseudo_label_scores", "summary_line"]

Times = dict[str, float]


def make_progress(enabled: bool) -> Progress:
    """The progress bars of a run, on stderr (nothing shown when ``enabled`` is false)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


def epoch_batches(
    labels: np.ndarray, camids: np.ndarray, cfg: ReidTrainConfig, epoch: int, count: int
) -> list[list[tuple[int, int, int]]]:
    """The first ``count`` P x K batches of the epoch's stream, as ``(index, batch, slot)`` keys."""
    try:
        sampler = PKSampler(labels, camids, cfg.p, cfg.k, seed=cfg.seed)
    except ValueError as exc:
        raise TrainError(
            f"epoch {epoch}: clustering left {len(np.unique(labels[labels >= 0]))} pseudo-identities, fewer than "
            f"P={cfg.p} ({exc}); use a smaller --eps (or --k1) so DBSCAN splits the data into more clusters, fewer "
            f"identities per batch (--batch), or a better initial backbone"
        ) from exc
    out: list[list[tuple[int, int, int]]] = []
    rounds = 0
    while len(out) < count:
        sampler.set_epoch(epoch * 100_000 + rounds)
        for batch in sampler:
            g = len(out)
            out.append([(int(i), g, s) for s, i in enumerate(batch)])
            if len(out) == count:
                break
        rounds += 1
    return out


def pseudo_label_scores(true_pids: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """NMI and ARI of the pseudo-labels (each outlier its own cluster) against the true identities."""
    if np.unique(true_pids).size < 2:
        return {"nmi": None, "ari": None}
    lab = singleton_labels(labels)
    return {
        "nmi": float(normalized_mutual_info_score(true_pids, lab)),
        "ari": float(adjusted_rand_score(true_pids, lab)),
    }


def summary_line(rec: dict[str, Any], epochs: int) -> str:
    """One human-readable line of an epoch's log record."""
    val = rec.get("val")
    nmi = rec.get("nmi")
    parts = [
        f"epoch {rec['epoch']}/{epochs}",
        f"clusters {rec['clusters']} outliers {rec['outliers']}",
        *([f"NMI {nmi:.3f} ARI {rec['ari']:.3f}"] if nmi is not None else []),
        f"loss {rec['loss']:.4f}",
        f"{rec['train_images_per_s']:.1f} img/s",
        *([f"val mAP {100 * val['mAP']:.2f} R1 {100 * val['rank1']:.2f}"] if val else []),
    ]
    return "  ".join(parts)


class Trainer:
    """One training run (used by :func:`~reidserve.train.train_reid` with a run folder, and by
    :func:`~reidserve.train.finetune_and_score` in memory): its model, optimiser, scheduler and images."""

    def __init__(
        self,
        cfg: ReidTrainConfig,
        dataset: ReidDataset,
        model: ReidModel,
        dist_info: DistContext,
        log: Callable[[str], None],
    ) -> None:
        self.cfg, self.dataset, self.dist, self.log = cfg, dataset, dist_info, log
        self.model = model.to(dist_info.device)
        self.train_items = list(dataset.train)
        self.camids = np.array([it.camid for it in self.train_items], dtype=np.int64)
        self.true_pids = np.array([it.pid for it in self.train_items], dtype=np.int64)
        self.images = DecodedImages(self.train_items, cfg.size, cfg.cache)
        self.eval_images = DecodedImages([*dataset.query, *dataset.gallery], cfg.size, cfg.cache)
        self.views = TwoViewSet(self.images, train_transform(cfg.size, cfg.color_jitter), cfg.seed)
        # labels="true": the true identities with a fixed, seeded fraction reassigned (the mechanism test)
        self.given_labels = (
            inject_label_noise(dense_labels(self.true_pids), cfg.label_noise, cfg.seed) if cfg.labels == "true"
            else None
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        self.net: nn.Module = self.model
        if dist_info.world > 1:
            self.net = DistributedDataParallel(
                self.model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None
            )
        self.progress_enabled = dist_info.main and (
            cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        )

    # -- state ---------------------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs after ``epoch`` (the checkpoint's content)."""
        return {
            "format": CKPT_FORMAT,
            "epoch": epoch,
            "config": self.cfg.identity(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state(self, ckpt: dict[str, Any]) -> int:
        """Restore a checkpoint's state; returns the epoch it was taken after."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        return int(ckpt["epoch"])

    # -- one epoch -------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, progress: Progress) -> dict[str, Any]:
        """Features, pseudo-labels, ``iters`` training steps and (when due) validation; the epoch's log record.

        With the true labels (``labels="true"``) there is no clustering, and features are extracted only for
        the centroid memory."""
        cfg, dist_info = self.cfg, self.dist
        times: Times = {}
        feats = self._features(epoch, progress, times) if self.given_labels is None or cfg.uses_memory else None
        if self.given_labels is None:
            assert feats is not None
            result, labels, fallback = self._pseudo_labels(feats, epoch, times)
        else:
            labels, fallback = self.given_labels, None
            result = ClusterResult(labels, int(np.unique(labels).size), 0, {})
        num_ids = int(labels.max()) + 1 if (labels >= 0).any() else 0
        batches = epoch_batches(labels, self.camids, cfg, epoch, cfg.iters * dist_info.world)
        mine = batches[dist_info.rank :: dist_info.world]
        memory = None
        if cfg.uses_memory and feats is not None:
            memory = centroids(feats, labels, num_ids).to(dist_info.device)
        record: dict[str, Any] = {
            "epoch": epoch,
            "clusters": result.num_clusters,
            "outliers": result.num_outliers,
            "identities": int(np.unique(labels[labels >= 0]).size),
            "world_size": dist_info.world,
            **({"fallback": fallback} if fallback else {}),
            **pseudo_label_scores(self.true_pids, labels),
        }
        record.update(self._train(epoch, labels, mine, memory, progress, times))
        self.scheduler.step()
        record["val"] = self._validate(epoch, progress, times)
        record["seconds"] = {k: round(v, 3) for k, v in times.items()}
        return record

    def _features(self, epoch: int, progress: Progress, times: Times) -> np.ndarray:
        t0 = time.perf_counter()
        task = progress.add_task(f"epoch {epoch} features", total=len(self.images), info="")
        feats = extract_features(
            self.model,  # not the DDP wrapper: shards differ in length, and DDP's forward would sync buffers
            self.images,
            batch_size=self.cfg.eval_batch,
            workers=self.cfg.workers,
            dist_info=self.dist,
            on_batch=lambda b: progress.advance(task, b),
        )
        progress.remove_task(task)
        times["extract"] = time.perf_counter() - t0
        return feats

    def _cluster(self, feats: np.ndarray, epoch: int) -> ClusterResult | str:
        try:
            return cluster_features(feats, self.cfg.cluster_config(), threads=self.cfg.threads)
        except ValueError as exc:
            return f"epoch {epoch}: clustering failed: {exc}"

    def _pseudo_labels(self, feats: np.ndarray, epoch: int, times: Times) -> tuple[ClusterResult, np.ndarray,
                                                                                      str | None]:
        """Rank 0 clusters and hands the result to every rank; returns it, the labels to train with, and the
        fallback used (``"singleton"`` when too few clusters fill a batch)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        result = self._cluster(feats, epoch) if self.dist.main else None
        result = self.dist.broadcast_object(result)
        if isinstance(result, str):
            raise TrainError(result)
        assert result is not None
        times["cluster"] = time.perf_counter() - t0
        labels = result.labels
        fallback = None
        if result.num_identities < cfg.p and cfg.outliers == "drop" and len(labels) >= cfg.p:
            # too few clusters to fill a batch (e.g. features of an untrained network): train this epoch with
            # the outliers as singletons rather than stop; the log line says so
            labels, fallback = singleton_labels(labels), "singleton"
            if self.dist.main:
                self.log(
                    f"epoch {epoch}: only {result.num_identities} clusters (< P={cfg.p}); this epoch keeps the "
                    f"{result.num_outliers} outliers as singletons"
                )
        return result, labels, fallback

    def _train(self, epoch: int, labels: np.ndarray, batches: list[list[tuple[int, int, int]]],
               memory: torch.Tensor | None, progress: Progress, times: Times) -> dict[str, Any]:
        """Train on this rank's ``batches``; the loss averages and step counts of the log record."""
        cfg, dist_info = self.cfg, self.dist
        t0 = time.perf_counter()
        self.views.epoch = epoch
        self.views.labels = labels
        self.net.train()
        loader = make_loader(self.views, cfg.workers, batch_sampler=batches,
                             pin_memory=dist_info.device.type == "cuda")
        task = progress.add_task(f"epoch {epoch} train", total=len(batches), info="")
        sums = {"loss": 0.0, "loss_batch": 0.0, "loss_memory": 0.0}
        steps = 0
        for v1, v2, y in loader:
            for key, value in self._step(v1, v2, y, memory).items():
                sums[key] += value
            steps += 1
            progress.update(task, advance=1, info=f"loss {sums['loss'] / steps:.3f}")
        progress.remove_task(task)
        dist_info.broadcast_buffers(self.model)  # batch-norm statistics of rank 0 everywhere
        times["train"] = time.perf_counter() - t0
        mean = {k: v / max(steps, 1) for k, v in sums.items()}
        return {
            "loss": mean["loss"],
            **({"loss_batch": mean["loss_batch"]} if cfg.loss in BATCH_LOSSES else {}),
            **({"loss_memory": mean["loss_memory"]} if memory is not None else {}),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "gem_p": float(self.model.pool.p.detach()[0]),
            "steps": steps,
            "train_images_per_s": steps * cfg.p * cfg.k / max(times["train"], 1e-9),
        }

    def _step(self, v1: torch.Tensor, v2: torch.Tensor, y: torch.Tensor,
              memory: torch.Tensor | None) -> dict[str, float]:
        """One optimiser step on a batch of two views; the loss and its parts."""
        cfg, dev = self.cfg, self.dist.device
        x = torch.cat([v1, v2]).to(dev, non_blocking=True)
        y2 = torch.cat([y, y]).to(dev, dtype=torch.int64)
        parts = compute_loss(self.net(x).float().contiguous(), y2, memory, loss=cfg.loss, tau=cfg.tau,
                             tmp_mode=cfg.tmp_mode, memory_weight=cfg.memory_weight)
        self.optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        self.optimizer.step()
        if memory is not None:
            self._update_memory(memory, parts["z"], y2)
        return {k: float(v.detach()) for k, v in parts.items() if k in ("loss", "loss_batch", "loss_memory")}

    @torch.no_grad()
    def _update_memory(self, memory: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> None:
        z = self.dist.all_gather_rows(z, z.shape[0] * self.dist.world)
        y = self.dist.all_gather_rows(y, y.shape[0] * self.dist.world)
        update_memory(memory, z, y, self.cfg.momentum)

    def _validate(self, epoch: int, progress: Progress, times: Times) -> dict[str, Any] | None:
        """Query/gallery metrics when this epoch is due (every ``eval_every`` epochs and the last one)."""
        cfg = self.cfg
        if not (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            return None
        t0 = time.perf_counter()
        task = progress.add_task(
            f"epoch {epoch} eval", total=len(self.dataset.query) + len(self.dataset.gallery), info=""
        )
        metrics = evaluate_model(
            self.model,
            self.dataset,
            size=cfg.size,
            batch_size=cfg.eval_batch,
            workers=cfg.workers,
            images=self.eval_images,
            dist_info=self.dist,
            on_batch=lambda b: progress.advance(task, b),
        )
        progress.remove_task(task)
        times["eval"] = time.perf_counter() - t0
        return None if metrics is None else dict(metrics.to_dict())
