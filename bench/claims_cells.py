"""Resumable cells for ``bench/claims.py``: one training run per (condition, arm, seed), each saved when done.

A cell's result lives in ``OUT/cells/NAME/result.json`` (written atomically); a re-run skips every cell that
has one, so an interrupted protocol continues where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from pruneopt.common.files import atomic_write_json

__all__ = ["RESULT_FILE", "Cell", "cell_result", "int_list", "run_cells"]

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Cell:
    """One run of a protocol: its folder name, its labels in the tables, and what the work function needs."""

    name: str
    condition: str
    arm: str
    seed: int
    payload: dict[str, Any] = field(default_factory=dict, compare=False)


def cell_result(out: Path, cell: Cell) -> dict[str, Any] | None:
    """The saved result of ``cell`` (None when it has not finished)."""
    path = out / "cells" / cell.name / RESULT_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else None


def run_cells(out: Path, cells: Sequence[Cell], work: Callable[[Path, Cell], dict[str, Any]], jobs: int,
              describe: Callable[[dict[str, Any]], str] = lambda r: "") -> dict[str, dict[str, Any]]:
    """Run ``work(out, cell)`` for every cell without a saved result (in ``jobs`` spawned processes when
    ``jobs > 1``; ``work`` must then be importable), save each result as it arrives, and return every
    result by cell name. ``describe`` turns a result into the progress line's summary."""
    results = {c.name: r for c in cells if (r := cell_result(out, c)) is not None}
    todo = [c for c in cells if c.name not in results]
    print(f"{len(cells)} cells: {len(results)} done before, {len(todo)} to run with {jobs} process(es)", flush=True)
    t0 = time.perf_counter()
    finished = 0

    def finish(cell: Cell, result: dict[str, Any]) -> None:
        nonlocal finished
        atomic_write_json(out / "cells" / cell.name / RESULT_FILE, result)
        results[cell.name] = result
        finished += 1
        print(f"[{finished}/{len(todo)}] {cell.name}: {describe(result)} ({time.perf_counter() - t0:.0f} s so far)",
              flush=True)

    if jobs <= 1 or len(todo) <= 1:
        for cell in todo:
            finish(cell, work(out, cell))
    else:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(work, out, cell): cell for cell in todo}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result())
    return results


def int_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)`` (seeds: zero allowed), the ``--seeds`` type of every protocol."""
    return tuple(int(t) for t in text.split(",") if t.strip())
