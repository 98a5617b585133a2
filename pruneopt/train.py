"""Classification training pieces shared by the search: parent training, head training, short fine-tunes, adaptive
batch norm, and top-1 error.

Inputs come from :func:`pruneopt.loader.batches` with a :class:`~pruneopt.loader.Feed` (default: Fashion-MNIST's,
on the CPU). Every random choice (data order, augmentation) is drawn from generators seeded by ``(seed, epoch)`` or
by the caller's seed, never from global state, so that a run resumed from an epoch checkpoint, or a candidate
evaluated in another process, gives bit-identical results on the same machine and thread count.

On a CUDA device the model and its inputs are channels-last and each step runs under autocast
(:func:`pruneopt.devices.precision_for`: bfloat16, or float16 with a gradient scaler); on the CPU a step is plain
float32, as it has always been.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common.files import atomic_write
from .data.splits import FileSplit, Split
from .devices import Precision, is_cuda, precision_for
from .errors import PruneoptError
from .loader import FASHION_MNIST, Feed, augment, batches, in_order, to_input

__all__ = ["TrainConfig", "augment", "batches", "finetune", "recalibrate_bn", "to_input", "top1_error", "train"]

Data = Split | FileSplit


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum, cosine learning rate, label smoothing 0 -- the usual CIFAR-style recipe; a linear warm-up
    of ``warmup_steps``, capped at a tenth of the run (:func:`warmup_steps`)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 100

    def to_dict(self) -> dict:
        return asdict(self)


def _generator(*seed: int) -> torch.Generator:
    # fold a tuple of ints into one 63-bit seed, stably across runs
    s = np.random.SeedSequence(list(seed)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(s[0]) << 31 | int(s[1]) >> 1)


def _sgd(params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]  # no weight decay on batch norm and biases
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                           lr=lr, momentum=momentum, nesterov=True)


WARMUP_FRACTION = 0.1  # warm-up takes at most this fraction of a run's steps


def warmup_steps(configured: int, total: int) -> int:
    """The warm-up of a run of ``total`` steps: the configured one, capped at ``WARMUP_FRACTION`` of the run (a
    short run must leave its warm-up, and spend most of its steps at the learning rate it was given)."""
    return max(0, min(configured, int(WARMUP_FRACTION * total)))


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def place(model: nn.Module, feed: Feed) -> nn.Module:
    """``model`` on the feed's device (channels-last on a GPU); on the CPU it is left as it is."""
    if is_cuda(feed.device):
        model.to(torch.device(feed.device))
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's stubs
    return model


def autocast(device: str, precision: Precision | None = None) -> AbstractContextManager[object]:
    """The autocast of ``precision`` (default: the device's) on ``device``; nothing on float32."""
    precision = precision_for(device) if precision is None else precision
    if precision.dtype is None:
        return nullcontext()
    return torch.autocast("cuda" if is_cuda(device) else "cpu", dtype=precision.dtype)


class Stepper:
    """One optimisation step on a batch: forward under the precision's autocast, backward (scaled for float16),
    optimizer step."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, feed: Feed,
                 precision: Precision | None = None) -> None:
        self.model, self.opt, self.feed = model, opt, feed
        self.precision = precision_for(feed.device) if precision is None else precision
        self.device_type = "cuda" if is_cuda(feed.device) else "cpu"
        self.scaler = torch.amp.GradScaler(self.device_type) if self.precision.scaler else None

    def autocast(self) -> AbstractContextManager[object]:
        return autocast(self.feed.device, self.precision)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if is_cuda(self.feed.device):
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        return loss

    def state(self) -> dict[str, object]:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load(self, state: dict[str, object]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])  # type: ignore[arg-type]


def _trainable(model: nn.Module, only: str | None) -> list[nn.Parameter]:
    """Every parameter, or (``only``: a module name) that module's, the others frozen."""
    if only is None:
        return list(model.parameters())
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(only + "."))
        if p.requires_grad:
            params.append(p)
    return params


def train(
    model: nn.Module,
    data: Data,
    cfg: TrainConfig,
    seed: int,
    checkpoint: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    *,
    feed: Feed = FASHION_MNIST,
    precision: Precision | None = None,
    only: str | None = None,
) -> nn.Module:
    """Train for ``cfg.epochs`` epochs; with ``checkpoint``, save after every epoch and resume from it.

    ``progress(step, total_steps, loss)`` is called after every step. With ``only`` (a module name, e.g. ``fc``),
    only that module learns and the rest stays frozen, batch norm included (eval mode).
    """
    steps_per_epoch = len(data) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    place(model, feed)
    opt = _sgd(_trainable(model, only), cfg.lr, cfg.momentum, cfg.weight_decay)
    step_fn = Stepper(model, opt, feed, precision)
    warmup = warmup_steps(cfg.warmup_steps, total)
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=feed.device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step_fn.load(state)
        start_epoch = int(state["epoch"])
    model.train(only is None)
    for epoch in range(start_epoch, cfg.epochs):
        gen = _generator(seed, epoch)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_generator(seed, epoch, 1))))  # dropout
        for i, (x, y) in enumerate(batches(data, cfg.batch_size, gen, feed=feed)):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.lr, warmup)
            loss = step_fn(x, y)
            if progress is not None:
                progress(step + 1, total, loss.item())
        if ckpt is not None:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                     **step_fn.state()}
            atomic_write(ckpt, partial(torch.save, state))
    if only is not None:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def finetune(model: nn.Module, data: Data, steps: int, batch_size: int, lr: float, seed: int,
             weight_decay: float = 5e-4, *, feed: Feed = FASHION_MNIST, precision: Precision | None = None
             ) -> nn.Module:
    """A short fine-tune: ``steps`` SGD steps with a cosine learning rate (the same budget for every candidate)."""
    if steps <= 0:
        return model
    if len(data) < batch_size:  # no full batch: the loop below would never end
        raise PruneoptError(f"{len(data)} training images cannot fill one fine-tune batch of {batch_size}")
    place(model, feed)
    opt = _sgd(list(model.parameters()), lr, 0.9, weight_decay)
    step_fn = Stepper(model, opt, feed, precision)
    model.train()
    gen = _generator(seed, 0)
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_generator(seed, 1))))  # dropout
    step = 0
    while step < steps:
        for x, y in batches(data, batch_size, gen, feed=feed):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, steps, lr, 0)
            step_fn(x, y)
            step += 1
            if step >= steps:
                break
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Data, num_batches: int, batch_size: int, seed: int, *,
                   feed: Feed = FASHION_MNIST) -> nn.Module:
    """Adaptive batch norm: re-estimate running statistics on a few training batches (train mode, no gradients)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_batches <= 0:
        return model
    place(model, feed)
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = _generator(seed, 1)
    for x, _ in _first(batches(data, batch_size, gen, train=False, feed=feed), num_batches):
        model(_layout(x, feed))
    for m, mom in saved:
        m.momentum = mom
    return model


def _first(it: Iterator[tuple[torch.Tensor, torch.Tensor]], n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i, item in enumerate(it):
        if i >= n:
            return
        yield item


def _layout(x: torch.Tensor, feed: Feed) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if is_cuda(feed.device) else x


@torch.no_grad()
def top1_error(model: nn.Module, data: Data, batch_size: int = 500, *, feed: Feed = FASHION_MNIST) -> float:
    """Top-1 error (fraction in [0, 1]) of ``model`` on ``data``, in eval mode."""
    place(model, feed)
    model.eval()
    wrong = seen = 0
    with autocast(feed.device):
        for x, y in in_order(data, batch_size, feed):
            pred = model(_layout(x, feed)).argmax(1)
            wrong += int((pred != y).sum())
            seen += len(y)
    return wrong / max(1, seen)
