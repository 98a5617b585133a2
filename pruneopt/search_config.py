"""The config of a search: the common section and the section of its task, stored as one flat dict.

``SearchConfig(task="reid", data=..., size=(64, 32))`` takes flat values and splits them: the fields of
:class:`~pruneopt.tasks.sections.CommonConfig` and those of the task's own section. A value that belongs to another
task's section is refused in one line. :meth:`SearchConfig.to_dict` gives the flat dict a run folder stores
(``config.json`` and the results store, which refuses to resume a run with another config); it holds the common
settings and the running task's, never another task's, so the configs of runs made before tasks had sections match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import PruneoptError
from .tasks.registry import get_task, owners
from .tasks.sections import CommonConfig, field_names, option_name, preset_values, section_dict


@dataclass(frozen=True, init=False)
class SearchConfig:
    """Everything that determines a search's results (run-time choices such as workers are not part of it)."""

    common: CommonConfig
    section: Any  # the task's section (a frozen dataclass)

    def __init__(self, task: str = "classification", **values: Any) -> None:
        t = get_task(task)
        common, own = field_names(CommonConfig), field_names(t.section)
        stray = [k for k in values if k not in common and k not in own]
        if stray:
            raise PruneoptError(misplaced_message(stray, task))
        object.__setattr__(self, "common", CommonConfig(task=task, **{k: v for k, v in values.items() if k in common}))
        object.__setattr__(self, "section", t.section(**{k: v for k, v in values.items() if k in own}))
        t.validate(self)

    @property
    def task(self) -> str:
        return self.common.task

    @classmethod
    def preset(cls, name: str, task: str = "classification", **values: Any) -> SearchConfig:
        """The config of the named preset of every section (e.g. ``quick``), with ``values`` on top."""
        base = {**preset_values(CommonConfig, name), **preset_values(get_task(task).section, name)}
        return cls(task, **{**base, **values})

    @classmethod
    def quick(cls, **values: Any) -> SearchConfig:
        """About 10 minutes on 2 cores: small populations, short fine-tunes (the ``quick`` preset)."""
        return cls.preset("quick", **values)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON-able config: the common settings, then the task's; ``latency`` last, where the configs
        stored before tasks had sections have it for classification."""
        d = section_dict(self.common)
        latency = d.pop("latency")
        return {**d, **section_dict(self.section), "latency": latency}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        task = str(values.pop("task", CommonConfig.task))  # runs made before there were tasks are classification's
        return cls(task, **values)


def misplaced_message(names: list[str], task: str) -> str:
    """One line for settings that ``task`` does not have, naming the tasks that do."""
    parts = []
    for name in names:
        found = [t for t in owners(name) if t != task]
        parts.append(f"{option_name(name)} applies to --task {' or '.join(found)} only" if found
                     else f"{option_name(name)} is not a setting of --task {task}")
    return "; ".join(parts)
