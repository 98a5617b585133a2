from __future__ import annotations

import numpy as np
import pytest

from pruneopt.complexity import count
from pruneopt.errors import PruneoptError
from pruneopt.models import default_spec, get_arch
from pruneopt.space import PruningSpace, RatioConstraint, Regime, derive_groups


def groups_by_name(arch: str) -> dict:
    return {g.name: g for g in derive_groups(default_spec(arch))}


def test_resnet50_groups() -> None:
    g = groups_by_name("resnet50")
    assert len(g) == 1 + 4 + 2 * 16  # stem, one residual group per stage, two internal convs per bottleneck
    assert g["conv1"].kind == "stem" and g["conv1"].producers == ("conv1", "bn1")
    # the stem feeds a projection, not an identity: it is its own group, read by block 0's conv1 and shortcut
    assert set(g["conv1"].consumers) == {"layer1.0.conv1", "layer1.0.downsample.0"}
    stage = g["layer2"]
    assert stage.kind == "residual" and stage.channels == 512
    assert {"layer2.0.conv3", "layer2.0.downsample.0", "layer2.1.conv3", "layer2.3.conv3"} <= set(stage.producers)
    assert "layer3.0.conv1" in stage.consumers and "layer2.1.conv1" in stage.consumers
    assert g["layer4"].consumers[-1] == "fc"
    assert g["layer3.5.conv2"].producers == ("layer3.5.conv2", "layer3.5.bn2")
    assert g["layer3.5.conv2"].consumers == ("layer3.5.conv3",)


@pytest.mark.parametrize("arch", ["resnet18", "resnet20", "resnet110"])
def test_stem_is_tied_to_stage1_when_it_feeds_an_identity(arch: str) -> None:
    g = groups_by_name(arch)
    assert "conv1" not in g
    assert {"conv1", "bn1", "layer1.0.conv2"} <= set(g["layer1"].producers)


def test_mobilenetv2_groups() -> None:
    g = groups_by_name("mobilenetv2")
    # stem (its channels run through block 1's depthwise conv), 16 expansions, 7 stages, head
    assert len(g) == 1 + 16 + 7 + 1
    assert "features.1.conv.0.0" in g["features.0"].producers
    exp = g["features.5.expand"]
    assert exp.kind == "expansion" and exp.channels == 192
    assert set(exp.producers) == {"features.5.conv.0.0", "features.5.conv.0.1", "features.5.conv.1.0",
                                  "features.5.conv.1.1"}
    assert exp.consumers == ("features.5.conv.2",)
    stage3 = g["stage3"]  # 3 blocks of 32 channels tied by residual additions
    assert {"features.4.conv.2", "features.5.conv.2", "features.6.conv.2"} <= set(stage3.producers)
    assert g["features.18"].consumers == ("classifier.1",)


def test_widths_are_rounded_and_clipped() -> None:
    space = PruningSpace(default_spec("resnet50"), r_min=0.1, r_max=1.0)
    assert space.round_to == 8
    w = space.widths(np.full((1, len(space.groups)), 0.33))[0]
    assert all(x % 8 == 0 for x in w)
    full = space.widths(np.ones((1, len(space.groups))))[0]
    assert tuple(full) == default_spec("resnet50").widths
    tiny = space.widths(np.full((1, len(space.groups)), 0.001))[0]
    assert tiny.min() == 8
    assert PruningSpace(default_spec("resnet20")).round_to == 1


@pytest.mark.parametrize("arch,regime,band", [("resnet50", 0.5, 0.01), ("mobilenetv2", 0.3, 0.02),
                                              ("resnet56", 0.4, 0.01)])
def test_every_sample_is_inside_the_band(arch: str, regime: float, band: float) -> None:
    space = PruningSpace(default_spec(arch))
    s = space.sample(300, Regime(regime, band), seed=0)
    assert len(s) == 300 and 0 < s.acceptance_rate < 1
    parent_macs = count(default_spec(arch)).macs
    for spec in list(s.specs())[:40]:
        frac = count(spec).macs / parent_macs
        assert regime - band <= frac <= regime + band
    assert np.all(np.abs(s.stats.flops_fraction - regime) <= band)


def test_same_seed_same_samples_and_prefix_stability() -> None:
    space = PruningSpace(default_spec("resnet50"))
    a = space.sample(200, Regime(0.5), seed=7)
    b = space.sample(200, Regime(0.5), seed=7)
    c = space.sample(50, Regime(0.5), seed=7)
    d = space.sample(200, Regime(0.5), seed=8)
    assert np.array_equal(a.widths, b.widths)
    assert np.array_equal(a.widths[:50], c.widths)
    assert not np.array_equal(a.widths, d.widths)


def test_ratio_constraint_is_respected_and_reduces_acceptance() -> None:
    space = PruningSpace(default_spec("resnet56"))
    free = space.sample(500, Regime(0.5, 0.02), seed=0)
    r_star = float(np.median(free.stats.ratio))
    refined = space.with_constraints(RatioConstraint(r_star, 0.02))
    s = refined.sample(200, Regime(0.5, 0.02), seed=0)
    assert np.all(np.abs(s.stats.ratio - r_star) <= 0.02 * r_star + 1e-9)
    assert s.acceptance_rate < free.acceptance_rate
    again = PruningSpace.from_dict(refined.to_dict())
    assert np.array_equal(again.sample(20, Regime(0.5, 0.02), seed=0).widths, s.widths[:20])


def test_records_carry_the_structure_statistics() -> None:
    space = PruningSpace(default_spec("resnet18"))
    rec = next(space.sample(1, Regime(0.5), seed=0).records())
    assert set(rec) >= {"spec", "macs", "params", "ratio", "flops_fraction", "stage_widths", "activations"}
    assert rec["ratio"] == pytest.approx(rec["macs"] / rec["params"])
    assert rec["stage_widths"]["layer1"] == rec["spec"]["widths"]["layer1"]


@pytest.mark.parametrize("kwargs,match", [
    ({"r_min": 0.0}, "keep ratios"), ({"r_min": 0.8, "r_max": 0.5}, "keep ratios"), ({"round_to": 0}, "round_to"),
])
def test_bad_space_arguments(kwargs, match) -> None:
    with pytest.raises(PruneoptError, match=match):
        PruningSpace(default_spec("resnet20"), **kwargs)


def test_unreachable_regimes_fail_clearly() -> None:
    space = PruningSpace(default_spec("resnet50"), r_min=0.5)
    lo, _ = space.fraction_range()
    assert lo > 0.2
    with pytest.raises(PruneoptError, match="out of this space's reach"):
        space.sample(10, Regime(0.1, 0.01))
    with pytest.raises(PruneoptError, match="regime must be"):
        Regime(0.0)
    with pytest.raises(PruneoptError, match="regime must be"):
        Regime(1.2)
    with pytest.raises(PruneoptError, match="band"):
        Regime(0.5, 0.0)
    # reachable in principle but (almost) never hit: bounded effort, then a clear error
    with pytest.raises(PruneoptError, match="after .* draws.*relax the constraints"):
        space.with_constraints(RatioConstraint(1.0, 1e-6)).sample(5, Regime(0.5), max_draws=50_000)


@pytest.mark.parametrize("regime,advice", [(0.75, "raise --r-min to about 0.[6-9]"),
                                           (0.05, "lower --r-max to about 0.[2-5]")])
def test_tail_regimes_fail_early_with_advice_that_works(regime: float, advice: str) -> None:
    space = PruningSpace(default_spec("resnet56"))  # 30 groups: FLOPs fractions concentrate near 0.36
    with pytest.raises(PruneoptError, match=advice) as info:
        space.sample(100, Regime(regime, 0.01))
    value = float(info.value.args[0].split("about ")[1].split()[0])
    kw = {"r_min": value} if "r-min" in advice else {"r_max": value}
    assert len(PruningSpace(default_spec("resnet56"), **kw).sample(100, Regime(regime, 0.01))) == 100


def test_stage_widths_exist_for_every_arch() -> None:
    for name in ("resnet20", "resnet50", "mobilenetv2"):
        a = get_arch(name)
        assert set(a.stage_slots().values()) <= set(a.slots)
