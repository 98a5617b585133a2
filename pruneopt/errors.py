"""Exceptions a user can act on.

Every error that comes from bad input (an unknown architecture, an impossible regime, a malformed spec file,
missing data) is a :class:`PruneoptError`. The command-line interface prints its message as one line on
stderr and exits with status 2; library callers can catch it like any ``ValueError``.
"""

from __future__ import annotations


class PruneoptError(ValueError):
    """Bad input or an impossible request, with a message that says what to do."""


class SpecError(PruneoptError):
    """A width spec that does not fit its architecture, or a malformed spec file."""


class DataNotFoundError(PruneoptError):
    """A dataset that could not be found (the message names every place that was searched)."""
