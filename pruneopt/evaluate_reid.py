"""The re-ID candidate evaluator (task ``"reid"``): thin, a short unsupervised fine-tune, then 1 - val mAP.

For each spec, :class:`ReidEvaluator`

1. thins the parent backbone to the spec, keeping its largest-L1 filters (:func:`pruneopt.thinning.thin`);
2. fine-tunes it with :func:`reidserve.train.finetune_and_score`: a fresh GeM + BNNeck head, ``steps`` TMP
   steps of P x K images (``batch``) on the training images of ``data`` (no labels: pseudo-identities from
   k-reciprocal Jaccard + DBSCAN clustering, ``rounds`` cluster-and-train rounds), the same budget for every
   candidate;
3. scores mAP on the query/gallery split of ``data``; the candidate's error is ``1 - mAP``.

All randomness comes from the candidate's seed, so its error does not depend on the worker, the order or an
interruption (equal thread counts on the same machine). This module imports :mod:`reidserve` (and through it
FAISS); :func:`pruneopt.evaluate.make_evaluator` imports it only when the ``"reid"`` task is asked for.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .checkpoint import load_subnet
from .errors import PruneoptError
from .evaluate import EvalResult, onnx_latency_ms, register_evaluator
from .models import ModelSpec
from .thinning import thin


@dataclass(frozen=True)
class ReidSettings:
    """How every candidate of a re-ID search is fine-tuned and scored (JSON-able, sent to every worker)."""

    parent_dir: str  # the parent backbone (features-only, RGB; a subnetwork folder)
    data: str  # re-ID dataset folder: fine-tune on its training images, score on its query/gallery
    steps: int = 100
    rounds: int = 1
    size: tuple[int, int] = (256, 128)  # input H x W
    batch: tuple[int, int] = (16, 4)  # P identities x K images
    lr: float = 3.5e-4
    k1: int = 30
    k2: int = 6
    cluster_eps: float = 0.6
    min_samples: int = 4
    outliers: str = "drop"
    loss: str = "tmp"
    device: str = "cpu"
    latency: bool = False  # also measure ONNX Runtime CPU latency of the thinned backbone
    latency_batch: int = 32

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["batch"] = list(self.size), list(self.batch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReidSettings:
        return cls(**{**d, "size": tuple(d.get("size", (256, 128))), "batch": tuple(d.get("batch", (16, 4)))})

    def cluster_config(self) -> Any:
        """The :class:`reidserve.cluster.ClusterConfig` of these settings."""
        from reidserve.cluster import ClusterConfig, ClusterError

        try:
            return ClusterConfig(k1=self.k1, k2=self.k2, eps=self.cluster_eps, min_samples=self.min_samples,
                                 outliers=self.outliers)  # type: ignore[arg-type]
        except ClusterError as exc:
            raise PruneoptError(f"clustering: {exc}") from None


def finetune_kwargs(settings: ReidSettings, threads: int | None) -> dict[str, Any]:
    """Keyword arguments of :func:`reidserve.train.finetune_and_score` / ``finetune_config`` for ``settings``
    (everything except the network, the data, the steps and the seed)."""
    s = settings
    return {"rounds": s.rounds, "size": tuple(s.size), "batch": tuple(s.batch), "loss": s.loss,
            "cluster": s.cluster_config(), "lr": s.lr, "threads": threads, "device": s.device, "workers": 0}


class ReidEvaluator:
    """Thin -> short TMP fine-tune -> ``1 - mAP`` on the query/gallery of ``settings.data``."""

    def __init__(self, settings: ReidSettings | dict[str, Any]) -> None:
        self.settings = settings if isinstance(settings, ReidSettings) else ReidSettings.from_dict(settings)
        self.settings.cluster_config()  # bad clustering parameters fail here, not once per candidate
        self.parent = load_subnet(self.settings.parent_dir)

    def evaluate(self, spec: ModelSpec, seed: int) -> EvalResult:
        from reidserve.train import finetune_and_score

        s = self.settings
        t0 = time.perf_counter()
        model = thin(self.parent, spec)
        # FAISS follows the torch thread count the runner set for this worker (no oversubscription)
        m_ap = finetune_and_score(model, s.data, s.steps, seed, **finetune_kwargs(s, torch.get_num_threads()))
        error = 1.0 - m_ap
        wall = time.perf_counter() - t0
        lat1 = latn = None
        if s.latency:
            lat1, latn = onnx_latency_ms(model.eval(), (1, 3, *s.size), s.latency_batch)
        return EvalResult(error, wall, lat1, latn)


register_evaluator("reid", ReidEvaluator)
