"""``python -m reidserve.service ARGS``: ``reidserve serve ARGS`` (works before ``reidserve.cli`` registers it)."""

from __future__ import annotations

import sys

from reidserve.cli import main
from reidserve.cli_serve import serve  # noqa: F401  (registers the commands)

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]], prog_name="reidserve"))
