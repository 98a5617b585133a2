"""The :class:`SearchTask` protocol: what the search engine asks of a task.

The engine (:mod:`pruneopt.search`) owns the stages that are the same for every task -- sampling populations in a
FLOPs band, evaluating them in worker pools, R* and the refined space, the winner and the two baselines, the report.
A task supplies what depends on the data and the metric:

* its **config section** (``section``, a frozen dataclass of :func:`~.sections.setting` fields) with its presets,
  the checks of a config (``validate``, before anything runs) and of its data (``check_inputs``), and how its
  command-line values are completed (``from_command_line``, e.g. paths resolved);
* the **input** at which FLOPs are counted (``input_shape``) and how images become it (``preprocess``, saved
  beside the parent and the winner);
* the **parent** (``prepare_parent``: load or train it, score it);
* the **candidate evaluator**: the JSON-able settings sent to every worker process or Ray actor
  (``worker_settings``) and the factory that builds an evaluator from them there (``make_evaluator``);
* the **final fine-tunes** of the winner and the baselines (``finetune_finals``);
* its **wording** in progress lines, the CLI summary and the report (``metric``, ``describe_error``, ``report_*``).

Two things a task may add, which the engine looks for (they are not part of the protocol, so older tasks need not
have them):

* ``planned_parent(cfg, data_dir) -> ModelSpec``: the spec its parent will have, known before any training, so the
  engine checks the pruning space and every FLOPs band before the run starts;
* ``chance_error`` and ``near_chance_advice`` in the parent's record: what a guess would score and what to do about
  a parent near it; the engine stops a search on such a parent unless it is forced.

A task is registered by name (:mod:`.registry`); one object per task serves every run, so it keeps no run state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..baselines import FINAL_LABELS
from ..evaluate import Evaluator
from ..models import ModelSpec
from ..preprocess import Preprocess
from ..store import Store
from .sections import CommonConfig


class ConfigView(Protocol):
    """A search config as a task sees it: the common section and the task's own (:class:`~pruneopt.search_config.
    SearchConfig` is one)."""

    @property
    def common(self) -> CommonConfig: ...

    @property
    def section(self) -> Any: ...


class RunContext(Protocol):
    """What a running search shares with its task (:class:`pruneopt.search.Context` is one)."""

    @property
    def cfg(self) -> ConfigView: ...

    @property
    def root(self) -> Path: ...  # the run folder

    @property
    def store(self) -> Store: ...

    @property
    def progress(self) -> Any: ...  # a rich Progress, or None

    @property
    def device(self) -> str: ...  # where the task trains, when it uses ``--device``

    @property
    def data_dir(self) -> str | None: ...  # where the task's data lives, when it uses ``--data-dir``

    @property
    def loader_workers(self) -> int: ...  # processes decoding images, when the task uses ``--loader-workers``

    def say(self, msg: str) -> None: ...


def fmt(x: float | None, spec: str = ".4f") -> str:
    """A figure in a report: ``n/a`` when missing or not finite."""
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def final_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The finals of a summary in report order, each named by its label (``same_as`` another: said so; outside the
    final FLOPs band: said so, so no one compares it as if it were at equal FLOPs)."""
    rows = []
    for key, label in FINAL_LABELS.items():
        f = summary["finals"].get(key)
        if f:
            same = " (= the winner)" if f.get("same_as") else ""
            outside = " (outside the final band: no such model lands there)" if f.get("in_final_band") is False else ""
            rows.append((f"{label}{same}{outside}", f))
    return rows


@dataclass
class ParentResult:
    """The parent a task prepared: the network (saved to ``parent/`` by the engine), the record of the ``parent``
    stage (``source``, ``val_error``, ``test_error``, ``spec`` and the task's own figures) and a line for the log."""

    model: nn.Module
    record: dict[str, Any]
    message: str


@dataclass
class FinalResult:
    """One fine-tuned final model: ``model`` (the winner's goes to ``winner/``) and its figures (``val_error``,
    ``test_error`` and the task's own), recorded after its FLOPs, parameters and R."""

    name: str
    model: nn.Module
    figures: dict[str, Any]


@runtime_checkable
class SearchTask(Protocol):
    """A search task; see the module docstring."""

    name: str  # the --task name
    description: str  # one or two sentences for --task's help: the data, the score, what the task needs
    metric: str  # what the finals report, e.g. "top-1 accuracy"
    score_name: str  # the figure a final's 1 - test error is, e.g. "accuracy"
    error_label: str  # a candidate's error on a plot axis, e.g. "validation error"
    title_suffix: str  # after the report's title "Pruning-space search: ARCH on DATA", e.g. " (person re-ID)"
    section: type[Any]  # the config section
    runtime_options: frozenset[str]  # the run-time options it uses, of "data_dir" and "device"

    def validate(self, cfg: ConfigView) -> None:
        """Raise a one-line :class:`~pruneopt.errors.PruneoptError` when ``cfg`` cannot run (nothing is read)."""
        ...

    def from_command_line(self, values: dict[str, Any]) -> dict[str, Any]:
        """The config values of a command line, completed (e.g. a dataset path resolved, ``arch`` taken from
        ``parent``); ``values`` holds only the options given."""
        ...

    def input_shape(self, cfg: ConfigView) -> tuple[int, int, int]:
        """(C, H, W) of the inputs; FLOPs are counted at (H, W)."""
        ...

    def preprocess(self, cfg: ConfigView) -> Preprocess:
        """How the inputs of the networks the search saves (parent, winner) are made from images, and what those
        networks output; written beside their spec (``preprocess.json``) for export and serving."""
        ...

    def check_inputs(self, cfg: ConfigView, data_dir: str | None) -> None:
        """Fail early, in one line, when the data cannot be read (before the run folder is created)."""
        ...

    def prepare_parent(self, ctx: RunContext, folder: Path) -> ParentResult:
        """Load (or train, checkpointing in ``folder``) and score the parent."""
        ...

    def worker_settings(self, ctx: RunContext, parent_dir: Path) -> dict[str, Any]:
        """The JSON-able settings every worker builds its evaluator from."""
        ...

    def make_evaluator(self, settings: dict[str, Any]) -> Evaluator:
        """The candidate evaluator of a worker (called once per worker process or Ray actor)."""
        ...

    def finetune_finals(self, ctx: RunContext, parent_dir: Path, parent: nn.Module,
                        models: dict[str, ModelSpec]) -> Iterator[FinalResult]:
        """The same final fine-tune for each of ``models`` (name -> spec to thin ``parent`` to), one at a time, so
        that the engine records each before the next starts (resumable)."""
        ...

    def describe_error(self, error: float) -> str:
        """An error in progress lines, e.g. ``error 0.1234`` or ``mAP 0.8766``."""
        ...

    def summary_extra(self, config: dict[str, Any]) -> dict[str, Any]:
        """Entries the task adds to ``summary.json`` (from the stored config)."""
        ...

    def report_intro(self, summary: dict[str, Any]) -> list[str]:
        """Markdown lines after the report's title: the parent, how candidates were scored, caveats."""
        ...

    def report_finals(self, summary: dict[str, Any]) -> list[str]:
        """Markdown lines of the winner-vs-baselines section (called when the finals exist)."""
        ...

    def notes(self, summary: dict[str, Any]) -> list[str]:
        """Caveats the command line prints after a search's figures."""
        ...
