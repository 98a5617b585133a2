"""The error policy both command lines share.

A *known* error -- bad input or an impossible request, the package's error base class, a click usage error -- is
printed as one line, ``PROG: error: ...``, on stderr, with exit status 2. Ctrl-C prints ``interrupted`` (130).
Anything else is a bug: Python's traceback and exit status 1, so it can be reported.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click


def fail(prog: str, message: object, code: int = 2) -> NoReturn:
    """Print ``message`` as one line, ``PROG: error: ...``, on stderr and exit with ``code``."""
    click.echo(f"{prog}: error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def run_cli(group: click.Command, prog: str, argv: list[str] | None,
            known: tuple[type[BaseException], ...]) -> NoReturn:
    """Run ``group`` with ``argv`` under the policy above; ``known`` are the errors that are the user's to fix."""
    try:
        rv = group.main(args=argv, prog_name=prog, standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        fail(prog, "interrupted", 130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        fail(prog, exc.format_message())
    except click.ClickException as exc:
        fail(prog, exc.format_message(), exc.exit_code)
    except known as exc:
        fail(prog, exc)
    sys.exit(rv if isinstance(rv, int) else 0)
