"""The parent of a classification search: trained in the run, or a given subnetwork folder or state-dict file whose
classifier is replaced (and trained, the rest frozen) when its class count is not the data's.

:func:`prepare_parent` returns the network and the record of the ``parent`` stage: where it came from, the head
replacement, the data and input it was scored with, its validation and test errors, and what a guess would score
(``chance_error``) with the advice the engine gives when the parent is no better than that, and how many
validation images there are (``val_images``) and score each candidate (``candidate_val_images``: ``--val-size``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_subnet
from ..data.splits import AnySplit
from ..loader import Feed, skipped_images
from ..models import build
from ..pretrained import head_name, load_state_dict_parent, replace_head, spec_of
from ..seeds import derive_seed
from ..train import TrainConfig, top1_error, train
from .base import ParentResult, RunContext
from .classification_inputs import ParentSource


def progress_bar(ctx: RunContext, label: str, total: int) -> Callable[[int, int, float], None]:
    """A training progress callback drawing a bar named ``label`` (nothing without progress bars)."""
    bar = ctx.progress.add_task(label, total=total) if ctx.progress else None

    def tick(step: int, _total: int, loss: float) -> None:
        if bar is not None:
            ctx.progress.update(bar, completed=step, description=f"{label} (loss {loss:.3f})")

    return tick


def _advice(source: ParentSource, head: dict[str, Any] | None, parent_epochs: int) -> str:
    if source.kind == "trained":
        return (f"train it longer (--parent-epochs N; it had {parent_epochs}) or pass a trained one (--parent DIR or "
                "a state-dict FILE)")
    if head is not None:
        return (f"train its new {head['to_classes']}-class head longer (--head-epochs N; it had {head['epochs']}), "
                "pass a parent trained on this data (--parent), or train one in the run (no --parent; "
                "--parent-epochs N)")
    return "pass a parent trained on this data (--parent), or train one in the run (no --parent; --parent-epochs N)"


def _given(source: ParentSource, arch: str) -> nn.Module:
    if source.kind == "state dict":
        return load_state_dict_parent(str(source.path), arch)
    return load_subnet(str(source.path))


def prepare_parent(ctx: RunContext, folder: Path, source: ParentSource, data: tuple[AnySplit, AnySplit, AnySplit],
                   feed: Feed, num_classes: int, settings: Any, describe_data: str) -> ParentResult:
    """Load or train the parent (checkpointing in ``folder``), replace its head when needed, score it."""
    c, s = ctx.cfg.common, settings
    train_split, val, test = data
    folder.mkdir(parents=True, exist_ok=True)
    head: dict[str, Any] | None = None
    if source.kind == "trained":
        torch.manual_seed(derive_seed(c.seed, "init"))  # weight init draws from the global generator
        model: nn.Module = build(source.spec)
        tc = TrainConfig(epochs=s.parent_epochs, batch_size=s.batch_size, lr=s.parent_lr)
        total = s.parent_epochs * (len(train_split) // s.batch_size)
        train(model, train_split, tc, derive_seed(c.seed, "parent"), checkpoint=folder / "checkpoint.pt",
              progress=progress_bar(ctx, "parent: training", total), feed=feed)
        origin = "trained"
    else:
        model = _given(source, c.arch)
        origin = str(Path(str(source.path)).resolve())
        given = spec_of(model)
        if given.num_classes != num_classes:
            head = {"from_classes": given.num_classes, "to_classes": num_classes, "epochs": s.head_epochs,
                    "module": head_name(given)}
            torch.manual_seed(derive_seed(c.seed, "head"))
            model = replace_head(model, num_classes)
            tc = TrainConfig(epochs=s.head_epochs, batch_size=s.batch_size, lr=s.head_lr, warmup_steps=0)
            total = s.head_epochs * (len(train_split) // s.batch_size)
            train(model, train_split, tc, derive_seed(c.seed, "head"), checkpoint=folder / "head.pt",
                  progress=progress_bar(ctx, "parent: training the new head", total), feed=feed,
                  only=head["module"])
    val_err, test_err = top1_error(model, val, feed=feed), top1_error(model, test, feed=feed)
    record = {"source": origin, "val_error": val_err, "test_error": test_err, "spec": spec_of(model).to_dict(),
              "kind": source.kind, "head": head, "data": describe_data, "input": feed.to_dict(),
              "chance_error": 1.0 - 1.0 / num_classes, "near_chance_advice": _advice(source, head, s.parent_epochs),
              "skipped_images": len(skipped_images()), "val_images": len(val),
              "candidate_val_images": len(val) if s.val_size is None else min(s.val_size, len(val))}
    message = f"parent {spec_of(model).arch}: val error {val_err:.4f}, test error {test_err:.4f}"
    if head is not None:
        message += f" (its {head['from_classes']}-class head replaced, trained {head['epochs']} epoch(s))"
    return ParentResult(model.cpu(), record, message)
