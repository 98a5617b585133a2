"""``python -m reidserve.cli ARGS`` (also under ``torchrun ... -m reidserve.cli train``): ``reidserve ARGS``."""

from . import main

if __name__ == "__main__":  # pragma: no cover - run as a program
    main()
