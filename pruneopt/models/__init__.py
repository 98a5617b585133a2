"""Width-parameterised networks: ResNets (CIFAR and ImageNet style) and MobileNetV2, built from a spec."""

from .graph import Arch, Layer, Network, SlotInfo
from .registry import get_arch, list_archs, register
from .spec import ModelSpec

__all__ = ["Arch", "Layer", "ModelSpec", "Network", "SlotInfo", "build", "default_spec", "get_arch", "list_archs",
           "register"]


def default_spec(arch: str, **options: object) -> ModelSpec:
    """The unpruned reference spec of ``arch`` (options: in_chans, num_classes, last_stride, features_only)."""
    return get_arch(arch).default_spec(**options)  # type: ignore[arg-type]


def build(spec: ModelSpec) -> Network:
    """Build the network of a spec (an ``nn.Module``); the spec is kept as ``model.spec``."""
    return get_arch(spec.arch).build(spec)
