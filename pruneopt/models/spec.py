"""Width specs: the complete, explicit description of one (sub)network.

A :class:`ModelSpec` names an architecture and gives a width for every *channel slot* of it. A slot is a set
of channels that must have one size: the output of a block-internal convolution, or all the channels tied
together by residual additions in one stage. ``build(spec)`` yields exactly those shapes, so a pruned
subnetwork is nothing more than a spec with smaller numbers.

Specs are frozen (hashable) and round-trip through JSON::

    {"format": "pruneopt.spec/1", "arch": "resnet20", "in_chans": 1, "num_classes": 10,
     "last_stride": 2, "features_only": false, "widths": {"layer1": 16, "layer1.0.conv1": 11, ...}}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..common.files import atomic_write
from ..errors import PruneoptError, SpecError
from .catalog import lookup

SPEC_FORMAT = "pruneopt.spec/1"


@dataclass(frozen=True)
class ModelSpec:
    """An architecture name plus one width per channel slot, in the architecture's slot order."""

    arch: str
    widths: tuple[int, ...]
    in_chans: int = 3
    num_classes: int = 1000
    last_stride: int = 2
    features_only: bool = False

    # -- access ---------------------------------------------------------------------------------------
    @property
    def slots(self) -> tuple[str, ...]:
        return lookup(self.arch).slots

    def width_map(self) -> dict[str, int]:
        """``{slot name: width}`` in slot order."""
        return dict(zip(self.slots, self.widths, strict=True))

    def with_widths(self, widths: Mapping[str, int] | tuple[int, ...] | list[int]) -> ModelSpec:
        """A copy with new widths (a full mapping by slot name, or a sequence in slot order)."""
        if isinstance(widths, Mapping):
            slots = self.slots
            unknown = sorted(set(widths) - set(slots))
            if unknown:
                raise SpecError(f"{self.arch}: unknown channel slot(s) {unknown}")
            missing = [s for s in slots if s not in widths]
            if missing:
                raise SpecError(f"{self.arch}: widths missing for slot(s) {missing}")
            seq = tuple(int(widths[s]) for s in slots)
        else:
            seq = tuple(int(w) for w in widths)
        return replace(self, widths=seq)

    # -- validation -----------------------------------------------------------------------------------
    def validate(self) -> ModelSpec:
        arch = lookup(self.arch)
        if len(self.widths) != len(arch.slots):
            raise SpecError(f"{self.arch}: expected {len(arch.slots)} widths, got {len(self.widths)}")
        bad = [f"{s}={w}" for s, w in zip(arch.slots, self.widths, strict=True) if int(w) < 1]
        if bad:
            raise SpecError(f"{self.arch}: every width must be >= 1, got {', '.join(bad)}")
        if self.in_chans < 1:
            raise SpecError(f"in_chans must be >= 1, got {self.in_chans}")
        if self.num_classes < 1:
            raise SpecError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.last_stride not in (1, 2):
            raise SpecError(f"last_stride must be 1 or 2, got {self.last_stride}")
        return self

    # -- serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "arch": self.arch,
            "in_chans": self.in_chans,
            "num_classes": self.num_classes,
            "last_stride": self.last_stride,
            "features_only": self.features_only,
            "widths": self.width_map(),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def hash(self) -> str:
        """A short content hash (stable across runs and machines) identifying this exact network."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"a spec must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise SpecError(f"unsupported spec format {fmt!r} (this version reads {SPEC_FORMAT!r})")
        if "arch" not in data or "widths" not in data:
            raise SpecError("a spec needs the keys 'arch' and 'widths'")
        try:
            arch = lookup(str(data["arch"]))
        except PruneoptError as exc:
            raise SpecError(str(exc)) from None
        widths = data["widths"]
        try:
            if isinstance(widths, Mapping):
                if any(not isinstance(v, int) or isinstance(v, bool) for v in widths.values()):
                    raise SpecError("every width must be an integer")
                spec = cls(arch=arch.name, widths=tuple(0 for _ in arch.slots)).with_widths(widths)
                widths_t = spec.widths
            elif isinstance(widths, list | tuple):
                if any(not isinstance(v, int) or isinstance(v, bool) for v in widths):
                    raise SpecError("every width must be an integer")
                widths_t = tuple(widths)
            else:
                raise SpecError("'widths' must be an object {slot: width} or a list")
            spec = cls(
                arch=arch.name,
                widths=widths_t,
                in_chans=_int_field(data, "in_chans", 3),
                num_classes=_int_field(data, "num_classes", 1000),
                last_stride=_int_field(data, "last_stride", 2),
                features_only=bool(data.get("features_only", False)),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SpecError):
                raise
            raise SpecError(f"malformed spec: {exc}") from exc
        return spec.validate()

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> ModelSpec:
        """Read a spec from a ``spec.json`` file (or a folder holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "spec.json"
        try:
            text = p.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read spec file {p}: {exc.strerror or exc}") from exc
        try:
            return cls.from_json(text)
        except SpecError as exc:
            raise SpecError(f"{p}: {exc}") from exc

    def save(self, path: str | Path) -> Path:
        """Write ``spec.json`` (``path`` is the file, or a folder to hold it) atomically."""
        p = Path(path)
        if p.is_dir():
            p = p / "spec.json"
        return atomic_write(p, self.to_json(indent=2) + "\n")


def _int_field(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"'{key}' must be an integer, got {value!r}")
    return value
