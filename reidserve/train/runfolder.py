"""The run folder: ``config.json``, ``log.jsonl`` (one line per epoch), ``checkpoint.pt`` and ``model/``.

Every write goes through :func:`pruneopt.common.files.atomic_write` (temporary file, fsync, rename, fsync of the
folder) except the log's per-epoch append, which is flushed and fsynced; a line cut by a crash ends the log when
it is read back (:func:`read_log`), and the resumed run rewrites the log from its checkpoint's epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import torch

from pruneopt.common.files import atomic_write, atomic_write_json

from .config import ReidTrainConfig, TrainError

__all__ = [
    "CHECKPOINT_FILE",
    "CKPT_FORMAT",
    "CONFIG_FILE",
    "LOG_FILE",
    "MODEL_DIR",
    "append_log",
    "load_checkpoint",
    "read_log",
    "save_checkpoint",
    "start_run_folder",
]

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
MODEL_DIR = "model"
CKPT_FORMAT = "reidserve.train/1"


def save_checkpoint(state: dict[str, Any], out: Path) -> None:
    """``torch.save`` the training state to ``out/checkpoint.pt`` atomically."""

    def write(fh: IO[bytes]) -> None:
        torch.save(state, fh)

    atomic_write(out / CHECKPOINT_FILE, write)


def start_run_folder(out: Path, cfg: ReidTrainConfig, records: list[dict[str, Any]]) -> None:
    """Create ``out``, write its ``config.json`` and a log holding ``records`` (the epochs kept on resume)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / CONFIG_FILE, cfg.to_dict())
    atomic_write(out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in records))


def append_log(out: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to ``out/log.jsonl`` (flushed and fsynced)."""
    with open(out / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl``, up to the first line that does not parse (cut by a crash)."""
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


def load_checkpoint(out: Path, cfg: ReidTrainConfig) -> dict[str, Any] | None:
    """The checkpoint in ``out`` (None if there is none); :class:`TrainError` when it cannot be read or belongs to
    a run with another configuration (fields outside :data:`~reidserve.train.config.RUNTIME_FIELDS`)."""
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
