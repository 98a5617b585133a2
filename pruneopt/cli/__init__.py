"""The ``pruneopt`` command line: one group, its commands defined in :mod:`.structure` (count, space, sample, thin),
:mod:`.search_cmds` (search, analyze) and :mod:`.deploy` (export, bench), which do not import the group.

Errors follow :func:`pruneopt.common.cli.run_cli`: bad input (a :class:`~pruneopt.errors.PruneoptError` or a usage
error) prints one line, ``pruneopt: error: ...``, on stderr and exits with status 2; anything else is a bug and keeps
its traceback (status 1).

The group installs the one log handler of :func:`pruneopt.common.logs.setup_logging` (level: ``$PRUNEOPT_LOG``).
"""

from __future__ import annotations

from typing import NoReturn

import click

from .. import __version__
from ..common.cli import run_cli
from ..common.logs import level_from_env, setup_logging
from ..errors import PruneoptError
from .deploy import bench_cmd, export_cmd
from .search_cmds import analyze_cmd, search_cmd
from .structure import count_cmd, sample_cmd, space_cmd, thin_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="pruneopt")
def cli() -> None:
    """Pruning-space search for deployable CNNs: count, describe and sample pruning spaces of ResNets and
    MobileNetV2, thin trained networks to smaller ones.

    FLOPs are multiply-accumulates (MACs) of convolutions and linear layers, as in pruning papers.
    Diagnostics go to stderr at the level of $PRUNEOPT_LOG (debug, info, warning: the default, error).
    """
    setup_logging(level_from_env("PRUNEOPT_LOG", error=PruneoptError))


for _command in (count_cmd, space_cmd, sample_cmd, thin_cmd, search_cmd, analyze_cmd, export_cmd, bench_cmd):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the ``pruneopt`` command line with ``argv`` (default: ``sys.argv[1:]``); exits."""
    run_cli(cli, "pruneopt", argv, (PruneoptError,))
