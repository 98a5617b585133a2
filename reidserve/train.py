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
   ``--loss centroid`` is that memory loss alone -- the single-positive baseline of cluster-contrast-reid;
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cluster import OUTLIER_MODES, ClusterConfig, ClusterResult, cluster_features, singleton_labels
from .data import Item, PKSampler, ReidDataset, TestTransform, TrainTransform, load_dataset, load_image, resize
from .errors import ReidserveError
from .metrics import ReidMetrics, evaluate_features
from .model import (
    HeadConfig,
    ReidModel,
    backbone_from_module,
    backbone_from_subnet,
    build_reid_model,
    save_reid_model,
)

__all__ = [
    "LOSSES",
    "RUNTIME_FIELDS",
    "ReidTrainConfig",
    "TrainError",
    "TrainResult",
    "compute_loss",
    "evaluate_model",
    "extract_features",
    "finetune_and_score",
    "finetune_config",
    "parse_batch",
    "train_reid",
    "train_transform",
    "update_memory",
]

LOSSES = ("tmp", "centroid")
TMP_MODES = ("mean_log", "log_sum")
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
CKPT_FORMAT = "reidserve.train/1"

# Fields that may differ when a run is resumed (they change speed or reporting, not the training itself).
RUNTIME_FIELDS = frozenset(
    {"epochs", "threads", "workers", "device", "eval_every", "eval_batch", "cache", "progress", "dist_backend"}
)


class TrainError(ReidserveError):
    """A training run that cannot start or continue; the message says what to change."""


def parse_batch(text: str) -> tuple[int, int]:
    """``'16x8'`` or ``'16*8'`` -> ``(P, K)``: P pseudo-identities with K images each."""
    parts = str(text).lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise TrainError(f"batch must look like PxK (identities x images per identity), e.g. 16x8, got {text!r}")
    p, k = int(parts[0]), int(parts[1])
    if p < 2 or k < 1:
        raise TrainError(f"batch {text!r}: need at least 2 identities (P >= 2) and K >= 1")
    return p, k


@dataclass(frozen=True)
class ReidTrainConfig:
    """Everything a training run depends on. Fields in :data:`RUNTIME_FIELDS` may change on resume."""

    data: str
    arch: str | None = "resnet18"
    backbone: str | None = None  # a pruned winner folder (spec.json + weights.safetensors) instead of arch
    epochs: int = 50
    iters: int = 200
    p: int = 16
    k: int = 8
    loss: Literal["tmp", "centroid"] = "tmp"
    memory: bool = False
    memory_weight: float = 1.0
    momentum: float = 0.2
    tau: float = 0.05
    tmp_mode: Literal["mean_log", "log_sum"] = "mean_log"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    size: tuple[int, int] = (256, 128)
    seed: int = 0
    k1: int = 30
    k2: int = 6
    eps: float = 0.6
    min_samples: int = 4
    outliers: Literal["drop", "singleton"] = "drop"
    # runtime
    threads: int | None = None
    workers: int = 0
    device: str = "cpu"
    eval_every: int = 1
    eval_batch: int = 128
    cache: bool = True
    progress: bool | None = None  # None: when stderr is a terminal
    dist_backend: str | None = None  # None: nccl on CUDA, gloo on CPU

    def validate(self) -> ReidTrainConfig:
        if (self.arch is None) == (self.backbone is None):
            raise TrainError("give exactly one of --arch (a fresh network) or --backbone (a pruned winner folder)")
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.iters >= 1, f"iters must be >= 1, got {self.iters}"),
            (self.p >= 2 and self.k >= 1, f"batch needs P >= 2 and K >= 1, got {self.p}x{self.k}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.tmp_mode in TMP_MODES, f"tmp_mode must be one of {', '.join(TMP_MODES)}, got {self.tmp_mode!r}"),
            (self.tau > 0, f"tau must be > 0, got {self.tau}"),
            (0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.memory_weight >= 0, f"memory_weight must be >= 0, got {self.memory_weight}"),
            (self.lr > 0 and self.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
            (self.step_size >= 1 and 0 < self.gamma <= 1, "step_size must be >= 1 and gamma in (0, 1]"),
            (self.size[0] >= 16 and self.size[1] >= 16, f"image size must be at least 16x16, got {self.size}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.eval_every >= 1 and self.eval_batch >= 1, "eval_every and eval_batch must be >= 1"),
            (self.outliers in OUTLIER_MODES, f"outliers must be one of {', '.join(OUTLIER_MODES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)
        self.cluster_config()  # validates k1, k2, eps, min_samples
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise TrainError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TrainError("--device cuda was asked for but torch sees no CUDA device (this is a CPU build?)")
        return self

    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig(k1=self.k1, k2=self.k2, eps=self.eps, min_samples=self.min_samples, outliers=self.outliers)

    @property
    def uses_memory(self) -> bool:
        return self.loss == "centroid" or self.memory

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        return d

    def identity(self) -> dict[str, Any]:
        """The fields that must match to resume a run (paths resolved)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}
        d["data"] = str(Path(self.data).expanduser().resolve())
        if self.backbone is not None:
            d["backbone"] = str(Path(self.backbone).expanduser().resolve())
        return d


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: epochs run in this call, the last epoch reached, every log record, the model."""

    epochs_run: int
    last_epoch: int
    records: list[dict[str, Any]]
    model: ReidModel

    @property
    def last(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None


# ----------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owned: bool = False  # this module initialised the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_gather_rows(self, x: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate equal-sized row shards of every rank (in rank order) and trim to ``total`` rows."""
        if self.world == 1:
            return x[:total]
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)[:total]

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _setup_distributed(cfg: ReidTrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(device=torch.device(cfg.device))
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    owned = False
    if not dist.is_initialized():
        backend = cfg.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
        owned = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owned=owned)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


# Decoded, resized images shared by every run in this process: a search worker fine-tunes candidate after candidate
# on the same data, and decoding them again was ~6% of each candidate's time. Keyed by (path, modification time,
# file size, output size), so that a changed file is read again; filled up to $REIDSERVE_IMAGE_CACHE_MB (default
# 1024) MiB, after which images are kept per run only.
_SHARED_IMAGES: dict[tuple[str, int, int, tuple[int, int]], np.ndarray] = {}
_SHARED_BYTES = [0]


def shared_image_cache_limit() -> int:
    """Bytes the process-wide decoded-image cache may hold ($REIDSERVE_IMAGE_CACHE_MB, default 1024 MiB)."""
    try:
        return max(0, int(float(os.environ.get("REIDSERVE_IMAGE_CACHE_MB", "1024")) * 2**20))
    except ValueError:
        return 1024 * 2**20


def clear_shared_image_cache() -> None:
    """Forget the process-wide decoded images."""
    _SHARED_IMAGES.clear()
    _SHARED_BYTES[0] = 0


class _Images:
    """Images of ``items`` resized to ``size`` (``uint8`` HxWx3); when ``cache`` is on, decoded once per run and
    shared with later runs of this process (see ``_SHARED_IMAGES``)."""

    def __init__(self, items: Sequence[Item], size: tuple[int, int], cache: bool) -> None:
        self.items = list(items)
        self.size = size
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int) -> np.ndarray:
        if self._cache is None:
            return resize(load_image(self.items[index].path), self.size)
        img = self._cache.get(index)
        if img is not None:
            return img
        path = str(self.items[index].path)
        try:
            st = os.stat(path)
            key: tuple[str, int, int, tuple[int, int]] | None = (path, st.st_mtime_ns, st.st_size, tuple(self.size))
        except OSError:
            key = None  # load_image reports the problem
        img = _SHARED_IMAGES.get(key) if key is not None else None
        if img is None:
            img = resize(load_image(path), self.size)
            img.setflags(write=False)  # shared between runs: a transform must not change it in place
            if key is not None and _SHARED_BYTES[0] + img.nbytes <= shared_image_cache_limit():
                _SHARED_IMAGES[key] = img
                _SHARED_BYTES[0] += img.nbytes
        self._cache[index] = img
        return img


class _TestSet(torch.utils.data.Dataset):
    def __init__(self, images: _Images, indices: Sequence[int], transform: TestTransform) -> None:
        self.images, self.indices, self.transform = images, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(self.images.get(self.indices[i])))


class _TwoViewSet(torch.utils.data.Dataset):
    """Key ``(index, batch, slot)`` -> two augmented views and the pseudo-label of image ``index``."""

    def __init__(self, images: _Images, transform: TrainTransform, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed
        self.epoch = 0
        self.labels = np.zeros(len(images), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, batch, slot = key
        img = self.images.get(index)
        views = [
            self.transform(img, np.random.default_rng([self.seed, self.epoch, batch, slot, v])) for v in (0, 1)
        ]
        return torch.from_numpy(views[0]), torch.from_numpy(views[1]), int(self.labels[index])


def train_transform(size: tuple[int, int]) -> TrainTransform:
    """The re-ID augmentation at ``size``: flip, pad + random crop, random erasing; the padding is 10 pixels
    at width 128 (the usual 256x128 recipe) and scales with the width (2 pixels at 64x32)."""
    return TrainTransform(size, pad=max(1, round(10 * size[1] / 128)))


def _loader(dataset: torch.utils.data.Dataset, workers: int, **kwargs: Any) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, num_workers=workers, persistent_workers=False, **kwargs)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: _Images | Sequence[Item],
    *,
    size: tuple[int, int] | None = None,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    workers: int = 0,
    dist_info: _Dist | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """L2-normalised ``float32`` embeddings ``[N, D]`` of the images, in order, with the model in eval mode.

    ``images`` is a list of :class:`~reidserve.data.Item` (then ``size`` is required) or an image cache.
    Under ``torch.distributed`` every rank embeds one contiguous shard and the shards are all-gathered.
    """
    if not isinstance(images, _Images):
        if size is None:
            raise TrainError("extract_features needs size=(height, width) for a list of items")
        images = _Images(images, size, cache=False)
    dist_info = dist_info or _Dist(device=torch.device(device))
    n = len(images)
    per = math.ceil(n / dist_info.world)
    lo, hi = min(dist_info.rank * per, n), min((dist_info.rank + 1) * per, n)
    was_training = model.training
    model.eval()
    feats: list[torch.Tensor] = []
    transform = TestTransform(images.size)
    loader = _loader(_TestSet(images, range(lo, hi), transform), workers, batch_size=batch_size, shuffle=False)
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
    return int(inner.embed_dim)  # type: ignore[union-attr]


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
    images: _Images | None = None,
    dist_info: _Dist | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ReidMetrics | None:
    """mAP / CMC / mINP of ``model`` on the dataset's query/gallery split (Market-1501 protocol).

    Features are L2-normalised embeddings compared by Euclidean distance (optionally k-reciprocal re-ranked).
    ``images`` may be a cache of the query + gallery images (reused across calls during training). Under
    ``torch.distributed`` every rank extracts a shard; rank 0 returns the metrics, the others ``None``.
    """
    feats = extract_features(
        model,
        images if images is not None else _Images([*dataset.query, *dataset.gallery], size, cache),
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


# ----------------------------------------------------------------------------------------------
# run folder
# ----------------------------------------------------------------------------------------------


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash: everything after it is not trusted
    return out


def _load_checkpoint(out: Path, cfg: ReidTrainConfig) -> dict[str, Any] | None:
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user-facing error
        raise TrainError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it to start over") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise TrainError(f"{path} is not a reidserve training checkpoint ({CKPT_FORMAT}); use another --out")
    saved = ckpt.get("config", {})
    mine = cfg.identity()
    diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if diff:
        shown = ", ".join(f"{k}: run has {saved.get(k)!r}, now {mine.get(k)!r}" for k in diff[:6])
        raise TrainError(
            f"{out} holds a run with a different configuration ({shown}); resume it with the same options, "
            f"or train into a new --out folder"
        )
    return ckpt


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _make_progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


def _epoch_batches(
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


def _centroids(features: np.ndarray, labels: np.ndarray, num: int) -> torch.Tensor:
    """L2-normalised mean feature of every pseudo-identity ``0..num-1`` (outliers ``-1`` ignored)."""
    keep = labels >= 0
    sums = torch.zeros(num, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, torch.from_numpy(labels[keep]), torch.from_numpy(features[keep]).double())
    return F.normalize(sums.float(), dim=1)


def _pseudo_label_scores(true_pids: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    if np.unique(true_pids).size < 2:
        return {"nmi": None, "ari": None}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    lab = singleton_labels(labels)  # each outlier its own cluster
    return {
        "nmi": float(normalized_mutual_info_score(true_pids, lab)),
        "ari": float(adjusted_rand_score(true_pids, lab)),
    }


class _Trainer:
    """One training run (used by :func:`train` with a run folder, and by :func:`finetune_and_score`)."""

    def __init__(
        self,
        cfg: ReidTrainConfig,
        dataset: ReidDataset,
        model: ReidModel,
        dist_info: _Dist,
        log: Callable[[str], None],
    ) -> None:
        self.cfg, self.dataset, self.dist, self.log = cfg, dataset, dist_info, log
        self.model = model.to(dist_info.device)
        self.train_items = list(dataset.train)
        self.camids = np.array([it.camid for it in self.train_items], dtype=np.int64)
        self.true_pids = np.array([it.pid for it in self.train_items], dtype=np.int64)
        self.images = _Images(self.train_items, cfg.size, cfg.cache)
        self.eval_images = _Images([*dataset.query, *dataset.gallery], cfg.size, cfg.cache)
        self.views = _TwoViewSet(self.images, train_transform(cfg.size), cfg.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net: nn.Module = DistributedDataParallel(
                self.model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None
            )
        else:
            self.net = self.model
        self.progress_enabled = dist_info.main and (
            cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        )

    # -- state ---------------------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "format": CKPT_FORMAT,
            "epoch": epoch,
            "config": self.cfg.identity(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state(self, ckpt: dict[str, Any]) -> int:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        return int(ckpt["epoch"])

    # -- one epoch -------------------------------------------------------------------------------
    def _cluster(self, feats: np.ndarray, epoch: int) -> ClusterResult | str:
        try:
            return cluster_features(feats, self.cfg.cluster_config(), threads=self.cfg.threads)
        except ValueError as exc:
            return f"epoch {epoch}: clustering failed: {exc}"

    def run_epoch(self, epoch: int, progress: Any) -> dict[str, Any]:
        cfg, dist_info = self.cfg, self.dist
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        task = progress.add_task(f"epoch {epoch} features", total=len(self.images), info="")
        feats = extract_features(
            self.model,  # not the DDP wrapper: shards differ in length, and DDP's forward would sync buffers
            self.images,
            batch_size=cfg.eval_batch,
            workers=cfg.workers,
            dist_info=dist_info,
            on_batch=lambda b: progress.advance(task, b),
        )
        progress.remove_task(task)
        times["extract"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        result = self._cluster(feats, epoch) if dist_info.main else None
        result = dist_info.broadcast_object(result)
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
            if dist_info.main:
                self.log(
                    f"epoch {epoch}: only {result.num_identities} clusters (< P={cfg.p}); this epoch keeps the "
                    f"{result.num_outliers} outliers as singletons"
                )
        num_ids = int(labels.max()) + 1 if (labels >= 0).any() else 0
        batches = _epoch_batches(labels, self.camids, cfg, epoch, cfg.iters * dist_info.world)
        mine = batches[dist_info.rank :: dist_info.world]
        memory = _centroids(feats, labels, num_ids).to(dist_info.device) if cfg.uses_memory else None
        record: dict[str, Any] = {
            "epoch": epoch,
            "clusters": result.num_clusters,
            "outliers": result.num_outliers,
            "identities": int(np.unique(labels[labels >= 0]).size),
            "world_size": dist_info.world,
            **({"fallback": fallback} if fallback else {}),
            **_pseudo_label_scores(self.true_pids, labels),
        }

        t0 = time.perf_counter()
        self.views.epoch = epoch
        self.views.labels = labels
        self.net.train()
        loader = _loader(self.views, cfg.workers, batch_sampler=mine, pin_memory=dist_info.device.type == "cuda")
        task = progress.add_task(f"epoch {epoch} train", total=len(mine), info="")
        sums = {"loss": 0.0, "loss_batch": 0.0, "loss_memory": 0.0}
        steps = 0
        for v1, v2, y in loader:
            dev = dist_info.device
            x = torch.cat([v1, v2]).to(dev, non_blocking=True)
            y2 = torch.cat([y, y]).to(dev, dtype=torch.int64)
            parts = self._loss(self.net(x).float().contiguous(), y2, memory)
            loss = parts["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if memory is not None:
                self._update_memory(memory, parts["z"], y2)
            for key in sums:
                if key in parts:
                    sums[key] += float(parts[key].detach())
            steps += 1
            progress.update(task, advance=1, info=f"loss {sums['loss'] / steps:.3f}")
        progress.remove_task(task)
        dist_info.broadcast_buffers(self.model)  # batch-norm statistics of rank 0 everywhere
        times["train"] = time.perf_counter() - t0
        images = steps * cfg.p * cfg.k
        record.update(
            {
                "loss": sums["loss"] / max(steps, 1),
                **({"loss_batch": sums["loss_batch"] / max(steps, 1)} if cfg.loss == "tmp" else {}),
                **({"loss_memory": sums["loss_memory"] / max(steps, 1)} if memory is not None else {}),
                "lr": float(self.optimizer.param_groups[0]["lr"]),
                "gem_p": float(self.model.pool.p.detach()[0]),
                "steps": steps,
                "train_images_per_s": images / max(times["train"], 1e-9),
            }
        )
        self.scheduler.step()

        record["val"] = None
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
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
                dist_info=dist_info,
                on_batch=lambda b: progress.advance(task, b),
            )
            progress.remove_task(task)
            times["eval"] = time.perf_counter() - t0
            if metrics is not None:
                record["val"] = {k: v for k, v in metrics.to_dict().items()}
        record["seconds"] = {k: round(v, 3) for k, v in times.items()}
        return record

    def _loss(self, z: torch.Tensor, y: torch.Tensor, memory: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        return compute_loss(
            z, y, memory, loss=cfg.loss, tau=cfg.tau, tmp_mode=cfg.tmp_mode, memory_weight=cfg.memory_weight
        )

    @torch.no_grad()
    def _update_memory(self, memory: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> None:
        z = self.dist.all_gather_rows(z, z.shape[0] * self.dist.world)
        y = self.dist.all_gather_rows(y, y.shape[0] * self.dist.world)
        update_memory(memory, z, y, self.cfg.momentum)


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
    import cpp_ext

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


def _summary_line(rec: dict[str, Any], epochs: int) -> str:
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


def _initial_model(cfg: ReidTrainConfig, backbone_module: nn.Module | None = None) -> ReidModel:
    head = HeadConfig(input_size=cfg.size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if backbone_module is not None:
            return ReidModel(backbone_from_module(backbone_module), head)
        if cfg.backbone is not None:
            return ReidModel(backbone_from_subnet(cfg.backbone), head)
        assert cfg.arch is not None
        return build_reid_model(cfg.arch, head, seed=cfg.seed)


def _run(
    cfg: ReidTrainConfig,
    out: Path | None,
    *,
    resume: bool,
    log: Callable[[str], None],
    backbone_module: nn.Module | None = None,
) -> TrainResult:
    cfg = cfg.validate()
    dataset = load_dataset(cfg.data)
    dist_info = _setup_distributed(cfg)
    try:
        with _torch_threads(cfg.threads):
            model = _initial_model(cfg, backbone_module)
            trainer = _Trainer(cfg, dataset, model, dist_info, log)
            start = 0
            records: list[dict[str, Any]] = []
            if out is not None:
                # rank 0 reads the checkpoint and hands it (or its error) to every rank, so all ranks start from
                # the same weights and optimiser state even without a shared file system
                loaded: tuple[str, Any] | None = None
                if dist_info.main:
                    try:
                        loaded = ("ok", _load_checkpoint(out, cfg))
                    except TrainError as exc:
                        loaded = ("error", str(exc))
                loaded = dist_info.broadcast_object(loaded)
                assert loaded is not None
                if loaded[0] == "error":
                    raise TrainError(loaded[1])
                ckpt = loaded[1]
                if ckpt is None and resume:
                    raise TrainError(f"--resume: {out / CHECKPOINT_FILE} does not exist, there is nothing to resume")
                if ckpt is not None:
                    start = trainer.load_state(ckpt)
                    records = [r for r in _read_log(out / LOG_FILE) if int(r.get("epoch", 0)) <= start]
                    if dist_info.main:
                        log(f"resuming {out} after epoch {start}")
                if dist_info.main:
                    out.mkdir(parents=True, exist_ok=True)
                    _atomic_write_text(out / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
                    _atomic_write_text(out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in records))
            if start >= cfg.epochs and dist_info.main:
                log(f"{out} already trained for {start} epochs (--epochs {cfg.epochs}); nothing to do")
            with _make_progress(trainer.progress_enabled) as progress:
                for epoch in range(start + 1, cfg.epochs + 1):
                    rec = trainer.run_epoch(epoch, progress)
                    records.append(rec)
                    if dist_info.main:
                        log(_summary_line(rec, cfg.epochs))
                        if out is not None:
                            save_reid_model(trainer.model, out / MODEL_DIR)
                            with open(out / LOG_FILE, "a", encoding="utf-8") as fh:
                                fh.write(json.dumps(rec) + "\n")
                                fh.flush()
                                os.fsync(fh.fileno())
                            _atomic_torch_save(trainer.state(epoch), out / CHECKPOINT_FILE)
                    dist_info.barrier()
            return TrainResult(max(0, cfg.epochs - start), max(start, cfg.epochs), records, trainer.model.cpu().eval())
    finally:
        if dist_info.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def train_reid(
    cfg: ReidTrainConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train into the run folder ``out`` (see the module docstring), resuming from its checkpoint if present.

    A checkpoint with a different configuration (other than :data:`RUNTIME_FIELDS`) is refused with a
    :class:`TrainError`; ``resume=True`` additionally requires a checkpoint to exist. ``log`` receives one
    line per epoch (rank 0 only); default: print to stdout.
    """
    return _run(cfg, Path(out), resume=resume, log=log or (lambda s: print(s, flush=True)))


def finetune_config(
    data_root: str | os.PathLike[str],
    steps: int = 200,
    seed: int = 0,
    *,
    rounds: int = 1,
    size: tuple[int, int] = (256, 128),
    batch: tuple[int, int] = (16, 4),
    loss: Literal["tmp", "centroid"] = "tmp",
    cluster: ClusterConfig | None = None,
    lr: float = 3.5e-4,
    threads: int | None = None,
    device: str = "cpu",
    workers: int = 0,
    backbone: str | os.PathLike[str] | None = None,
) -> ReidTrainConfig:
    """The :class:`ReidTrainConfig` of :func:`finetune_and_score`'s fine-tune (``steps`` split over ``rounds``).

    With ``backbone`` (a subnetwork folder), :func:`train` into a run folder does the same fine-tune as
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
    loss: Literal["tmp", "centroid"] = "tmp",
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
    of the arguments on a given machine and thread count. Raises :class:`TrainError` when the clustering
    leaves fewer than P pseudo-identities even with the outliers as singletons (a too-large ``eps``).
    """
    cfg = finetune_config(data_root, steps, seed, rounds=rounds, size=size, batch=batch, loss=loss, cluster=cluster,
                          lr=lr, threads=threads, device=device, workers=workers)
    result = _run(cfg, None, resume=False, log=lambda s: None, backbone_module=backbone_model)
    last = result.last
    if last is None or last.get("val") is None:
        raise TrainError("fine-tuning produced no validation result")
    return float(last["val"]["mAP"])
