from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pruneopt.errors import PruneoptError, SpecError
from pruneopt.models import ModelSpec, build, default_spec, get_arch, list_archs
from tests.support.models import random_specs

ALL = ["resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2"]


def test_registry_has_every_architecture() -> None:
    assert list_archs() == ALL
    with pytest.raises(PruneoptError, match="unknown architecture 'vgg16'.*resnet50"):
        get_arch("vgg16")


@pytest.mark.parametrize("arch", ALL)
def test_built_shapes_are_exactly_the_spec(arch: str) -> None:
    (spec,) = random_specs(arch, 1, seed=1)
    a = get_arch(arch)
    with torch.device("meta"):
        model = build(spec)
    widths = spec.width_map()
    modules = dict(model.named_modules())
    for layer in a.layers(spec):
        mod = modules[layer.name]
        cin, cout = layer.channels(widths)
        if isinstance(mod, nn.Conv2d):
            assert (mod.in_channels, mod.out_channels) == (cin, cout), layer.name
            assert mod.groups == (cin if layer.depthwise else 1)
        elif isinstance(mod, nn.BatchNorm2d):
            assert mod.num_features == cout, layer.name
        else:
            assert (mod.in_features, mod.out_features) == (cin, cout), layer.name
    # the channel graph names every weighted module of the network
    weighted = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Linear)}
    assert weighted == {layer.name for layer in a.layers(spec)}


def test_torchvision_state_dict_names() -> None:
    with torch.device("meta"):
        r50 = build(default_spec("resnet50")).state_dict()
        mb2 = build(default_spec("mobilenetv2")).state_dict()
    for key in ("conv1.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var", "fc.bias"):
        assert key in r50
    for key in ("features.0.0.weight", "features.1.conv.0.0.weight", "features.2.conv.1.0.weight",
                "features.17.conv.3.running_mean", "features.18.1.weight", "classifier.1.weight"):
        assert key in mb2


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "mobilenetv2"])
def test_options_in_chans_classes_and_features_only(arch: str) -> None:
    spec = get_arch(arch).default_spec(in_chans=1, num_classes=7)
    model = build(spec).eval()
    assert model(torch.randn(2, 1, 64, 32)).shape == (2, 7)
    feats = build(get_arch(arch).default_spec(in_chans=1, features_only=True)).eval()
    out = feats(torch.randn(2, 1, 64, 32))
    assert out.dim() == 4 and out.shape[1] == spec.widths[-1 if arch == "mobilenetv2" else spec.slots.index(
        f"layer{len(get_arch(arch).depths)}")]


@pytest.mark.parametrize("arch,h,w,stride2,stride1", [
    ("resnet50", 256, 128, (8, 4), (16, 8)),
    ("resnet20", 32, 32, (8, 8), (16, 16)),
    ("mobilenetv2", 256, 128, (8, 4), (16, 8)),
])
def test_last_stride(arch: str, h: int, w: int, stride2: tuple[int, int], stride1: tuple[int, int]) -> None:
    for last, expected in ((2, stride2), (1, stride1)):
        spec = get_arch(arch).default_spec(features_only=True, last_stride=last)
        with torch.device("meta"):
            out = build(spec)(torch.zeros(1, 3, h, w))
        assert tuple(out.shape[2:]) == expected


@pytest.mark.parametrize("arch", ALL)
def test_spec_json_round_trip(arch: str, tmp_path) -> None:
    (spec,) = random_specs(arch, 1, seed=2, num_classes=5, last_stride=1)
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec) and again.hash() == spec.hash()
    path = spec.save(tmp_path / "spec.json")
    assert ModelSpec.load(path) == spec
    assert ModelSpec.load(tmp_path) == spec
    assert json.loads(path.read_text())["widths"] == spec.width_map()


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "JSON object"),
    ('{"arch": "resnet20"}', "'arch' and 'widths'"),
    ('{"arch": "nope", "widths": {}}', "unknown architecture"),
    ('{"arch": "resnet20", "widths": {"layer1": 16}}', "missing"),
    ('{"arch": "resnet20", "widths": [1, 2, 3]}', "expected 12 widths"),
    ('{"arch": "resnet20", "widths": {"bogus": 3}}', "unknown channel slot"),
    ('{"arch": "resnet20", "widths": [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, "x"]}', "integer"),
    ('{"arch": "resnet20", "widths": [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 0]}', ">= 1"),
    ('{"arch": "resnet20", "widths": [16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64], "last_stride": 3}',
     "last_stride"),
    ('{"format": "other/9", "arch": "resnet20", "widths": []}', "unsupported spec format"),
    ("{oops", "not valid JSON"),
])
def test_malformed_specs_raise_spec_error(text: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        ModelSpec.from_json(text)
