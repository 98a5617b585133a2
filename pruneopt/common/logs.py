"""The log handler both command lines install (:func:`setup_logging`), and the level they read from the environment.

Library modules only log (``logging.getLogger(__name__)``); a command line decides where the records go. Both
``pruneopt`` and ``reidserve`` call :func:`setup_logging` once, which puts one handler on the root logger, writing
to standard error:

* on a terminal, a :class:`rich.logging.RichHandler` (time, level, message, source in columns, colours);
* elsewhere (a pipe, a log file, a test), plain one-line records, ``TIME LEVEL LOGGER: message``
  (:data:`LOG_FORMAT`), which a wrapping, column-padded layout would spoil for ``grep``.

The level comes from an option where a command has one (``reidserve serve --log-level``), else from
``PRUNEOPT_LOG`` / ``REIDSERVE_LOG`` (:func:`level_from_env`), else WARNING. Calling :func:`setup_logging` again
replaces the handler it installed before; ``force=True`` also removes every other handler of the root logger.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["LOG_FORMAT", "LEVELS", "StderrHandler", "level_from_env", "parse_level", "setup_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error", "critical")

_MARK = "_pruneopt_cli_handler"  # set on the handler setup_logging installed, so that a second call replaces it


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only, not at run time
    """Plain records on whatever ``sys.stderr`` is when a record is written (a test's capture, a CliRunner's)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler.__init__ would pin today's sys.stderr
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    @property  # a read-only stream: always the current sys.stderr
    def stream(self) -> TextIO:
        return sys.stderr


def parse_level(value: str | int, *, error: type[Exception] = ValueError, source: str = "log level") -> int:
    """The ``logging`` level named by ``value`` (a name of :data:`LEVELS`, any case, or a number); ``error`` with
    a one-line message naming ``source`` otherwise."""
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    if text.lower() in LEVELS:
        return int(getattr(logging, text.upper()))
    raise error(f"{source} {value!r} is not a log level: use one of {', '.join(LEVELS)}")


def level_from_env(variable: str, default: str = "warning", *, error: type[Exception] = ValueError) -> int:
    """The level named by the environment variable ``variable`` (``default`` where it is unset or empty)."""
    value = os.environ.get(variable, "").strip() or default
    return parse_level(value, error=error, source=f"${variable}:")


def _rich_handler() -> logging.Handler:
    from rich.console import Console  # lazy: rich is only needed on a terminal
    from rich.logging import RichHandler

    return RichHandler(console=Console(stderr=True), show_path=True, rich_tracebacks=False, markup=False)


def setup_logging(level: str | int = "warning", *, rich: bool | None = None, force: bool = False,
                  error: type[Exception] = ValueError) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to standard error through one handler (see the
    module docstring) and return it. ``rich``: the rich layout (``None``: when standard error is a terminal);
    ``force``: remove the root logger's other handlers too; ``error``: raised for an unknown level name."""
    number = parse_level(level, error=error)
    root = logging.getLogger()
    for old in list(root.handlers):
        if force or getattr(old, _MARK, False):
            root.removeHandler(old)
            old.close()
    if rich is None:
        isatty = getattr(sys.stderr, "isatty", None)
        rich = bool(isatty is not None and isatty())
    handler = _rich_handler() if rich else StderrHandler()
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(number)
    return handler
