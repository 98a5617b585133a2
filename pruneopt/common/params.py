"""Parsers for the small structured values of both command lines, and click types built on them.

``HxW`` pairs (``256x128``, also ``256*128``), ``CxHxW`` shapes (``3x256x128``, or ``HxW`` with a default channel
count), ``N|MIN-MAX`` ranges and comma-separated positive integers. Each parser raises ``error`` (a
:class:`ParamError` unless the caller names its own class) with a message that shows an example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from ..errors import PruneoptError


class ParamError(PruneoptError):
    """A value that does not parse (``--size 12y4``) or is out of range."""


def parse_ints(text: str | Sequence[int], count: int, what: str, example: str, *, minimum: int = 1,
               error: type[Exception] = ParamError, seps: str = "x*,") -> tuple[int, ...]:
    """``count`` integers >= ``minimum`` separated by any of ``seps`` (``"256x128"`` -> ``(256, 128)``)."""
    if isinstance(text, str):
        s = text.strip().lower()
        for sep in seps[1:]:
            s = s.replace(sep, seps[0])
        parts = [p.strip() for p in s.split(seps[0])]
        if len(parts) != count or not all(p.isdigit() for p in parts):
            raise error(f"{what} must look like {example}, got {text!r}")
        values = tuple(int(p) for p in parts)
    else:
        values = tuple(int(v) for v in text)
        if len(values) != count:
            raise error(f"{what} must be {count} integers like {example}, got {tuple(text)!r}")
    if min(values) < minimum:
        raise error(f"{what} must be integers >= {minimum}, got {text!r}")
    return values


def parse_pair(text: str | Sequence[int], what: str = "size", example: str = "HxW, e.g. 256x128", *,
               minimum: int = 1, error: type[Exception] = ParamError) -> tuple[int, int]:
    """``"256x128"`` (or ``"256*128"``, or a pair) -> ``(256, 128)``."""
    a, b = parse_ints(text, 2, what, example, minimum=minimum, error=error)
    return a, b


def parse_shape(text: str | Sequence[int], what: str = "--input", *, default_channels: int | None = None,
                error: type[Exception] = ParamError) -> tuple[int, int, int]:
    """``"3x256x128"`` -> ``(3, 256, 128)``; with ``default_channels``, ``"256x128"`` gives that many channels."""
    if isinstance(text, str) and default_channels is not None and len(text.lower().replace(",", "x").split("x")) == 2:
        h, w = parse_ints(text, 2, what, "3x224x224", error=error)
        return default_channels, h, w
    c, h, w = parse_ints(text, 3, what, "three positive integers CxHxW, e.g. 3x224x224", error=error,
                         seps="x,")
    return c, h, w


def parse_range(text: str | int, what: str = "range", *, error: type[Exception] = ParamError) -> tuple[int, int]:
    """``"8"`` -> ``(8, 8)``; ``"6-10"`` -> ``(6, 10)`` (1 <= MIN <= MAX)."""
    s = str(text).strip()
    parts = s.split("-") if "-" in s else [s, s]
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise error(f"expected a count N or a range MIN-MAX, e.g. 8 or 6-10, got {text!r}")
    lo, hi = int(parts[0]), int(parts[1])
    if lo < 1 or hi < lo:
        raise error(f"{what} {text!r} must satisfy 1 <= MIN <= MAX")
    return lo, hi


def parse_int_list(text: str | Sequence[int], what: str = "batch sizes", example: str = "1,8,32", *,
                   error: type[Exception] = ParamError) -> tuple[int, ...]:
    """``"1,7,64"`` -> ``(1, 7, 64)``; every value >= 1."""
    try:
        values = tuple(int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip())
    except ValueError:
        raise error(f"{what} must be comma-separated integers like {example}, got {text!r}") from None
    if not values or min(values) < 1:
        raise error(f"{what} must be positive integers, got {text!r}")
    return values


if TYPE_CHECKING:  # click >= 8.5 makes ParamType generic; older versions cannot be subscripted at run time
    _ParamBase = click.ParamType[Any, Any]
else:
    _ParamBase = click.ParamType


class ParsedParam(_ParamBase):
    """A click type that runs one of the parsers above (or any ``str -> value`` function raising ``ValueError``);
    its message becomes click's usage error."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name, self._parse = name, parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default that is already parsed
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


HW = ParsedParam("HxW", lambda s: parse_pair(s, "size", "HxW, e.g. 256x128"))
PXK = ParsedParam("PxK", lambda s: parse_pair(s, "batch", "PxK (identities x images per identity), e.g. 16x4"))
RANGE = ParsedParam("N|MIN-MAX", parse_range)
SHAPE = ParsedParam("CxHxW", parse_shape)
