"""Architectures by name: ``get_arch("resnet50").build(spec)``; the built-in ones are registered here."""

from __future__ import annotations

from ..errors import PruneoptError
from .catalog import add, lookup, names
from .graph import Arch
from .mobilenetv2 import MobileNetV2Arch
from .resnet import ResNetArch


def register(arch: Arch) -> Arch:
    """Add an architecture to the registry (its ``name`` must be new)."""
    add(arch)
    return arch


def get_arch(name: str) -> Arch:
    """The architecture called ``name`` (case-insensitive); :class:`PruneoptError` naming the choices if unknown."""
    arch = lookup(name)
    if not isinstance(arch, Arch):  # pragma: no cover - only register() fills the table
        raise PruneoptError(f"{name!r} is registered but is not a pruneopt architecture")
    return arch


def list_archs() -> list[str]:
    return names()


for _depth in (20, 32, 56, 110):
    register(ResNetArch(f"resnet{_depth}", "basic", (((_depth - 2) // 6),) * 3, "cifar"))
register(ResNetArch("resnet18", "basic", (2, 2, 2, 2), "imagenet"))
register(ResNetArch("resnet34", "basic", (3, 4, 6, 3), "imagenet"))
register(ResNetArch("resnet50", "bottleneck", (3, 4, 6, 3), "imagenet"))
register(ResNetArch("resnet101", "bottleneck", (3, 4, 23, 3), "imagenet"))
register(MobileNetV2Arch())
