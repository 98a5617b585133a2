"""``pruneopt search``'s config options, generated from the config sections: the common one and every registered
task's (:mod:`pruneopt.tasks.sections`).

Each :func:`~pruneopt.tasks.sections.setting` with ``cli=True`` becomes one option: its name from the field
(``refined_samples`` -> ``--refined-samples``), its type from the annotation (or the setting's parser or choices),
its help from the setting followed by the default and the presets' values as the field holds them
(``[64; quick 16]``). An option given no value is left out, so the config takes the default or the preset. A field
that several tasks have (``finetune_steps``) is one option whose help names each task's meaning and default.

The options are built the first time the command is used (its help or a run), not when the CLI is imported, so
``import pruneopt.cli`` loads no task's module.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import click

from ..common.params import ParsedParam
from ..tasks.registry import available_tasks, get_task
from ..tasks.sections import CommonConfig, Setting, settings_of


@dataclass(frozen=True)
class ConfigOption:
    """One generated option: the setting of each section that has it (``None``: the common section)."""

    name: str
    owners: tuple[tuple[str | None, Setting], ...]

    @property
    def setting(self) -> Setting:
        return self.owners[0][1]

    def help(self) -> str:
        """The setting's help and its default (and preset values), once per section that has it (a flag's default,
        off, goes without saying)."""
        def text(s: Setting) -> str:
            return s.help if s.flag else f"{s.help} {s.default_text()}"

        if self.owners[0][0] is None:
            return f"{text(self.setting)}."
        if len(self.owners) == 1:
            task, s = self.owners[0]
            return f"{str(task).capitalize()}: {text(s)}."
        return "; ".join(f"{task}: {text(s)}" for task, s in self.owners) + "."

    def click_option(self) -> click.Option:
        s = self.setting
        if s.flag:
            return click.Option([s.option, self.name], is_flag=True, default=None, help=self.help())
        return click.Option([s.option, self.name], type=click_type(s), default=None, metavar=s.metavar,
                            help=self.help())


def click_type(s: Setting) -> Any:
    """The click type of a setting: its parser, its choices, or the plain type of its annotation."""
    if s.parse is not None:
        parse, option = s.parse, s.option
        return ParsedParam(s.metavar or "VALUE", lambda text: parse(text, option))
    if s.choices:
        return click.Choice(list(s.choices))
    plain = [t for t in typing.get_args(s.type) if t is not type(None)] or [s.type]
    if len(plain) != 1 or plain[0] not in (int, float, str):
        raise TypeError(f"setting {s.name}: give it a parser (setting(..., parse=...)) or cli=False")
    return plain[0]


def config_options() -> list[ConfigOption]:
    """The options of the common section, then those of every registered task (in registry order)."""
    options: dict[str, ConfigOption] = {}
    sections: list[tuple[str | None, type]] = [(None, CommonConfig)]
    sections += [(name, get_task(name).section) for name in available_tasks()]
    for owner, section in sections:
        for s in settings_of(section):
            if not s.cli:
                continue
            known = options.get(s.name)
            if known is None:
                options[s.name] = ConfigOption(s.name, ((owner, s),))
            elif known.owners[0][0] is None or known.setting.type != s.type or known.setting.flag != s.flag:
                raise TypeError(f"setting {s.name} of task {owner} clashes with another section's")
            else:
                options[s.name] = ConfigOption(s.name, (*known.owners, (owner, s)))
    return list(options.values())


def task_option() -> click.Option:
    """``--task``: one of the registered tasks, each described."""
    names = available_tasks()
    described = " ".join(f"{name}: {get_task(name).description}" for name in names)
    return click.Option(["--task"], type=click.Choice(names), default=CommonConfig.task, show_default=True,
                        help=f"The search task. {described}")


class TaskOptionsCommand(click.Command):
    """A click command whose ``--task`` and config options are generated on first use (see the module docstring);
    they come before the command's own options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own_params = list(self.params)
        self._generated = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._generated:
            self.params = [task_option(), *(o.click_option() for o in config_options()), *self.own_params]
            self._generated = True
        return super().get_params(ctx)
