"""The bucket question: does a per-stage FLOPs/params ratio predict a subnetwork's error better than the global one?

A *stage* ("bucket") is the layers of one resolution (:class:`pruneopt.space.StageCostModel`). For each subnetwork
this module gives the candidate predictors of its error:

* ``global R`` -- FLOPs / params of the whole network;
* ``params`` -- its parameter count (inside one FLOPs regime, R is almost 1 / params);
* ``per-stage R`` -- each stage's FLOPs / params. For plain convolution stages this is close to the stage's
  H x W whatever the widths (every 3x3 conv of a stage has the same MACs per weight; only batch-norm and 1x1
  projection weights move it), so its spread is tiny;
* ``per-stage widths`` -- each stage's output width (the architecture's stage slots);
* ``per-stage params share`` -- each stage's share of the parameters. The global R is the params-weighted mean of
  the stage R's, so with nearly constant stage R's this share is what the global R measures.

:func:`predictors` scores every predictor the same way: a linear model on the rank-transformed components (an
intercept plus one slope per component) fitted in k folds, and the Spearman correlation between its out-of-fold
predictions and the errors, with a one-sided permutation p-value (the whole cross-validation repeated on permuted
errors). A scalar gets its in-sample Spearman rho as well, a vector its best single component by |rho| with a
permutation p-value corrected for the number of components (the maximum |rho| over components under permutation).

:func:`stage_r_star` is the per-stage analogue of :func:`pruneopt.analysis.bootstrap_r_star`: the median per-stage
R of the best models, with bootstrap intervals and a suggested band per stage, for a
:class:`~pruneopt.space.StageRatioConstraint`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from .errors import PruneoptError
from .models import ModelSpec, get_arch
from .space import PruningSpace, StageCostModel

PREDICTORS = ("global R", "params", "per-stage R", "per-stage widths", "per-stage params share")


@dataclass(frozen=True)
class PredictorColumn:
    """One predictor: ``[n, k]`` values and the names of its ``k`` components."""

    values: np.ndarray
    components: tuple[str, ...]


def stage_ratios(space: PruningSpace, widths: np.ndarray) -> np.ndarray:
    """Per-stage R (a stage's FLOPs / its params) of each subnetwork, ``[n, stages]`` (stages: ``space.stages``)."""
    return space.stats(np.asarray(widths)).stage_ratio


def stage_widths(space: PruningSpace, widths: np.ndarray) -> np.ndarray:
    """The output width of every stage (the architecture's stage slots), ``[n, stages]``."""
    slots = get_arch(space.parent.arch).stage_slots()
    index = [space.slots.index(s) for s in slots.values()]
    return np.atleast_2d(np.asarray(widths))[:, index]


def _table(stage_cost: StageCostModel, stage_slots: dict[str, str], widths: np.ndarray, macs: np.ndarray,
           params: np.ndarray) -> dict[str, PredictorColumn]:
    w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
    s_macs, s_params = stage_cost.evaluate(w)
    index = [stage_cost.slots.index(s) for s in stage_slots.values()]
    return {
        "global R": PredictorColumn((macs / params)[:, None], ("R",)),
        "params": PredictorColumn(np.asarray(params, dtype=np.float64)[:, None], ("params",)),
        "per-stage R": PredictorColumn(s_macs / s_params, stage_cost.stages),
        "per-stage widths": PredictorColumn(w[:, index], tuple(stage_slots)),
        "per-stage params share": PredictorColumn(s_params / s_params.sum(axis=1, keepdims=True), stage_cost.stages),
    }


def predictor_table(space: PruningSpace, widths: np.ndarray) -> dict[str, PredictorColumn]:
    """Every predictor of :data:`PREDICTORS` for the subnetworks ``widths`` (``[n, slots]``) of ``space``."""
    st = space.stats(np.asarray(widths))
    return _table(space.stage_cost, get_arch(space.parent.arch).stage_slots(), widths, st.macs, st.params)


def predictor_table_from_specs(specs: Sequence[ModelSpec], input_hw: tuple[int, int] | None
                               ) -> dict[str, PredictorColumn]:
    """The same table for specs of one architecture and options (e.g. the candidates of a search's store)."""
    if not specs:
        raise PruneoptError("no subnetworks to tabulate")
    first = specs[0]
    cost = StageCostModel(first, input_hw)
    widths = np.array([[s.width_map()[slot] for slot in cost.slots] for s in specs], dtype=np.float64)
    s_macs, s_params = cost.evaluate(widths)
    return _table(cost, get_arch(first.arch).stage_slots(), widths, s_macs.sum(axis=1), s_params.sum(axis=1))


# -- scoring the predictors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictorRow:
    """How well one predictor ranks errors (see the module docstring)."""

    name: str
    components: tuple[str, ...]
    cv_spearman: float  # Spearman rho of out-of-fold predictions with the errors
    cv_pvalue: float  # one-sided permutation p-value of cv_spearman
    best_component: str  # the component with the largest in-sample |rho| (the only one for a scalar)
    spearman: float  # its in-sample Spearman rho with the errors (signed)
    spearman_pvalue: float  # two-sided permutation p-value, corrected for the number of components (max |rho|)
    n: int
    n_perm: int

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["components"] = list(self.components)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _standard_ranks(x: np.ndarray) -> np.ndarray:
    """Each column as mid-ranks, centred and scaled to unit SD (a constant column becomes zeros)."""
    r = np.apply_along_axis(sps.rankdata, 0, x)
    r -= r.mean(axis=0)
    sd = r.std(axis=0)
    return np.asarray(np.divide(r, sd, out=np.zeros_like(r), where=sd > 0))


def _cv_operator(z: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The ``[n, n]`` matrix mapping targets to out-of-fold least-squares predictions on ``[1, z]``."""
    n = z.shape[0]
    x = np.concatenate([np.ones((n, 1)), z], axis=1)
    h = np.zeros((n, n))
    for f in np.unique(folds):
        test, train = folds == f, folds != f
        xt = x[train]
        gram = xt.T @ xt + 1e-9 * np.eye(x.shape[1])
        h[np.ix_(test, train)] = x[test] @ np.linalg.solve(gram, xt.T)
    return h


def _column_spearman(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of every column of ``pred`` with the matching column of ``y`` (0 where ``pred`` is constant)."""
    rp = _standard_ranks(pred)
    ry = _standard_ranks(y)
    return np.asarray(np.mean(rp * ry, axis=0))


def predictors(errors: Sequence[float] | np.ndarray, table: dict[str, PredictorColumn], seed: int = 0,
               n_perm: int = 999, folds: int = 5) -> list[PredictorRow]:
    """Score every predictor of ``table`` against ``errors``, best (highest cross-validated rho) first."""
    e = np.asarray(errors, dtype=np.float64)
    n = e.size
    if n < 2 * folds:
        raise PruneoptError(f"scoring predictors with {folds} folds needs at least {2 * folds} subnetworks, got {n}")
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(np.arange(n) % folds)
    perms = np.stack([rng.permutation(n) for _ in range(n_perm)], axis=1)  # the same permutations for all
    y = sps.rankdata(e)
    y_perm = np.concatenate([y[:, None], y[perms]], axis=1)  # column 0: the observed order
    ry = _standard_ranks(y_perm)
    rows = []
    for name, col in table.items():
        v = np.asarray(col.values, dtype=np.float64).reshape(n, -1)
        if v.shape[1] != len(col.components):
            raise PruneoptError(f"predictor {name!r}: {v.shape[1]} columns but {len(col.components)} names")
        z = _standard_ranks(v)
        cv = _column_spearman(_cv_operator(z, fold_of) @ y_perm, y_perm)
        rho = z.T @ ry / n  # [components, 1 + n_perm]
        best = int(np.argmax(np.abs(rho[:, 0])))
        max_abs = np.max(np.abs(rho[:, 1:]), axis=0)
        rows.append(PredictorRow(
            name, col.components, float(cv[0]), float((1 + np.sum(cv[1:] >= cv[0])) / (1 + n_perm)),
            col.components[best], float(rho[best, 0]),
            float((1 + np.sum(max_abs >= abs(rho[best, 0]) - 1e-12)) / (1 + n_perm)), n, n_perm))
    return sorted(rows, key=lambda r: -r.cv_spearman)


# -- per-stage R* ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageRStar:
    """Per-stage R* (the median per-stage R of the best models) with bootstrap intervals and a band per stage."""

    stages: tuple[str, ...]
    r_star: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    range_low: tuple[float, ...]  # the best models' 10th / 90th percentile per stage (median over bootstraps)
    range_high: tuple[float, ...]
    n_best: int
    n: int
    confidence: float
    n_boot: int
    seed: int

    @property
    def suggested_eps(self) -> tuple[float, ...]:
        """Relative half-width of the best models' range per stage (at least 0.001, at most 0.5)."""
        return tuple(float(min(0.5, max(0.001, max(r - lo, hi - r) / r)))
                     for r, lo, hi in zip(self.r_star, self.range_low, self.range_high, strict=True))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        return {**d, "suggested_eps": list(self.suggested_eps)}


def stage_r_star(errors: Sequence[float] | np.ndarray, stage_ratios: np.ndarray, top: float = 0.1,
                 n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
                 stages: Sequence[str] | None = None) -> StageRStar:
    """Bootstrap per-stage R*: in each resample, the per-stage median R of the best ``top`` fraction of models."""
    e = np.asarray(errors, dtype=np.float64)
    r = np.asarray(stage_ratios, dtype=np.float64)
    if e.ndim != 1 or e.size == 0 or r.ndim != 2 or r.shape[0] != e.size:
        raise PruneoptError("stage_r_star needs n errors and an [n, stages] array of per-stage ratios")
    if not 0.0 < top <= 1.0:
        raise PruneoptError(f"top fraction must be in (0, 1], got {top}")
    names = tuple(stages) if stages is not None else tuple(f"stage{i + 1}" for i in range(r.shape[1]))
    n, k = e.size, max(1, int(round(top * e.size)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    order = np.argsort(e[idx], axis=1, kind="stable")[:, :k]
    best = r[np.take_along_axis(idx, order, axis=1)]  # [n_boot, k, stages]
    med = np.median(best, axis=1)
    lo_b, hi_b = np.quantile(best, 0.1, axis=1), np.quantile(best, 0.9, axis=1)
    a = (1 - confidence) / 2

    def tup(x: np.ndarray) -> tuple[float, ...]:
        return tuple(float(v) for v in x)

    return StageRStar(names, tup(np.median(med, axis=0)), tup(np.quantile(med, a, axis=0)),
                      tup(np.quantile(med, 1 - a, axis=0)), tup(np.median(lo_b, axis=0)),
                      tup(np.median(hi_b, axis=0)), k, n, confidence, n_boot, seed)
