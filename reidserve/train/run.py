"""A training run from its configuration: into a run folder (resumable), or in memory for a fine-tune."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruneopt.common.threads import torch_threads

from ..data import load_dataset
from ..model import HeadConfig, ReidModel, backbone_from_module, backbone_from_subnet, build_reid_model, save_reid_model
from .config import ReidTrainConfig, TrainError
from .distributed import DistContext, setup_distributed
from .runfolder import (
    CHECKPOINT_FILE,
    LOG_FILE,
    MODEL_DIR,
    append_log,
    load_checkpoint,
    read_log,
    save_checkpoint,
    start_run_folder,
)
from .trainer import Trainer, make_progress, summary_line

__all__ = ["TrainResult", "initial_model", "run_training", "train_reid"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_reid` did: epochs run in this call, the last epoch reached, every log record, the model."""

    epochs_run: int
    last_epoch: int
    records: list[dict[str, Any]]
    model: ReidModel

    @property
    def last(self) -> dict[str, Any] | None:
        return self.records[-1] if self.records else None


def initial_model(cfg: ReidTrainConfig, backbone_module: nn.Module | None = None) -> ReidModel:
    """The model a run starts from (before any checkpoint): ``backbone_module``'s weights, the ``backbone``
    folder's, or a fresh ``arch``; initialised from ``cfg.seed`` without touching the global RNG."""
    head = HeadConfig(input_size=cfg.size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if backbone_module is not None:
            return ReidModel(backbone_from_module(backbone_module), head)
        if cfg.backbone is not None:
            return ReidModel(backbone_from_subnet(cfg.backbone), head)
        assert cfg.arch is not None
        return build_reid_model(cfg.arch, head, seed=cfg.seed)


def _resume(out: Path, cfg: ReidTrainConfig, trainer: Trainer, dist_info: DistContext, *, resume: bool,
            log: Callable[[str], None]) -> tuple[int, list[dict[str, Any]]]:
    """Load the run folder's checkpoint into ``trainer`` (if any) and (re)write the folder's config and log;
    returns the epoch to continue after and the log records kept.

    Rank 0 reads the checkpoint and hands it (or its error) to every rank, so all ranks start from the same
    weights and optimiser state even without a shared file system.
    """
    loaded: tuple[str, Any] | None = None
    if dist_info.main:
        try:
            loaded = ("ok", load_checkpoint(out, cfg))
        except TrainError as exc:
            loaded = ("error", str(exc))
    loaded = dist_info.broadcast_object(loaded)
    assert loaded is not None
    if loaded[0] == "error":
        raise TrainError(loaded[1])
    ckpt = loaded[1]
    if ckpt is None and resume:
        raise TrainError(f"--resume: {out / CHECKPOINT_FILE} does not exist, there is nothing to resume")
    start, records = 0, list[dict[str, Any]]()
    if ckpt is not None:
        start = trainer.load_state(ckpt)
        records = [r for r in read_log(out / LOG_FILE) if int(r.get("epoch", 0)) <= start]
        if dist_info.main:
            log(f"resuming {out} after epoch {start}")
    if dist_info.main:
        start_run_folder(out, cfg, records)
    return start, records


def run_training(
    cfg: ReidTrainConfig,
    out: Path | None,
    *,
    resume: bool,
    log: Callable[[str], None],
    backbone_module: nn.Module | None = None,
    trainer_cls: type[Trainer] = Trainer,
) -> TrainResult:
    """Train (into the run folder ``out``, or in memory when it is None); see :func:`train_reid`. ``trainer_cls``
    runs the epochs (the search's fine-tunes use one with a further pseudo-label fallback, see
    :mod:`reidserve.train.finetune`)."""
    cfg = cfg.validate()
    dataset = load_dataset(cfg.data)
    dist_info = setup_distributed(cfg)
    try:
        with torch_threads(cfg.threads):
            trainer = trainer_cls(cfg, dataset, initial_model(cfg, backbone_module), dist_info, log)
            start, records = 0, list[dict[str, Any]]()
            if out is not None:
                start, records = _resume(out, cfg, trainer, dist_info, resume=resume, log=log)
            if start >= cfg.epochs and dist_info.main:
                log(f"{out} already trained for {start} epochs (--epochs {cfg.epochs}); nothing to do")
            with make_progress(trainer.progress_enabled) as progress:
                for epoch in range(start + 1, cfg.epochs + 1):
                    rec = trainer.run_epoch(epoch, progress)
                    records.append(rec)
                    if dist_info.main:
                        log(summary_line(rec, cfg.epochs))
                        if out is not None:
                            save_reid_model(trainer.model, out / MODEL_DIR)
                            append_log(out, rec)
                            save_checkpoint(trainer.state(epoch), out)
                    dist_info.barrier()
            return TrainResult(max(0, cfg.epochs - start), max(start, cfg.epochs), records, trainer.model.cpu().eval())
    finally:
        dist_info.close()


def train_reid(
    cfg: ReidTrainConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    trainer_cls: type[Trainer] = Trainer,
) -> TrainResult:
    """Train into the run folder ``out`` (see :mod:`reidserve.train`), resuming from its checkpoint if present.

    A checkpoint with a different configuration (other than
    :data:`~reidserve.train.config.RUNTIME_FIELDS`) is refused with a :class:`TrainError`; ``resume=True``
    additionally requires a checkpoint to exist. ``log`` receives one line per epoch (rank 0 only); default:
    this module's logger, at INFO. ``trainer_cls``: see :func:`run_training`.
    """
    return run_training(cfg, Path(out), resume=resume, log=log or logger.info,
                        trainer_cls=trainer_cls)
