"""Evaluation pools: where candidates are evaluated -- in this process, in a local process pool, or on Ray actors.

(Not to be confused with :mod:`export.runners`, which run an exported model in one inference runtime.)

Every pool evaluates the same :class:`~pruneopt.store.CandidateJob` objects with an evaluator built once per
worker by the search task named ``task`` from ``settings`` (:func:`pruneopt.tasks.registry.get_task`); the driver
(this process) is the only writer of the results store. A worker sets its torch thread count explicitly
(``threads``), so ``N`` workers on ``N * threads`` cores do not oversubscribe them, and runs with equal thread
counts give identical results whichever pool is used.

With ``devices`` (one entry per worker, e.g. ``cuda:0``, ``cuda:1``: :func:`pruneopt.devices.worker_devices`) each
worker is pinned to its own device: its settings' ``device`` is replaced by its entry before its evaluator is built,
and its name (stored with every candidate it scores) ends with it. Ray actors each request one GPU instead (Ray
hides the others from them, so each sees its GPU as ``cuda:0``).
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch

from .common.threads import torch_threads
from .errors import PruneoptError
from .evaluate import EvalResult, Evaluator
from .models import ModelSpec
from .store import CandidateJob, Store
from .tasks.registry import get_task


@dataclass(frozen=True)
class Outcome:
    job: CandidateJob
    result: EvalResult | None  # None when the evaluation raised
    message: str | None
    worker: str


def _evaluate(evaluator: Evaluator, job: CandidateJob, worker: str) -> Outcome:
    try:
        return Outcome(job, evaluator.evaluate(ModelSpec.from_json(job.spec_json), job.seed), None, worker)
    except Exception as exc:  # recorded in the store and retried a bounded number of times
        tb = traceback.format_exc(limit=4)
        return Outcome(job, None, f"{type(exc).__name__}: {exc}\n{tb}", worker)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def make_evaluator(task: str, settings: dict[str, Any], device: str | None = None) -> Evaluator:
    """The evaluator of the search task ``task``, built from ``settings`` (in a worker); ``device`` replaces the
    settings' ``device`` where they have one."""
    return get_task(task).make_evaluator(on_device(settings, device))


def on_device(settings: dict[str, Any], device: str | None) -> dict[str, Any]:
    """``settings`` for a worker pinned to ``device`` (unchanged without one, or when they name no device)."""
    return settings if device is None or "device" not in settings else {**settings, "device": device}


def worker_name(prefix: str, device: str | None) -> str:
    return f"{prefix}{socket.gethostname()}:{os.getpid()}" + (f":{device}" if device else "")


class EvaluationPool:
    """Submit candidate jobs and collect outcomes; subclasses implement :meth:`_submit` and :meth:`_wait`."""

    workers: int = 1

    @property
    def window(self) -> int:
        """How many jobs to keep in flight."""
        return self.workers

    def __enter__(self) -> EvaluationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def map(self, jobs: Iterable[CandidateJob], on_start: Callable[[CandidateJob, str], None],
            on_done: Callable[[Outcome], None]) -> None:
        """Evaluate ``jobs`` keeping at most ``window`` in flight; call back as each starts and finishes."""
        queue = list(jobs)
        inflight: dict[Any, CandidateJob] = {}
        while queue or inflight:
            while queue and len(inflight) < self.window:
                job = queue.pop(0)
                on_start(job, self.name)
                inflight[self._submit(job)] = job
            for handle, outcome in self._wait(list(inflight)):
                inflight.pop(handle)
                on_done(outcome)

    @property
    def name(self) -> str:
        return type(self).__name__

    def _submit(self, job: CandidateJob) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list[Any]) -> list[tuple[Any, Outcome]]:
        raise NotImplementedError


class InProcessPool(EvaluationPool):
    """Evaluate in the driver process, one candidate at a time (``--workers 1``); ``threads`` torch threads while
    the pool is open."""

    def __init__(self, task: str, settings: dict[str, Any], threads: int | None = None,
                 device: str | None = None) -> None:
        self._threads = ExitStack()
        self._threads.enter_context(torch_threads(threads or default_threads(1)))
        try:
            self.evaluator = make_evaluator(task, settings, device)
        except BaseException:
            self._threads.close()
            raise
        self.worker = worker_name("", device)
        self._done: dict[int, Outcome] = {}

    def _submit(self, job: CandidateJob) -> int:
        self._done[job.candidate_id] = _evaluate(self.evaluator, job, self.worker)
        return job.candidate_id

    def _wait(self, handles: list[int]) -> list[tuple[int, Outcome]]:
        return [(h, self._done.pop(h)) for h in handles]

    def close(self) -> None:
        self._threads.close()


_WORKER: tuple[Evaluator, str] | None = None


def _init_worker(task: str, settings: dict[str, Any], threads: int, devices: list[str] | None,
                 counter: Any) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    device = None
    if devices:
        with counter.get_lock():  # the n-th worker to start takes the n-th device
            index = counter.value
            counter.value += 1
        device = devices[index % len(devices)]
    _WORKER = (make_evaluator(task, settings, device), worker_name("", device))


def _run_in_worker(job: CandidateJob) -> Outcome:
    assert _WORKER is not None, "worker not initialised"
    return _evaluate(_WORKER[0], job, _WORKER[1])


class LocalProcessPool(EvaluationPool):
    """A pool of ``workers`` local processes (spawned, so each starts clean), ``threads`` torch threads each, each
    pinned to its entry of ``devices`` when given."""

    def __init__(self, task: str, settings: dict[str, Any], workers: int, threads: int | None = None,
                 devices: list[str] | None = None) -> None:
        if workers < 1:
            raise PruneoptError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        mp = get_context("spawn")
        self.pool = ProcessPoolExecutor(workers, mp_context=mp, initializer=_init_worker,
                                        initargs=(task, settings, threads or default_threads(workers), devices,
                                                  mp.Value("i", 0)))

    @property
    def window(self) -> int:
        return 2 * self.workers  # a queued job per worker keeps the pool busy while results are recorded

    def _submit(self, job: CandidateJob) -> Future:
        return self.pool.submit(_run_in_worker, job)

    def _wait(self, handles: list[Future]) -> list[tuple[Future, Outcome]]:
        done, _ = wait(handles, return_when=FIRST_COMPLETED)
        return [(f, f.result()) for f in done]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayActorPool(EvaluationPool):
    """``workers`` Ray actors (``threads`` CPUs each), on a local Ray or the cluster at ``address``.

    Every node needs pruneopt installed and the data reachable at the same path (the settings carry paths).
    """

    def __init__(self, task: str, settings: dict[str, Any], workers: int, threads: int | None = None,
                 address: str | None = None, gpus: bool = False) -> None:
        try:
            import ray  # lazy: Ray is optional (--backend ray)
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

        @ray.remote(**actor_options(threads, gpus))
        class EvalActor:
            def __init__(self, task: str, settings: dict[str, Any], threads: int) -> None:
                torch.set_num_threads(threads)
                device = "cuda:0" if gpus else None  # Ray shows each actor its own GPU only
                self.evaluator = make_evaluator(task, settings, device)
                self.worker = worker_name("ray:", device)

            def evaluate(self, t: CandidateJob) -> Outcome:
                return _evaluate(self.evaluator, t, self.worker)

        self.actors = [EvalActor.remote(task, settings, threads)  # type: ignore[attr-defined]  # a Ray actor class
                       for _ in range(workers)]
        self._free = list(self.actors)
        self._busy: dict[Any, Any] = {}

    def _submit(self, job: CandidateJob) -> Any:
        actor = self._free.pop(0)  # the window is one job per actor
        ref = actor.evaluate.remote(job)
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


def actor_options(threads: int, gpus: bool) -> dict[str, Any]:
    """The resources a Ray evaluation actor requests: ``threads`` CPUs, and one GPU when ``gpus``."""
    return {"num_cpus": threads, **({"num_gpus": 1} if gpus else {})}


def make_evaluation_pool(backend: str, task: str, settings: dict[str, Any], workers: int,
                         threads: int | None = None, address: str | None = None,
                         devices: list[str] | None = None) -> EvaluationPool:
    """The pool of ``backend`` (``local``: in this process for one worker, else processes; ``ray``: actors), its
    workers pinned to ``devices`` (Ray: one GPU per actor when any device is given)."""
    if devices is not None and len(devices) < workers:
        raise PruneoptError(f"{workers} workers need {workers} devices, got {len(devices)}")
    if backend == "local":
        if workers == 1:
            return InProcessPool(task, settings, threads, devices[0] if devices else None)
        return LocalProcessPool(task, settings, workers, threads, devices)
    if backend == "ray":
        return RayActorPool(task, settings, workers, threads, address, gpus=bool(devices))
    raise PruneoptError(f"unknown backend {backend!r}; choose local or ray")


def evaluate_pending(store: Store, pool: EvaluationPool, jobs: list[CandidateJob],
                     progress: Callable[[Outcome], None] | None = None) -> None:
    """Evaluate ``jobs`` with ``pool``, recording each start, result and failure in ``store``."""

    def on_done(o: Outcome) -> None:
        if o.result is None:
            store.fail(o.job.candidate_id, o.message or "failed", o.worker)
        else:
            r = o.result
            store.finish(o.job.candidate_id, r.error, r.wall_s, o.worker, r.latency_b1_ms, r.latency_bn_ms)
        if progress is not None:
            progress(o)

    pool.map(jobs, lambda j, w: store.mark_running(j.candidate_id, w), on_done)
