"""Classification training pieces shared by the search: parent training, short fine-tunes, adaptive batch norm,
and top-1 error.

Every random choice (data order, augmentation) is drawn from generators seeded by ``(seed, epoch)`` or by the
caller's seed, never from global state, so that a run resumed from an epoch checkpoint, or a candidate evaluated in
another process, gives bit-identical results on the same machine and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common.files import atomic_write
from .data.fashion_mnist import MEAN, STD, Split


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum, cosine learning rate, label smoothing 0 -- the usual CIFAR-style recipe."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 100

    def to_dict(self) -> dict:
        return asdict(self)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W]`` -> normalised float ``[N, 1, H, W]``."""
    return torch.from_numpy(images).float().div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero-padding (padding is the normalised black level) and random horizontal flip."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), value=-MEAN / STD)
    offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    out = torch.stack([xp[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offs.tolist())])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def batches(split: Split, batch_size: int, gen: torch.Generator, train: bool = True) -> Iterator[
        tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled (and augmented) mini-batches of one pass over ``split``; the last partial batch is dropped."""
    order = torch.randperm(len(split), generator=gen).numpy()
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = np.sort(order[start:start + batch_size])
        x = to_input(split.images[idx])
        if train:
            x = augment(x, gen)
        yield x, torch.from_numpy(split.labels[idx])


def _generator(*seed: int) -> torch.Generator:
    # fold a tuple of ints into one 63-bit seed, stably across runs
    s = np.random.SeedSequence(list(seed)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(s[0]) << 31 | int(s[1]) >> 1)


def _sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)  # no weight decay on batch norm and biases
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                           lr=lr, momentum=momentum, nesterov=True)


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def train(
    model: nn.Module,
    data: Split,
    cfg: TrainConfig,
    seed: int,
    checkpoint: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> nn.Module:
    """Train for ``cfg.epochs`` epochs; with ``checkpoint``, save after every epoch and resume from it.

    ``progress(step, total_steps, loss)`` is called after every step.
    """
    steps_per_epoch = len(data) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    opt = _sgd(model, cfg.lr, cfg.momentum, cfg.weight_decay)
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        gen = _generator(seed, epoch)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_generator(seed, epoch, 1))))  # dropout
        for i, (x, y) in enumerate(batches(data, cfg.batch_size, gen)):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.lr, cfg.warmup_steps)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress is not None:
                progress(step + 1, total, loss.item())
        if ckpt is not None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1}
            atomic_write(ckpt, partial(torch.save, state))
    return model


def finetune(model: nn.Module, data: Split, steps: int, batch_size: int, lr: float, seed: int,
             weight_decay: float = 5e-4) -> nn.Module:
    """A short fine-tune: ``steps`` SGD steps with a cosine learning rate (the same budget for every candidate)."""
    if steps <= 0:
        return model
    opt = _sgd(model, lr, 0.9, weight_decay)
    model.train()
    gen = _generator(seed, 0)
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_generator(seed, 1))))  # dropout
    step = 0
    while step < steps:
        for x, y in batches(data, batch_size, gen):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr, 0)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Split, num_batches: int, batch_size: int, seed: int) -> nn.Module:
    """Adaptive batch norm: re-estimate running statistics on a few training batches (train mode, no gradients)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_batches <= 0:
        return model
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = _generator(seed, 1)
    for i, (x, _) in enumerate(batches(data, batch_size, gen, train=False)):
        if i >= num_batches:
            break
        model(x)
    for m, mom in saved:
        m.momentum = mom
    return model


@torch.no_grad()
def top1_error(model: nn.Module, data: Split, batch_size: int = 500) -> float:
    """Top-1 error (fraction in [0, 1]) of ``model`` on ``data``, in eval mode."""
    model.eval()
    wrong = 0
    for start in range(0, len(data), batch_size):
        x = to_input(data.images[start:start + batch_size])
        pred = model(x).argmax(1)
        wrong += int((pred != torch.from_numpy(data.labels[start:start + batch_size])).sum())
    return wrong / len(data)
