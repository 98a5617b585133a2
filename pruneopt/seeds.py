"""Seeds of a search, derived from its config's seed and a name, so that every random draw is reproducible."""

from __future__ import annotations

import hashlib
import numbers
from typing import Any


def _encode(part: Any) -> bytes:
    """One part, typed and whole: ``1`` and ``"1"`` differ, ``1`` and ``1.0`` are the same number."""
    if isinstance(part, bool):
        tag, text = "bool", str(part)
    elif isinstance(part, numbers.Integral):
        tag, text = "int", str(int(part))
    elif isinstance(part, numbers.Real):
        value = float(part)
        tag, text = ("int", str(int(value))) if value.is_integer() else ("float", repr(value))
    elif isinstance(part, str):
        tag, text = "str", part
    else:
        tag, text = type(part).__qualname__, repr(part)
    data = f"{tag}:{text}".encode()
    return len(data).to_bytes(8, "little") + data  # length-prefixed: ("ab", "c") and ("a", "bc") differ


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from strings and numbers (independent of Python's hash randomisation).

    Every part counts whole (a BLAKE2b hash of their typed, length-prefixed encoding): ``derive_seed(123456789)``
    and ``derive_seed(123456781)`` differ, as do ``derive_seed(1)`` and ``derive_seed("1")``.

    A search derives each seed from its config's seed and the stage's name, e.g. ``derive_seed(seed, "eval")`` for
    the fine-tune every candidate shares (``derive_seed(seed, "eval", space, regime, index)`` with per-candidate
    seeding), ``derive_seed(seed, "final")`` for the final fine-tunes.
    """
    digest = hashlib.blake2b(b"".join(_encode(p) for p in parts), digest_size=8, person=b"pruneopt-seed").digest()
    return int.from_bytes(digest, "little") >> 33
