"""The table of architectures by name, holding what a width spec needs to know of one: its name and channel slots.

This is the leaf of :mod:`pruneopt.models`: a :class:`~pruneopt.models.spec.ModelSpec` looks its architecture up
here, the architectures (:mod:`.graph`, :mod:`.resnet`, :mod:`.mobilenetv2`) build networks from specs, and
:mod:`.registry` fills the table with them. Keeping the table below both sides is what lets a spec know its slot
names without importing the architectures that are built from specs.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import PruneoptError


class SlotLayout(Protocol):
    """What a spec needs of an architecture: its canonical (lower-case) name and its channel slots, in order."""

    name: str

    @property
    def slots(self) -> tuple[str, ...]: ...


_TABLE: dict[str, SlotLayout] = {}


def add(entry: SlotLayout) -> None:
    """Enter an architecture under its ``name`` (which must be new)."""
    if entry.name in _TABLE:
        raise ValueError(f"architecture {entry.name!r} is already registered")
    _TABLE[entry.name] = entry


def lookup(name: str) -> SlotLayout:
    """The architecture called ``name`` (case-insensitive); :class:`PruneoptError` naming the choices if unknown."""
    try:
        return _TABLE[name.lower()]
    except KeyError:
        raise PruneoptError(f"unknown architecture {name!r}; choose one of: {', '.join(names())}") from None


def names() -> list[str]:
    """Registered architecture names, in registration order."""
    return list(_TABLE)
