"""The channel graph of an architecture: which layer reads and writes which channel slot.

Each architecture describes itself as a flat list of :class:`Layer` records, one per weighted module (conv,
batch norm, linear), named by the module's qualified name in the built ``nn.Module``. A layer's input and output
channel counts are either a *slot name* (a prunable set of channels, see :mod:`pruneopt.models.spec`) or a fixed
integer (image channels, number of classes). Everything width-dependent in the package is derived from this list:
complexity counts (:mod:`pruneopt.complexity`), the prunable groups of a space (:mod:`pruneopt.space`) and the
weight slicing of thinning (:mod:`pruneopt.thinning`). The records depend on the architecture, its options and
the input size, never on the widths, so one list serves every subnetwork of a parent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..errors import SpecError
from .spec import ModelSpec

Channels = str | int  # a slot name, or a fixed channel count


@dataclass(frozen=True)
class Layer:
    """One weighted module of an architecture, with its channel slots and output size."""

    name: str
    kind: Literal["conv", "bn", "linear"]
    cin: Channels
    cout: Channels
    kernel: int = 1
    depthwise: bool = False
    out_hw: tuple[int, int] = (1, 1)
    bias: bool = False

    def channels(self, widths: dict[str, int]) -> tuple[int, int]:
        cin = widths[self.cin] if isinstance(self.cin, str) else self.cin
        cout = widths[self.cout] if isinstance(self.cout, str) else self.cout
        return cin, cout


@dataclass(frozen=True)
class SlotInfo:
    """A channel slot: its name, its width in the reference (unpruned) network and what kind of channels it is.

    ``kind`` is one of ``stem`` (the first conv, on its own), ``residual`` (channels tied by residual additions
    in a stage, including the stem when it feeds an identity path), ``internal`` (a block-internal conv),
    ``expansion`` (a MobileNetV2 expansion + depthwise pair) or ``head`` (a final 1x1 conv before the classifier).
    """

    name: str
    width: int
    kind: Literal["stem", "residual", "internal", "expansion", "head"]


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class Network(nn.Module):
    """A network built from a width spec by :meth:`Arch.build`; ``spec`` says exactly what it is, and
    ``out_channels`` is the width of its last feature map (what a features-only network returns, pooled)."""

    spec: ModelSpec
    out_channels: int


class Arch(ABC):
    """An architecture: its channel slots, its channel graph and a builder from a width spec."""

    name: str
    style: Literal["cifar", "imagenet"]
    default_input: tuple[int, int, int]
    default_num_classes: int
    round_to: int  # default channel multiple for pruning spaces of this architecture

    @property
    @abstractmethod
    def slot_info(self) -> tuple[SlotInfo, ...]: ...

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slot_info)

    @property
    def full_widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.slot_info)

    def default_spec(
        self,
        *,
        in_chans: int | None = None,
        num_classes: int | None = None,
        last_stride: int = 2,
        features_only: bool = False,
    ) -> ModelSpec:
        """The reference (unpruned) network of this architecture."""
        return ModelSpec(
            arch=self.name,
            widths=self.full_widths,
            in_chans=self.default_input[0] if in_chans is None else in_chans,
            num_classes=self.default_num_classes if num_classes is None else num_classes,
            last_stride=last_stride,
            features_only=features_only,
        ).validate()

    @abstractmethod
    def stage_slots(self) -> dict[str, str]:
        """Stage name -> the slot holding that stage's output width (a subnetwork's "per-stage widths")."""

    @abstractmethod
    def layers(self, spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> list[Layer]:
        """The channel graph for ``spec``'s options at the given input size (width-independent)."""

    @abstractmethod
    def _build(self, spec: ModelSpec) -> Network: ...

    def build(self, spec: ModelSpec) -> Network:
        """An ``nn.Module`` with exactly the widths of ``spec``; the spec is kept as ``model.spec``."""
        if spec.arch != self.name:
            raise SpecError(f"spec is for {spec.arch!r}, not {self.name!r}")
        spec.validate()
        model = self._build(spec)
        model.spec = spec
        return model

    def input_hw(self, input_hw: tuple[int, int] | None) -> tuple[int, int]:
        hw = self.default_input[1:] if input_hw is None else input_hw
        if min(hw) < 1:
            raise SpecError(f"input size must be positive, got {hw[0]}x{hw[1]}")
        return hw[0], hw[1]
