"""ResNets built from explicit width specs: CIFAR-style (resnet20/32/56/110) and ImageNet-style (resnet18-101).

Module names follow torchvision (``conv1``, ``layer2.0.downsample.0``, ``fc``), so a torchvision ImageNet
state dict loads into the full-width ``resnet50`` unchanged. Bottleneck blocks put the stride on the 3x3 conv
("ResNet v1.5", as torchvision does).

CIFAR-style ResNets use a 1x1 conv + batch-norm projection where a stage changes width (He et al.'s option B),
rather than the zero-padding shortcut (option A): a projection keeps every channel prunable and costs ~0.3% of the
MACs (resnet56 on 3x32x32: 125.75 M MACs, 0.856 M parameters, against 125.49 M / 0.853 M with option A).

Channel slots (see :mod:`pruneopt.models.spec`):

* ``layer{s}`` -- the residual channels of stage ``s``: every block's last conv, the projection, and (where the
  stem feeds an identity path, as in resnet18/34 and all CIFAR ResNets) the stem conv too;
* ``conv1`` -- the stem, when a projection separates it from stage 1 (Bottleneck ResNets);
* ``layer{s}.{b}.conv1`` (and ``.conv2`` in Bottlenecks) -- block-internal convs, each on its own.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .graph import Arch, Layer, Network, SlotInfo, conv_out
from .spec import ModelSpec


class BasicBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if project else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid1: int, mid2: int, cout: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid1)
        self.conv2 = nn.Conv2d(mid1, mid2, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid2)
        self.conv3 = nn.Conv2d(mid2, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if project else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Network):
    """A ResNet whose every channel count comes from a spec (build it with ``get_arch(name).build(spec)``)."""

    def __init__(self, arch: ResNetArch, spec: ModelSpec) -> None:
        super().__init__()
        w = spec.width_map()
        self.features_only = spec.features_only
        stem = w[arch.stem_slot]
        if arch.style == "imagenet":
            self.conv1 = nn.Conv2d(spec.in_chans, stem, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(spec.in_chans, stem, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        for s, depth in enumerate(arch.depths, start=1):
            blocks: list[nn.Module] = []
            cout = w[f"layer{s}"]
            for b in range(depth):
                stride = arch.stride(s, spec) if b == 0 else 1
                project = b == 0 and arch.projects(s)
                p = f"layer{s}.{b}"
                if arch.block == "basic":
                    blocks.append(BasicBlock(cin, w[f"{p}.conv1"], cout, stride, project))
                else:
                    blocks.append(Bottleneck(cin, w[f"{p}.conv1"], w[f"{p}.conv2"], cout, stride, project))
                cin = cout
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.num_stages = len(arch.depths)
        self.out_channels = cin
        if not spec.features_only:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, spec.num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        if self.features_only:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNetArch(Arch):
    """One member of the ResNet family (depths, block type, CIFAR or ImageNet stem)."""

    def __init__(
        self,
        name: str,
        block: Literal["basic", "bottleneck"],
        depths: tuple[int, ...],
        style: Literal["cifar", "imagenet"],
    ) -> None:
        self.name = name
        self.block = block
        self.depths = depths
        self.style = style
        if style == "imagenet":
            self.planes: tuple[int, ...] = (64, 128, 256, 512)
            self.stem_width = 64
            self.default_input = (3, 224, 224)
            self.default_num_classes = 1000
            self.round_to = 8
        else:
            self.planes = (16, 32, 64)
            self.stem_width = 16
            self.default_input = (3, 32, 32)
            self.default_num_classes = 10
            self.round_to = 1
        self.expansion = 4 if block == "bottleneck" else 1
        self._slots = self._make_slots()

    # -- structure (independent of widths and options) ---------------------------------------------------
    def stage_width(self, s: int) -> int:
        return self.planes[s - 1] * self.expansion

    def projects(self, s: int) -> bool:
        """Whether stage ``s`` starts with a projection shortcut (decided by the reference widths)."""
        cin = self.stem_width if s == 1 else self.stage_width(s - 1)
        return s > 1 or cin != self.stage_width(s)

    def stride(self, s: int, spec: ModelSpec) -> int:
        if s == 1:
            return 1
        return spec.last_stride if s == len(self.depths) else 2

    @property
    def stem_slot(self) -> str:
        return "conv1" if self.projects(1) else "layer1"

    def _make_slots(self) -> tuple[SlotInfo, ...]:
        slots: list[SlotInfo] = []
        if self.projects(1):
            slots.append(SlotInfo("conv1", self.stem_width, "stem"))
        for s, depth in enumerate(self.depths, start=1):
            slots.append(SlotInfo(f"layer{s}", self.stage_width(s), "residual"))
            for b in range(depth):
                slots.append(SlotInfo(f"layer{s}.{b}.conv1", self.planes[s - 1], "internal"))
                if self.block == "bottleneck":
                    slots.append(SlotInfo(f"layer{s}.{b}.conv2", self.planes[s - 1], "internal"))
        return tuple(slots)

    @property
    def slot_info(self) -> tuple[SlotInfo, ...]:
        return self._slots

    def stage_slots(self) -> dict[str, str]:
        return {f"layer{s}": f"layer{s}" for s in range(1, len(self.depths) + 1)}

    # -- channel graph -------------------------------------------------------------------------------------
    def layers(self, spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> list[Layer]:
        h, w = self.input_hw(input_hw)
        out: list[Layer] = []
        stem = self.stem_slot
        if self.style == "imagenet":
            h, w = conv_out(h, 7, 2, 3), conv_out(w, 7, 2, 3)
            out.append(Layer("conv1", "conv", spec.in_chans, stem, 7, out_hw=(h, w)))
            out.append(Layer("bn1", "bn", stem, stem, out_hw=(h, w)))
            h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        else:
            out.append(Layer("conv1", "conv", spec.in_chans, stem, 3, out_hw=(h, w)))
            out.append(Layer("bn1", "bn", stem, stem, out_hw=(h, w)))
        cin: str = stem
        for s, depth in enumerate(self.depths, start=1):
            res = f"layer{s}"
            for b in range(depth):
                p = f"layer{s}.{b}"
                stride = self.stride(s, spec) if b == 0 else 1
                ho, wo = conv_out(h, 3, stride, 1), conv_out(w, 3, stride, 1)
                if self.block == "basic":
                    m1 = f"{p}.conv1"
                    out += [
                        Layer(f"{p}.conv1", "conv", cin, m1, 3, out_hw=(ho, wo)),
                        Layer(f"{p}.bn1", "bn", m1, m1, out_hw=(ho, wo)),
                        Layer(f"{p}.conv2", "conv", m1, res, 3, out_hw=(ho, wo)),
                        Layer(f"{p}.bn2", "bn", res, res, out_hw=(ho, wo)),
                    ]
                else:
                    m1, m2 = f"{p}.conv1", f"{p}.conv2"
                    out += [
                        Layer(f"{p}.conv1", "conv", cin, m1, 1, out_hw=(h, w)),
                        Layer(f"{p}.bn1", "bn", m1, m1, out_hw=(h, w)),
                        Layer(f"{p}.conv2", "conv", m1, m2, 3, out_hw=(ho, wo)),
                        Layer(f"{p}.bn2", "bn", m2, m2, out_hw=(ho, wo)),
                        Layer(f"{p}.conv3", "conv", m2, res, 1, out_hw=(ho, wo)),
                        Layer(f"{p}.bn3", "bn", res, res, out_hw=(ho, wo)),
                    ]
                if b == 0 and self.projects(s):
                    out += [
                        Layer(f"{p}.downsample.0", "conv", cin, res, 1, out_hw=(ho, wo)),
                        Layer(f"{p}.downsample.1", "bn", res, res, out_hw=(ho, wo)),
                    ]
                h, w, cin = ho, wo, res
        if not spec.features_only:
            out.append(Layer("fc", "linear", cin, spec.num_classes, bias=True))
        return out

    def _build(self, spec: ModelSpec) -> Network:
        return ResNet(self, spec)
