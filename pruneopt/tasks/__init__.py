"""Search tasks: what a pruning-space search optimises, as plug-ins of the search engine.

* :mod:`.sections` -- config sections (frozen dataclasses whose fields carry their default, help text and presets
  once) and the common section every search has;
* :mod:`.base` -- the :class:`~.base.SearchTask` protocol a task implements;
* :mod:`.registry` -- tasks by name: the built-in ``classification`` and every entry point of the group
  ``pruneopt.search_tasks`` (re-ID registers ``reid = "reidserve.search_task:TASK"`` there);
* :mod:`.classification` -- the built-in task: Fashion-MNIST, top-1 error.

A new task is a new module with a ``TASK`` object and an entry point; the engine (:mod:`pruneopt.search`), the report
and the command line have no branches per task.
"""
