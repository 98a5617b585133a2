"""MobileNetV2 built from an explicit width spec.

Module names follow torchvision (``features.3.conv.1.0``, ``classifier.1``), so a torchvision ImageNet state dict
loads into the full-width network unchanged.

Channel slots (see :mod:`pruneopt.models.spec`):

* ``features.0`` -- the stem conv (its channels also run through block 1's depthwise conv);
* ``features.{i}.expand`` -- the expansion 1x1 conv of block ``i`` and the depthwise conv on its output: free,
  one slot per block;
* ``stage{s}`` -- the projection outputs of stage ``s``, tied across the stage by its residual additions;
* ``features.18`` -- the final 1x1 conv feeding the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .graph import Arch, Layer, Network, SlotInfo, conv_out
from .spec import ModelSpec

# (expansion t, output channels c, repeats n, first stride s), as in Sandler et al. 2018
SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM = 32
HEAD = 1280
LAST_STRIDE_STAGE = 6  # the last stage that downsamples; ``last_stride`` sets its stride


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, hidden: int | None, cout: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.use_res_connect = residual
        if hidden is None:  # expansion 1: depthwise on the input channels, then project
            self.conv = nn.Sequential(
                _conv_bn(cin, cin, 3, stride, groups=cin),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.conv = nn.Sequential(
                _conv_bn(cin, hidden, 1, 1),
                _conv_bn(hidden, hidden, 3, stride, groups=hidden),
                nn.Conv2d(hidden, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(Network):
    def __init__(self, arch: MobileNetV2Arch, spec: ModelSpec) -> None:
        super().__init__()
        w = spec.width_map()
        self.features_only = spec.features_only
        feats: list[nn.Module] = [_conv_bn(spec.in_chans, w["features.0"], 3, 2)]
        cin = w["features.0"]
        for blk in arch.blocks(spec):
            cout = w[blk.out_slot]
            hidden = None if blk.hidden_slot is None else w[blk.hidden_slot]
            feats.append(InvertedResidual(cin, hidden, cout, blk.stride, blk.residual))
            cin = cout
        feats.append(_conv_bn(cin, w["features.18"], 1, 1))
        self.features = nn.Sequential(*feats)
        self.out_channels = w["features.18"]
        if not spec.features_only:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.out_channels, spec.num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.features_only:
            return x
        return self.classifier(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class _Block:
    index: int  # position in ``features``
    stage: int
    in_slot: str
    hidden_slot: str | None  # None for expansion 1 (no expansion conv)
    out_slot: str
    stride: int
    residual: bool


class MobileNetV2Arch(Arch):
    name = "mobilenetv2"
    style = "imagenet"
    default_input = (3, 224, 224)
    default_num_classes = 1000
    round_to = 8

    def __init__(self) -> None:
        slots = [SlotInfo("features.0", STEM, "stem")]
        cin, i = STEM, 1
        for s, (t, c, n, _) in enumerate(SETTINGS, start=1):
            for _ in range(n):
                if t != 1:
                    slots.append(SlotInfo(f"features.{i}.expand", int(round(cin * t)), "expansion"))
                cin, i = c, i + 1
            slots.append(SlotInfo(f"stage{s}", c, "residual" if n > 1 else "internal"))
        slots.append(SlotInfo("features.18", HEAD, "head"))
        self._slots = tuple(slots)

    @property
    def slot_info(self) -> tuple[SlotInfo, ...]:
        return self._slots

    def stage_slots(self) -> dict[str, str]:
        return {f"stage{s}": f"stage{s}" for s in range(1, len(SETTINGS) + 1)}

    def blocks(self, spec: ModelSpec) -> list[_Block]:
        out: list[_Block] = []
        in_slot, i, cin = "features.0", 1, STEM
        for s, (t, c, n, stride) in enumerate(SETTINGS, start=1):
            for r in range(n):
                st = stride if r == 0 else 1
                if s == LAST_STRIDE_STAGE and r == 0:
                    st = spec.last_stride
                hidden = None if t == 1 else f"features.{i}.expand"
                # residual structure is that of the reference network, whatever the widths
                residual = r > 0 and cin == c
                out.append(_Block(i, s, in_slot, hidden, f"stage{s}", st, residual))
                in_slot, cin, i = f"stage{s}", c, i + 1
        return out

    def layers(self, spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> list[Layer]:
        h, w = self.input_hw(input_hw)
        h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        out = [
            Layer("features.0.0", "conv", spec.in_chans, "features.0", 3, out_hw=(h, w)),
            Layer("features.0.1", "bn", "features.0", "features.0", out_hw=(h, w)),
        ]
        for blk in self.blocks(spec):
            p = f"features.{blk.index}.conv"
            ho, wo = conv_out(h, 3, blk.stride, 1), conv_out(w, 3, blk.stride, 1)
            if blk.hidden_slot is None:
                dw, j = blk.in_slot, 0
            else:
                dw, j = blk.hidden_slot, 1
                out += [
                    Layer(f"{p}.0.0", "conv", blk.in_slot, dw, 1, out_hw=(h, w)),
                    Layer(f"{p}.0.1", "bn", dw, dw, out_hw=(h, w)),
                ]
            out += [
                Layer(f"{p}.{j}.0", "conv", dw, dw, 3, depthwise=True, out_hw=(ho, wo)),
                Layer(f"{p}.{j}.1", "bn", dw, dw, out_hw=(ho, wo)),
                Layer(f"{p}.{j + 1}", "conv", dw, blk.out_slot, 1, out_hw=(ho, wo)),
                Layer(f"{p}.{j + 2}", "bn", blk.out_slot, blk.out_slot, out_hw=(ho, wo)),
            ]
            h, w = ho, wo
        out += [
            Layer("features.18.0", "conv", "stage7", "features.18", 1, out_hw=(h, w)),
            Layer("features.18.1", "bn", "features.18", "features.18", out_hw=(h, w)),
        ]
        if not spec.features_only:
            out.append(Layer("classifier.1", "linear", "features.18", spec.num_classes, bias=True))
        return out

    def _build(self, spec: ModelSpec) -> Network:
        return MobileNetV2(self, spec)
