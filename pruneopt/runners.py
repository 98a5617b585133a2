"""Where candidates are evaluated: in this process, in a local process pool, or on a Ray cluster.

Every runner evaluates the same :class:`~pruneopt.store.Task` objects with an evaluator built once per worker from
``(task name, settings)``; the driver (this process) is the only writer of the results store. A worker sets its
torch thread count explicitly (``threads``), so ``N`` workers on ``N * threads`` cores do not oversubscribe them, and
runs with equal thread counts give identical results whichever runner is used.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch

from .errors import PruneoptError
from .evaluate import EvalResult, Evaluator, make_evaluator
from .models import ModelSpec
from .store import Store, Task


@dataclass(frozen=True)
class Outcome:
    task: Task
    result: EvalResult | None  # None when the evaluation raised
    message: str | None
    worker: str


def _evaluate(evaluator: Evaluator, task: Task, worker: str) -> Outcome:
    try:
        return Outcome(task, evaluator.evaluate(ModelSpec.from_json(task.spec_json), task.seed), None, worker)
    except Exception as exc:  # recorded in the store and retried a bounded number of times
        tb = traceback.format_exc(limit=4)
        return Outcome(task, None, f"{type(exc).__name__}: {exc}\n{tb}", worker)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class Runner:
    """Submit tasks and collect outcomes; subclasses implement :meth:`_submit` and :meth:`_wait`."""

    workers: int = 1

    @property
    def window(self) -> int:
        """How many tasks to keep in flight."""
        return self.workers

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def map(self, tasks: Iterable[Task], on_start: Callable[[Task, str], None],
            on_done: Callable[[Outcome], None]) -> None:
        """Evaluate ``tasks`` keeping at most ``window`` in flight; call back as each starts and finishes."""
        queue = list(tasks)
        inflight: dict[Any, Task] = {}
        while queue or inflight:
            while queue and len(inflight) < self.window:
                task = queue.pop(0)
                on_start(task, self.name)
                inflight[self._submit(task)] = task
            for handle, outcome in self._wait(list(inflight)):
                inflight.pop(handle)
                on_done(outcome)

    @property
    def name(self) -> str:
        return type(self).__name__

    def _submit(self, task: Task) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        raise NotImplementedError


class InProcessRunner(Runner):
    """Evaluate in the driver process, one candidate at a time (``--workers 1``)."""

    def __init__(self, task: str, settings: dict[str, Any], threads: int | None = None) -> None:
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(threads or default_threads(1))
        self.evaluator = make_evaluator(task, settings)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._done: dict[int, Outcome] = {}

    def _submit(self, task: Task) -> int:
        self._done[task.candidate_id] = _evaluate(self.evaluator, task, self.worker)
        return task.candidate_id

    def _wait(self, handles: list[int]) -> list[tuple[int, Outcome]]:
        return [(h, self._done.pop(h)) for h in handles]

    def close(self) -> None:
        torch.set_num_threads(self._threads_before)


_WORKER: tuple[Evaluator, str] | None = None


def _init_worker(task: str, settings: dict[str, Any], threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = (make_evaluator(task, settings), f"{socket.gethostname()}:{os.getpid()}")


def _run_in_worker(task: Task) -> Outcome:
    assert _WORKER is not None, "worker not initialised"
    return _evaluate(_WORKER[0], task, _WORKER[1])


class LocalRunner(Runner):
    """A pool of ``workers`` local processes (spawned, so each starts clean), ``threads`` torch threads each."""

    def __init__(self, task: str, settings: dict[str, Any], workers: int, threads: int | None = None) -> None:
        if workers < 1:
            raise PruneoptError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                                        initargs=(task, settings, threads or default_threads(workers)))

    @property
    def window(self) -> int:
        return 2 * self.workers  # a queued task per worker keeps the pool busy while results are recorded

    def _submit(self, task: Task) -> Future:
        return self.pool.submit(_run_in_worker, task)

    def _wait(self, handles: list[Future]) -> list[tuple[Future, Outcome]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(f, f.result()) for f in done]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayRunner(Runner):
    """``workers`` Ray actors (``threads`` CPUs each), on a local Ray or the cluster at ``address``.

    Every node needs pruneopt installed and the data reachable at the same path (the settings carry paths).
    """

    def __init__(self, task: str, settings: dict[str, Any], workers: int, threads: int | None = None,
                 address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise PruneoptError("ray is not installed: pip install 'pruneopt[ray]'") from None
        if workers < 1:
            raise PruneoptError(f"--workers must be >= 1, got {workers}")
        self.ray = ray
        self.workers = workers
        threads = threads or default_threads(workers)
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers * threads
            ray.init(**kwargs)

        @ray.remote(num_cpus=threads)
        class EvalActor:
            def __init__(self, task: str, settings: dict[str, Any], threads: int) -> None:
                torch.set_num_threads(threads)
                self.evaluator = make_evaluator(task, settings)
                self.worker = f"ray:{socket.gethostname()}:{os.getpid()}"

            def evaluate(self, t: Task) -> Outcome:
                return _evaluate(self.evaluator, t, self.worker)

        self.actors = [EvalActor.remote(task, settings, threads) for _ in range(workers)]
        self._free = list(self.actors)
        self._busy: dict[Any, Any] = {}

    def _submit(self, task: Task) -> Any:
        actor = self._free.pop(0)  # the window is one task per actor
        ref = actor.evaluate.remote(task)
        self._busy[ref] = actor
        return ref

    def _wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        ready, _ = self.ray.wait(handles, num_returns=1)
        out = []
        for ref in ready:
            self._free.append(self._busy.pop(ref))
            out.append((ref, self.ray.get(ref)))
        return out

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self._owns_ray:
            self.ray.shutdown()


def make_runner(backend: str, task: str, settings: dict[str, Any], workers: int, threads: int | None = None,
                address: str | None = None) -> Runner:
    if backend == "local":
        if workers == 1:
            return InProcessRunner(task, settings, threads)
        return LocalRunner(task, settings, workers, threads)
    if backend == "ray":
        return RayRunner(task, settings, workers, threads, address)
    raise PruneoptError(f"unknown backend {backend!r}; choose local or ray")


def evaluate_pending(store: Store, runner: Runner, tasks: list[Task],
                     progress: Callable[[Outcome], None] | None = None) -> None:
    """Evaluate ``tasks`` with ``runner``, recording each start, result and failure in ``store``."""

    def on_done(o: Outcome) -> None:
        if o.result is None:
            store.fail(o.task.candidate_id, o.message or "failed", o.worker)
        else:
            r = o.result
            store.finish(o.task.candidate_id, r.error, r.wall_s, o.worker, r.latency_b1_ms, r.latency_bn_ms)
        if progress is not None:
            progress(o)

    runner.map(tasks, lambda t, w: store.mark_running(t.candidate_id, w), on_done)
