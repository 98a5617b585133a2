"""The distributed side of training (``torchrun``; gloo on CPU, NCCL on CUDA), a no-op in a single process."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .config import ReidTrainConfig

__all__ = ["DistContext", "setup_distributed"]


@dataclass
class DistContext:
    """This process's rank in the run, its device, and the collectives training needs (no-ops when alone)."""

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
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)[:total]

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank."""
        if self.world == 1:
            return
        for buf in module.buffers():
            dist.broadcast(buf, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`setup_distributed` created it."""
        if self.owned:
            dist.destroy_process_group()
            self.owned = False


def setup_distributed(cfg: ReidTrainConfig) -> DistContext:
    """The context of this process: from ``torchrun``'s environment (initialising the process group if nobody
    has), else a single process on ``cfg.device``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=torch.device(cfg.device))
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
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owned=owned)
