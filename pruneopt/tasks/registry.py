"""Search tasks by name: the built-in ``classification`` and the entry points of the group ``pruneopt.search_tasks``.

A package adds a task by naming an object that implements :class:`~.base.SearchTask` in its metadata::

    [project.entry-points."pruneopt.search_tasks"]
    reid = "reidserve.search_task:TASK"

A task's module is imported the first time the task is asked for (so ``import pruneopt`` imports no task's
dependencies), in the driver and in every worker process or Ray actor.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from ..errors import PruneoptError
from .base import SearchTask
from .sections import field_names

GROUP = "pruneopt.search_tasks"
BUILT_IN = {"classification": "pruneopt.tasks.classification:TASK"}

_loaded: dict[str, SearchTask] = {}


class UnknownTaskError(PruneoptError):
    """A task name that no installed package registers."""


def _entry_points() -> dict[str, EntryPoint]:
    """Every registered task's entry point by name (a built-in name cannot be taken over)."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    found.update({name: EntryPoint(name, value, GROUP) for name, value in BUILT_IN.items()})
    return found


def available_tasks() -> list[str]:
    """The names of the registered tasks, built-in ones first."""
    return sorted(_entry_points(), key=lambda n: (n not in BUILT_IN, n))


def get_task(name: str) -> SearchTask:
    """The task registered as ``name``; a one-line error listing the available ones otherwise."""
    task = _loaded.get(name)
    if task is not None:
        return task
    eps = _entry_points()
    if name not in eps:
        raise UnknownTaskError(f"unknown task {name!r} (available: {', '.join(available_tasks())})")
    try:
        obj = eps[name].load()
    except ImportError as exc:
        raise PruneoptError(f"task {name!r} ({eps[name].value}) cannot be loaded: {exc}") from None
    if not isinstance(obj, SearchTask) or obj.name != name:
        raise PruneoptError(f"the entry point {name} = {eps[name].value} of the group {GROUP} is not a search task "
                            f"named {name!r}")
    _loaded[name] = obj
    return obj


def owners(setting: str) -> list[str]:
    """The tasks whose config section has a field called ``setting`` (loads every task)."""
    return [n for n in available_tasks() if setting in field_names(get_task(n).section)]
