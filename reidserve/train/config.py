"""What a training run depends on: :class:`ReidTrainConfig`, its validation, and the ``PxK`` batch parser."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pruneopt.common.params import parse_pair

from ..cluster import OUTLIER_MODES, ClusterConfig
from ..errors import ReidserveError

__all__ = [
    "BATCH_LOSSES",
    "LABEL_SOURCES",
    "LOSSES",
    "RUNTIME_FIELDS",
    "TMP_MODES",
    "LossName",
    "ReidTrainConfig",
    "TrainError",
    "parse_batch",
]

# In-batch contrastive losses over the 2B views of a batch (same sampler, batch, temperature and views; only
# the positive set differs): "tmp" takes every same-label view as a positive (Take More Positives);
# "single-neg" takes only the other view of the same image, the same-label others being negatives (instance
# discrimination); "single-mask" takes only the other view and leaves the same-label others out of the
# softmax. "centroid" is another loss family: InfoNCE against the cluster-centroid memory (cluster-contrast).
BATCH_LOSSES = ("tmp", "single-neg", "single-mask")
LOSSES = (*BATCH_LOSSES, "centroid")
LossName = Literal["tmp", "single-neg", "single-mask", "centroid"]
TMP_MODES = ("mean_log", "log_sum")
# where the training labels come from: DBSCAN on the features every epoch, or the true identities
# (with ``label_noise`` of them reassigned at random: the mechanism test)
LABEL_SOURCES = ("dbscan", "true")

# Fields added after runs were first saved, left out of a run's identity at their defaults so that those runs
# still resume.
_LATER_FIELDS = {"labels": "dbscan", "label_noise": 0.0, "color_jitter": 0.0}

# Fields that may differ when a run is resumed (they change speed or reporting, not the training itself).
RUNTIME_FIELDS = frozenset(
    {"epochs", "threads", "workers", "device", "eval_every", "eval_batch", "cache", "progress", "dist_backend"}
)


class TrainError(ReidserveError):
    """A training run that cannot start or continue; the message says what to change."""


def parse_batch(text: str) -> tuple[int, int]:
    """``'16x8'`` or ``'16*8'`` -> ``(P, K)``: P pseudo-identities with K images each (P >= 2, K >= 1)."""
    p, k = parse_pair(str(text), "batch", "PxK (identities x images per identity), e.g. 16x8", minimum=0,
                      error=TrainError)
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
    loss: LossName = "tmp"
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
    labels: Literal["dbscan", "true"] = "dbscan"
    label_noise: float = 0.0  # with labels="true": this fraction of the images gets a random other identity
    color_jitter: float = 0.0  # strength of the camera-like colour jitter of the training views (0: off)
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
            (self.labels in LABEL_SOURCES, f"labels must be one of {', '.join(LABEL_SOURCES)}, got {self.labels!r}"),
            (0.0 <= self.label_noise <= 1.0, f"label_noise must be a fraction in [0, 1], got {self.label_noise}"),
            (self.labels == "true" or self.label_noise == 0.0,
             "label_noise is for the true labels (labels='true'); DBSCAN pseudo-labels bring their own noise"),
            (0.0 <= self.color_jitter < 1.0, f"color_jitter must be in [0, 1), got {self.color_jitter}"),
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
        d = {k: v for k, v in self.to_dict().items()
             if k not in RUNTIME_FIELDS and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
        d["data"] = str(Path(self.data).expanduser().resolve())
        if self.backbone is not None:
            d["backbone"] = str(Path(self.backbone).expanduser().resolve())
        return d
