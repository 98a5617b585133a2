"""``python -m pruneopt ...`` is the ``pruneopt`` command."""

from .cli import main

main()
