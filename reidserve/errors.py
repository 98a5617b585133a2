"""The base of every reidserve error a user can act on.

:class:`ReidserveError` derives from :class:`pruneopt.errors.PruneoptError` (and so from ``ValueError``): both
command lines print any of them as one line and exit with status 2 (:mod:`pruneopt.common.cli`); anything else is
a bug and keeps its traceback. Each module defines its own subclasses (``DatasetError``, ``TrainError``, ...).
"""

from __future__ import annotations

from pruneopt.errors import PruneoptError


class ReidserveError(PruneoptError):
    """Bad input or an impossible request in reidserve, with a message that says what to do."""
