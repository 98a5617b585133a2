"""What makes a search a fair test (issue 16): the baselines prune the channels they should, land within the final
band, the warm-up ends inside short runs, and the candidates' seeding and the noise floor are what the config says
(the toy task: nothing is trained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pruneopt import train as train_mod
from pruneopt.baselines import (
    FINAL_BAND,
    baseline_specs,
    bn_gamma_spec,
    global_l1_spec,
    layer_l1_spec,
    uniform_spec,
)
from pruneopt.data.splits import Split
from pruneopt.models import build, default_spec
from pruneopt.search import run_search
from pruneopt.search_config import SearchConfig
from pruneopt.seeds import derive_seed
from pruneopt.space import PruningSpace, Regime
from pruneopt.store import Store
from pruneopt.tasks import registry
from pruneopt.train import TrainConfig, _lr_at, train, warmup_steps
from tests.support.models import randomise_bn

from . import toy_task


# -- baselines ---------------------------------------------------------------------------------------------------
def hand_set_resnet20() -> tuple[nn.Module, PruningSpace]:
    """A resnet20 whose every conv weight is 1 and every BN gamma 1: all channels equal until a test says not."""
    model = build(default_spec("resnet20", in_chans=1, num_classes=10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
    return model, PruningSpace(model.spec, input_hw=(28, 28))


def at(space: PruningSpace, **widths: int) -> tuple[np.ndarray, Regime]:
    """The parent's widths with ``widths`` changed (slot names with ``_`` for ``.``), and a regime at their FLOPs."""
    full = {g.name: g.channels for g in space.groups}
    full.update({k.replace("_", "."): v for k, v in widths.items()})
    w = np.array([full[g.name] for g in space.groups])
    return w, Regime(float(space.stats(w[None]).flops_fraction[0]), 0.01)


def slot_widths(spec) -> dict[str, int]:
    return spec.width_map()


def test_bn_gamma_drops_the_channels_with_the_smallest_gamma() -> None:
    model, space = hand_set_resnet20()
    with torch.no_grad():
        model.get_submodule("layer3.0.bn1").weight[::2] = 0.01  # half of layer3.0.conv1's channels: tiny gamma
    expected, regime = at(space, layer3_0_conv1=32)
    assert np.array_equal(bn_gamma_spec(model, space, regime).widths, expected)


def test_bn_gamma_stops_at_the_space_floor() -> None:
    model, space = hand_set_resnet20()
    with torch.no_grad():
        model.get_submodule("layer3.1.bn1").weight.fill_(0.01)  # every channel of the group is weak
    expected, regime = at(space, layer3_1_conv1=13)  # 0.2 x 64, the space's floor
    assert np.array_equal(bn_gamma_spec(model, space, regime).widths, expected)


def test_layer_normalised_l1_ignores_a_layer_scale_that_mean_abs_w_prunes_first() -> None:
    model, space = hand_set_resnet20()
    with torch.no_grad():
        model.get_submodule("layer2.0.conv1").weight.mul_(0.001)  # a whole layer at a small scale
        model.get_submodule("layer3.0.conv1").weight[::2] = 0.01  # half of a layer's filters weak within it
    expected, regime = at(space, layer3_0_conv1=32)
    layer = slot_widths(layer_l1_spec(model, space, regime))
    assert np.array_equal(layer_l1_spec(model, space, regime).widths, expected)
    assert layer["layer2.0.conv1"] == 32
    mean_abs = slot_widths(global_l1_spec(model, space, regime))
    # mean |w| ranks the small-scale layer's channels first and reaches the target before the weak filters
    assert mean_abs["layer2.0.conv1"] < 32 and mean_abs["layer3.0.conv1"] == 64


@pytest.mark.parametrize("arch,hw,chans", [("resnet20", (28, 28), 1), ("resnet50", (224, 224), 3),
                                           ("mobilenetv2", (224, 224), 3)])
def test_every_baseline_lands_within_the_final_band(arch: str, hw: tuple[int, int], chans: int) -> None:
    model = randomise_bn(build(default_spec(arch, in_chans=chans, num_classes=10)))
    space = PruningSpace(model.spec, input_hw=hw)
    specs = baseline_specs(model, space, Regime(0.5, 0.01))
    assert list(specs) == ["uniform", "global_l1", "layer_l1", "bn_gamma"]
    fractions = space.stats(np.array([s.widths for s in specs.values()])).flops_fraction
    assert np.all(np.abs(fractions - 0.5) <= FINAL_BAND), dict(zip(specs, fractions, strict=True))
    floor = space.widths(np.full((1, len(space.groups)), space.r_min))[0]
    for spec in specs.values():
        assert np.all(np.asarray(spec.widths) >= floor) and np.all(np.asarray(spec.widths) % space.round_to == 0)
    assert specs["uniform"] == uniform_spec(space, Regime(0.5, 0.01))


# -- warm-up -----------------------------------------------------------------------------------------------------
def test_the_warm_up_is_capped_at_a_tenth_of_the_run() -> None:
    assert warmup_steps(100, 93) == 9 and warmup_steps(100, 1560) == 100 and warmup_steps(100, 5) == 0
    lrs = [_lr_at(step, 93, 0.1, warmup_steps(100, 93)) for step in range(93)]  # --quick's parent: 93 steps
    assert lrs[8] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)  # the warm-up ends at step 9 ...
    assert all(a >= b for a, b in zip(lrs[8:-1], lrs[9:], strict=True)) and lrs[-1] < 0.01  # ... then the cosine decays


def test_train_uses_the_capped_warm_up(monkeypatch: pytest.MonkeyPatch, single_thread: None) -> None:
    seen: list[int] = []

    def spy(step: int, total: int, base: float, warmup: int) -> float:
        seen.append(warmup)
        return _lr_at(step, total, base, warmup)

    monkeypatch.setattr(train_mod, "_lr_at", spy)
    data = Split(np.random.default_rng(0).integers(0, 256, (80, 28, 28), dtype=np.uint8), np.arange(80) % 10)
    model = build(default_spec("resnet20", in_chans=1, num_classes=10))
    train(model, data, TrainConfig(epochs=1, batch_size=8, warmup_steps=100), 0)
    assert len(seen) == 2 * 10 and set(seen) == {1}  # 10 steps x 2 parameter groups: a 1-step warm-up, not 100


# -- seeding and the noise floor (toy task) ----------------------------------------------------------------------
@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._loaded, "toy", toy_task.TASK)


def toy_search(out: Path, **values) -> list[dict]:
    cfg = SearchConfig("toy", **{"samples": 8, "refined_samples": 4, "band": 0.02, **values})
    run_search(cfg, out, workers=1, threads=1, show_progress=False)
    with Store.open(out, None, readonly=True) as s:
        return s.rows()


def test_seeding_common_by_default_per_candidate_on_request(toy: None, tmp_path: Path) -> None:
    common = toy_search(tmp_path / "common")
    searched = [r for r in common if r["space"] != "noise"]
    assert {r["seed"] for r in searched} == {derive_seed(0, "eval")}
    assert json.loads((tmp_path / "common" / "config.json").read_text())["seeding"] == "common"
    again = toy_search(tmp_path / "again")
    assert [(r["spec_hash"], r["error"]) for r in again] == [(r["spec_hash"], r["error"]) for r in common]
    own = [r for r in toy_search(tmp_path / "own", seeding="per-candidate") if r["space"] != "noise"]
    assert len({r["seed"] for r in own}) == len(own)
    assert own[0]["seed"] == derive_seed(0, "eval", "initial", 0.5, 0)


def test_noise_floor_specs_spread_from_best_to_worst(toy: None, tmp_path: Path) -> None:
    rows = toy_search(tmp_path / "run", noise_specs=3, noise_seeds=2)
    initial = sorted((r for r in rows if r["space"] == "initial"), key=lambda r: (r["error"], r["id"]))
    with Store.open(tmp_path / "run", None, readonly=True) as s:
        floor = s.noise_floor(0.5)
    picked = [initial[i]["spec_hash"] for i in (0, 4, 7)]  # best, median (index round(3.5)), worst of 8
    seeds = [derive_seed(0, "noise", k) for k in range(2)]
    assert [(h, seed) for h, seed, _ in floor] == [(h, seed) for h in picked for seed in seeds]
    off = toy_search(tmp_path / "off", noise_specs=0)
    assert not [r for r in off if r["space"] == "noise"]


def test_refine_by_stage_constrains_the_per_stage_ratios(toy: None, tmp_path: Path) -> None:
    """--refine-by stage: the per-stage R* of the initial population's best becomes the refined space's constraint,
    recorded with the run and read back as the same constraint."""
    from pruneopt.space import constraint_from_dict

    rows = toy_search(tmp_path / "run", refine_by="stage")
    with Store.open(tmp_path / "run", None, readonly=True) as s:
        band = s.stage("rstar_stage:0.5")
        sampled = s.stage("sampled:refined:0.5")
    assert band is not None and len(band["r_star"]) == 3 and len(band["eps"]) == 3  # resnet20: three stages
    assert [c["type"] for c in sampled["constraints"]] == ["stage_ratio"]
    refined = [r for r in rows if r["space"] == "refined"]
    assert len(refined) == 4
    constraint = constraint_from_dict(sampled["constraints"][0])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["refine_by"] == "stage"
    assert constraint.r_star == tuple(band["r_star"])


def test_preflight_warns_when_no_uniform_width_lands_in_the_final_band(caplog: pytest.LogCaptureFixture) -> None:
    """resnet18 rounds widths to 8: the closest uniform width is at 0.508 of the FLOPs, outside +-0.005 (said
    before any training); resnet20 (no rounding) reaches 0.501 and is not warned about."""
    from pruneopt.models import default_spec
    from pruneopt.search import check_space
    from pruneopt.search_config import SearchConfig

    with caplog.at_level("WARNING", logger="pruneopt.search"):
        check_space(SearchConfig(arch="resnet18", regimes=(0.5,), samples=4, refined_samples=4),
                    default_spec("resnet18", in_chans=3, num_classes=10))
    assert [r.getMessage() for r in caplog.records] == [
        "regime 0.5: no uniform width lands within +-0.005 of the FLOPs (closest 0.508, widths rounded to 8); its "
        "final will be labelled as outside the band"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pruneopt.search"):
        check_space(SearchConfig(arch="resnet20", regimes=(0.5,), samples=4, refined_samples=4),
                    default_spec("resnet20", in_chans=1, num_classes=10))
    assert caplog.records == []
