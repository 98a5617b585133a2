"""The ``reidserve`` command line: the group :data:`cli` and its entry point :func:`main`.

The commands are plain click commands in modules of their own (:mod:`.data_cmds`: ``synth``;
:mod:`.train_cmds`: ``train``, ``eval``; :mod:`.serve_cmds`: ``serve``; :mod:`.query_cmds`: ``query ...``,
``demo-gallery``; :mod:`.bulk_cmds`: ``query import``, ``query eval``), which do not know the group; this module
builds it. ``serve``, ``query`` and ``demo-gallery`` need the ``serve`` extra; without it they say so when run.

Errors follow the policy both command lines share (:func:`pruneopt.common.cli.run_cli`): a usage error or a
:class:`~pruneopt.errors.PruneoptError` -- every :class:`~reidserve.errors.ReidserveError` is one -- prints one
line, ``reidserve: error: ...``, on stderr and exits with status 2; anything else is a bug and keeps its
traceback (exit status 1). The group applies the same policy when it is run standalone (``cli()``,
``CliRunner().invoke(cli, ...)``).

When standard output is not a terminal (a pipe, a log file), it is made line-buffered, so that what a command prints
there and its log lines on standard error stay in the order they were written. The group installs the one log
handler of :func:`pruneopt.common.logs.setup_logging` (level: ``$REIDSERVE_LOG``; ``serve`` sets its own).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from pruneopt import __version__
from pruneopt.common.cli import run_cli
from pruneopt.common.logs import level_from_env, setup_logging
from pruneopt.errors import PruneoptError

from ..errors import ReidserveError
from .data_cmds import synth
from .train_cmds import eval_cmd, train

__all__ = ["KNOWN_ERRORS", "ReidserveGroup", "cli", "line_buffered_stdout", "main"]

PROG = "reidserve"
KNOWN_ERRORS: tuple[type[BaseException], ...] = (PruneoptError,)


class ReidserveGroup(click.Group):
    """A click group that, run standalone, applies :func:`run_cli`'s error policy (see the module docstring)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        run_cli(self, prog_name or PROG, list(args) if args is not None else None, KNOWN_ERRORS)


def line_buffered_stdout() -> None:
    """Make ``sys.stdout`` line-buffered when it is not a terminal (see the module docstring)."""
    out = sys.stdout
    reconfigure = getattr(out, "reconfigure", None)
    isatty = getattr(out, "isatty", None)
    if reconfigure is not None and isatty is not None and not isatty():
        reconfigure(line_buffering=True)


@click.group(PROG, cls=ReidserveGroup, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Person re-identification toolkit: data, training, evaluation and serving.

    Diagnostics go to stderr at the level of $REIDSERVE_LOG (debug, info, warning: the default, error);
    reidserve serve takes --log-level instead.
    """
    line_buffered_stdout()
    setup_logging(level_from_env("REIDSERVE_LOG", error=ReidserveError))
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


def _needs_serve_extra(name: str, reason: ImportError) -> click.Command:
    """A stand-in for a command whose dependencies (the ``serve`` extra) are not installed."""

    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help="(needs the serve extra: pip install 'pruneopt[serve]')")
    def unavailable() -> None:
        raise ReidserveError(f"reidserve {name} needs the serve extra: pip install 'pruneopt[serve]' ({reason})")

    return unavailable


def _add_commands(group: click.Group) -> None:
    for command in (synth, train, eval_cmd):
        group.add_command(command)
    # the serve extra's commands; stand-ins that say what to install where it is missing
    try:
        from .serve_cmds import serve  # lazy: the serve extra (FastAPI, FAISS) may be missing

        group.add_command(serve)
    except ImportError as exc:  # pragma: no cover - the serve extra is not installed
        group.add_command(_needs_serve_extra("serve", exc))
    try:
        from .bulk_cmds import query_eval, query_import  # lazy: the serve extra (FastAPI, FAISS) may be missing
        from .query_cmds import demo_gallery, query

        query.add_command(query_import)
        query.add_command(query_eval)
        group.add_command(query)
        group.add_command(demo_gallery)
    except ImportError as exc:  # pragma: no cover - the serve extra is not installed
        group.add_command(_needs_serve_extra("query", exc))
        group.add_command(_needs_serve_extra("demo-gallery", exc))


_add_commands(cli)


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``reidserve`` console script: run :data:`cli` with ``argv`` (default: ``sys.argv[1:]``)."""
    run_cli(cli, PROG, argv, KNOWN_ERRORS)
