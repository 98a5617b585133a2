"""The ``pruneopt`` command line.

Bad input never ends in a traceback: a :class:`~pruneopt.errors.PruneoptError` or a usage error prints one line,
``pruneopt: error: ...``, on stderr and exits with status 2.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import PruneoptError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="pruneopt")
def cli() -> None:
    """Pruning-space search for deployable CNNs: count, describe and sample pruning spaces of ResNets and
    MobileNetV2, thin trained networks to smaller ones.

    FLOPs are multiply-accumulates (MACs) of convolutions and linear layers, as in pruning papers.
    """


def fail(message: str, code: int = 2) -> None:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    one_line = " ".join(str(message).split())
    click.echo(f"pruneopt: error: {one_line}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        rv = cli.main(args=argv, prog_name="pruneopt", standalone_mode=False)
    except click.exceptions.Abort:
        fail("interrupted", 130)
    except click.UsageError as exc:
        fail(exc.format_message())
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except PruneoptError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(rv if isinstance(rv, int) else 0)


from . import deploy, search_cmds, structure  # noqa: E402,F401  (registers the commands)
