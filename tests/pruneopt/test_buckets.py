"""Per-stage ("bucket") statistics, the predictor table, per-stage R* and the stage ratio constraint."""

from __future__ import annotations

import numpy as np
import pytest

from pruneopt.buckets import (
    PREDICTORS,
    PredictorColumn,
    predictor_table,
    predictor_table_from_specs,
    predictors,
    stage_r_star,
    stage_ratios,
    stage_widths,
)
from pruneopt.errors import PruneoptError
from pruneopt.models import get_arch
from pruneopt.space import PruningSpace, Regime, StageRatioConstraint, constraint_from_dict


@pytest.fixture(scope="module")
def space() -> PruningSpace:
    return PruningSpace(get_arch("resnet20").default_spec(in_chans=1), input_hw=(28, 28))


def test_stages_are_resolutions_and_sum_to_the_network(space: PruningSpace) -> None:
    assert space.stages == ("28x28", "14x14", "7x7")
    s = space.sample(50, Regime(0.5, 0.02), seed=0)
    st = s.stats
    assert st.stage_macs is not None and st.stage_params is not None
    np.testing.assert_array_equal(st.stage_macs.sum(axis=1), st.macs)
    np.testing.assert_array_equal(st.stage_params.sum(axis=1), st.params)
    # by hand for the parent (16/32/64): stage 3 holds the 7x7 convs (3x3: 32x64 + 5 x 64x64; 1x1 projection
    # 32x64), seven 64-channel batch norms, and the classifier (64 x 10 + 10 biases)
    convs = 9 * 32 * 64 + 5 * 9 * 64 * 64 + 32 * 64
    parent = space.stats(np.array(space.parent.widths))
    assert parent.stage_macs is not None and parent.stage_params is not None
    assert parent.stage_macs[0, 2] == 49 * convs + 640
    assert parent.stage_params[0, 2] == convs + 7 * 2 * 64 + 650
    # per-stage R of 3x3 conv stages sits just under the stage's H x W
    r = stage_ratios(space, s.widths)
    assert np.all(r[:, 0] < 784) and np.all(r[:, 0] > 0.95 * 784)
    assert np.all(r[:, 1] < 196) and np.all(r[:, 1] > 0.95 * 196)


def test_stage_widths_are_the_stage_slots(space: PruningSpace) -> None:
    s = space.sample(5, Regime(0.5, 0.02), seed=1)
    w = stage_widths(space, s.widths)
    for i, spec in enumerate(s.specs()):
        m = spec.width_map()
        assert list(w[i]) == [m["layer1"], m["layer2"], m["layer3"]]


def test_predictor_table_from_specs_equals_the_space_one(space: PruningSpace) -> None:
    s = space.sample(20, Regime(0.5, 0.02), seed=2)
    a = predictor_table(space, s.widths)
    b = predictor_table_from_specs(list(s.specs()), (28, 28))
    assert tuple(a) == PREDICTORS == tuple(b)
    for name in PREDICTORS:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-12)
        assert a[name].components == b[name].components
    np.testing.assert_allclose(a["global R"].values[:, 0], s.stats.ratio)
    np.testing.assert_allclose(a["per-stage params share"].values.sum(axis=1), 1.0)


def test_predictors_find_a_planted_stage_effect(space: PruningSpace) -> None:
    s = space.sample(120, Regime(0.5, 0.02), seed=3)
    table = predictor_table(space, s.widths)
    share3 = table["per-stage params share"].values[:, 2]
    rng = np.random.default_rng(0)
    errors = 0.1 - 0.05 * share3 + rng.normal(0, 0.002, share3.size)  # a bigger last stage is better
    rows = predictors(errors, table, seed=0, n_perm=199)
    by = {r.name: r for r in rows}
    assert by["per-stage params share"].cv_spearman > 0.8 and by["per-stage params share"].cv_pvalue == 1 / 200
    assert by["per-stage params share"].best_component == "7x7" and by["per-stage params share"].spearman < -0.8
    assert rows[0].cv_spearman == max(r.cv_spearman for r in rows)
    assert predictors(errors, table, seed=0, n_perm=199) == rows  # seeded


def test_predictors_see_nothing_in_noise() -> None:
    rng = np.random.default_rng(1)
    n = 80
    table = {"x": PredictorColumn(rng.normal(size=(n, 1)), ("x",)),
             "v": PredictorColumn(rng.normal(size=(n, 4)), ("a", "b", "c", "d"))}
    rows = predictors(rng.normal(size=n), table, seed=0, n_perm=499)
    assert all(r.cv_pvalue > 0.05 and r.spearman_pvalue > 0.05 for r in rows)
    with pytest.raises(PruneoptError, match="at least 10"):
        predictors(np.zeros(6), table, folds=5)


def test_stage_r_star_recovers_planted_stage_ratios() -> None:
    rng = np.random.default_rng(2)
    r = np.stack([rng.uniform(700, 790, 400), rng.uniform(180, 196, 400)], axis=1)
    errors = np.abs(r[:, 0] - 760) / 90 + np.abs(r[:, 1] - 185) / 16 + rng.normal(0, 0.01, 400)
    rs = stage_r_star(errors, r, top=0.1, n_boot=300, seed=0, stages=("a", "b"))
    assert abs(rs.r_star[0] - 760) < 10 and abs(rs.r_star[1] - 185) < 2
    assert all(lo <= x <= hi for lo, x, hi in zip(rs.ci_low, rs.r_star, rs.ci_high, strict=True))
    assert len(rs.suggested_eps) == 2 and rs.to_dict()["stages"] == ["a", "b"]
    assert stage_r_star(errors, r, 0.1, 300, seed=0, stages=("a", "b")) == rs


def test_stage_ratio_constraint_samples_inside_its_band_and_round_trips(space: PruningSpace) -> None:
    base = space.sample(400, Regime(0.5, 0.02), seed=4)
    star = tuple(float(x) for x in np.median(base.stats.stage_ratio, axis=0))
    c = StageRatioConstraint(star, (0.002, 0.002, 0.004))
    refined = space.with_constraints(c).sample(30, Regime(0.5, 0.02), seed=5)
    r = refined.stats.stage_ratio
    assert np.all(np.abs(r - np.array(star)) <= np.array(c.eps) * np.array(star))
    assert refined.acceptance_rate < base.acceptance_rate
    assert constraint_from_dict(c.to_dict()) == c
    assert StageRatioConstraint(star, 0.01).eps == (0.01, 0.01, 0.01)
    back = PruningSpace.from_dict(space.with_constraints(c).to_dict())
    assert back.constraints == (c,)
    with pytest.raises(PruneoptError, match="one R"):
        StageRatioConstraint((1.0, 2.0), (0.1,))
