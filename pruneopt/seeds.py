"""Seeds of a search, derived from its config's seed and a name, so that every random draw is reproducible."""

from __future__ import annotations

from typing import Any

import numpy as np


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from strings and numbers (independent of Python's hash randomisation).

    A search derives each seed from its config's seed and the stage's name, e.g. ``derive_seed(seed, "eval",
    space, regime, index)`` for a candidate, ``derive_seed(seed, "final")`` for the final fine-tunes.
    """
    ints = [int.from_bytes(str(p).encode(), "little") % (2**63) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0] >> 1)
