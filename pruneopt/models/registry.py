"""Architectures by name: ``get_arch("resnet50").build(spec)``."""

from __future__ import annotations

from ..errors import PruneoptError
from .graph import Arch
from .mobilenetv2 import MobileNetV2Arch
from .resnet import ResNetArch

_ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    """Add an architecture to the registry (its ``name`` must be new)."""
    if arch.name in _ARCHS:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _ARCHS[arch.name] = arch
    return arch


def get_arch(name: str) -> Arch:
    try:
        return _ARCHS[name.lower()]
    except KeyError:
        raise PruneoptError(f"unknown architecture {name!r}; choose one of: {', '.join(list_archs())}") from None


def list_archs() -> list[str]:
    return list(_ARCHS)


for _depth in (20, 32, 56, 110):
    register(ResNetArch(f"resnet{_depth}", "basic", (((_depth - 2) // 6),) * 3, "cifar"))
register(ResNetArch("resnet18", "basic", (2, 2, 2, 2), "imagenet"))
register(ResNetArch("resnet34", "basic", (3, 4, 6, 3), "imagenet"))
register(ResNetArch("resnet50", "bottleneck", (3, 4, 6, 3), "imagenet"))
register(ResNetArch("resnet101", "bottleneck", (3, 4, 23, 3), "imagenet"))
register(MobileNetV2Arch())
