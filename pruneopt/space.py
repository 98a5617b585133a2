"""Pruning spaces: which channels prune together, how much, and sampling subnetworks inside a FLOPs regime.

A :class:`PruningSpace` is defined around a *parent* spec. Its prunable groups are the parent's channel slots
(see :mod:`pruneopt.models.spec`), derived from the architecture's channel graph:

* each block-internal conv is its own group;
* channels tied by residual additions form one group per stage (with the stem where it feeds an identity path);
* MobileNetV2 expansion layers are free, projection outputs are tied per stage.

A subnetwork is a vector of keep ratios, one per group, in ``[r_min, r_max]``; widths are ``ratio * parent
width`` rounded to a multiple of ``round_to`` (8 for ImageNet-style nets, 1 for CIFAR-style). A :class:`Regime`
is a target fraction of the parent's FLOPs (MACs) with an absolute band, e.g. 0.5 +- 0.01. The sampler draws
i.i.d. uniform keep ratios and keeps those inside the band (and inside any attached :class:`Constraint`, such as
the ratio band of a refined space), in fixed-size batches from one seeded generator, so the same seed gives the
same samples and a longer run extends a shorter one.

Statistics come globally (FLOPs, params, R = FLOPs / params) and per *stage* -- the layers of one resolution, a
"bucket" (:class:`StageCostModel`) -- so that a refined space can constrain either the global R
(:class:`RatioConstraint`) or the vector of per-stage R's (:class:`StageRatioConstraint`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .complexity import MACS, PARAMS, CostModel, count, layer_terms
from .errors import PruneoptError
from .models import ModelSpec, get_arch

SAMPLE_BATCH = 16384


@dataclass(frozen=True)
class Group:
    """One prunable group: a channel slot, the layers that write and read it, and its keep-ratio range."""

    name: str
    kind: str
    channels: int  # width in the parent
    producers: tuple[str, ...]  # layers whose output channels are this group (convs, batch norms)
    consumers: tuple[str, ...]  # layers whose input channels are this group
    r_min: float
    r_max: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "channels": self.channels,
            "producers": list(self.producers),
            "consumers": list(self.consumers),
            "r_min": self.r_min,
            "r_max": self.r_max,
        }


def derive_groups(parent: ModelSpec, r_min: float = 0.0, r_max: float = 1.0) -> list[Group]:
    """The prunable groups of ``parent``'s architecture, in slot order."""
    arch = get_arch(parent.arch)
    widths = parent.width_map()
    producers: dict[str, list[str]] = {s: [] for s in arch.slots}
    consumers: dict[str, list[str]] = {s: [] for s in arch.slots}
    for layer in arch.layers(parent):
        if isinstance(layer.cout, str):
            producers[layer.cout].append(layer.name)
        if isinstance(layer.cin, str) and not (layer.depthwise or layer.kind == "bn"):
            consumers[layer.cin].append(layer.name)
    return [
        Group(info.name, info.kind, widths[info.name], tuple(producers[info.name]), tuple(consumers[info.name]),
              r_min, r_max)
        for info in arch.slot_info
    ]


@dataclass(frozen=True)
class Regime:
    """A FLOPs regime: subnetworks with ``fraction - band <= FLOPs / parent FLOPs <= fraction + band``."""

    fraction: float
    band: float = 0.01

    def __post_init__(self) -> None:
        if not (0.0 < self.fraction <= 1.0):
            raise PruneoptError(f"regime must be a fraction of the parent's FLOPs in (0, 1], got {self.fraction}")
        if not (0.0 < self.band < 1.0):
            raise PruneoptError(f"band must be in (0, 1), got {self.band}")

    @property
    def low(self) -> float:
        return self.fraction - self.band

    @property
    def high(self) -> float:
        return self.fraction + self.band

    def __str__(self) -> str:
        return f"{self.fraction:g} +- {self.band:g}"


@dataclass(frozen=True)
class Stats:
    """Structure statistics of N subnetworks (arrays of length N; per-stage ones ``[N, stages]``)."""

    macs: np.ndarray
    params: np.ndarray
    activations: np.ndarray
    flops_fraction: np.ndarray
    stage_macs: np.ndarray | None = None  # [N, stages]: MACs of each stage's layers (see StageCostModel)
    stage_params: np.ndarray | None = None

    @property
    def ratio(self) -> np.ndarray:
        """R = FLOPs / params."""
        return self.macs / self.params

    @property
    def stage_ratio(self) -> np.ndarray:
        """Per-stage R = a stage's FLOPs / its params, ``[N, stages]``."""
        if self.stage_macs is None or self.stage_params is None:
            raise PruneoptError("these statistics were computed without per-stage counts")
        return self.stage_macs / self.stage_params


class StageCostModel:
    """Vectorised MACs and params of each *stage* ("bucket"): the layers that compute at one resolution.

    A layer belongs to the stage of its output size; the stem joins the first stage (same resolution) and the
    classifier (a linear layer, no resolution) joins the last. Built from the same per-layer terms as
    :class:`~pruneopt.complexity.CostModel`, so the stages' counts sum to the network's. Stages are named by their
    resolution (``"28x28"``) in the order the network runs them.
    """

    def __init__(self, spec: ModelSpec, input_hw: tuple[int, int] | None = None) -> None:
        arch = get_arch(spec.arch)
        self.slots = arch.slots
        index = {s: i for i, s in enumerate(self.slots)}
        one = len(self.slots)
        layers = arch.layers(spec, input_hw)
        names: list[str] = []
        for layer in layers:
            name = f"{layer.out_hw[0]}x{layer.out_hw[1]}"
            if layer.kind != "linear" and name not in names:
                names.append(name)
        if not names:
            raise PruneoptError(f"{spec.arch} has no convolution stage")
        self.stages = tuple(names)
        self.q = np.zeros((len(names), 2, one + 1, one + 1))  # stage, (MACs, params), quadratic form
        for layer in layers:
            stage = len(names) - 1 if layer.kind == "linear" else names.index(f"{layer.out_hw[0]}x{layer.out_hw[1]}")
            for k, a, b, coef in layer_terms(layer):
                if k not in (MACS, PARAMS):
                    continue
                ia, fa = (index[a], 1) if isinstance(a, str) else (one, a)
                ib, fb = (index[b], 1) if isinstance(b, str) else (one, b)
                self.q[stage, k, min(ia, ib), max(ia, ib)] += coef * fa * fb

    def evaluate(self, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(MACs, params) of each stage, two ``[N, stages]`` float64 arrays, for an ``[N, slots]`` array of widths."""
        w = np.asarray(widths, dtype=np.float64)
        if w.ndim == 1:
            w = w[None, :]
        if w.shape[1] != len(self.slots):
            raise PruneoptError(f"expected {len(self.slots)} widths per row, got {w.shape[1]}")
        w1 = np.concatenate([w, np.ones((w.shape[0], 1))], axis=1)
        forms = np.einsum("ni,skij,nj->nsk", w1, self.q, w1)
        return forms[:, :, MACS], forms[:, :, PARAMS]


class Constraint(Protocol):
    """An extra condition on subnetworks, checked on their statistics (vectorised)."""

    def mask(self, stats: Stats) -> np.ndarray: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RatioConstraint:
    """``|R - R*| <= eps * R*``: the FLOPs-to-parameter ratio band of a refined space."""

    r_star: float
    eps: float

    def __post_init__(self) -> None:
        if self.r_star <= 0 or self.eps <= 0:
            raise PruneoptError(f"ratio constraint needs R* > 0 and eps > 0, got R*={self.r_star}, eps={self.eps}")

    def mask(self, stats: Stats) -> np.ndarray:
        return np.abs(stats.ratio - self.r_star) <= self.eps * self.r_star

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ratio", "r_star": self.r_star, "eps": self.eps}


@dataclass(frozen=True)
class StageRatioConstraint:
    """``|R_s - R*_s| <= eps_s * R*_s`` for every stage ``s``: the per-stage ("bucket") ratio band of a refined
    space. ``eps`` is one relative half-width for every stage or one per stage."""

    r_star: tuple[float, ...]
    eps: tuple[float, ...]

    def __init__(self, r_star: Sequence[float], eps: float | Sequence[float]) -> None:
        rs = tuple(float(r) for r in r_star)
        es = (float(eps),) * len(rs) if isinstance(eps, int | float) else tuple(float(e) for e in eps)
        if not rs or len(es) != len(rs):
            raise PruneoptError(f"a stage ratio constraint needs one R* per stage and one eps (or one per stage), "
                                f"got {len(rs)} R* and {len(es)} eps")
        if min(rs) <= 0 or min(es) <= 0:
            raise PruneoptError(f"stage ratio constraint needs every R* > 0 and eps > 0, got R*={rs}, eps={es}")
        object.__setattr__(self, "r_star", rs)
        object.__setattr__(self, "eps", es)

    def mask(self, stats: Stats) -> np.ndarray:
        r = stats.stage_ratio
        if r.shape[1] != len(self.r_star):
            raise PruneoptError(f"the constraint has {len(self.r_star)} stages, the space {r.shape[1]}")
        star, eps = np.array(self.r_star), np.array(self.eps)
        return np.all(np.abs(r - star) <= eps * star, axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "stage_ratio", "r_star": list(self.r_star), "eps": list(self.eps)}


def constraint_from_dict(data: dict[str, Any]) -> Constraint:
    if data.get("type") == "ratio":
        return RatioConstraint(float(data["r_star"]), float(data["eps"]))
    if data.get("type") == "stage_ratio":
        return StageRatioConstraint(data["r_star"], data["eps"])
    raise PruneoptError(f"unknown constraint {data!r}")


@dataclass
class Samples:
    """Accepted subnetworks of one sampling call, with their statistics and the acceptance rate."""

    space: PruningSpace
    widths: np.ndarray  # [n, groups] int64
    stats: Stats
    drawn: int  # ratio vectors drawn in all
    accepted: int  # of those, inside the regime and constraints (>= len(self): the last batch may overshoot)
    seed: int
    regime: Regime

    def __len__(self) -> int:
        return len(self.widths)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drawn if self.drawn else 0.0

    def spec(self, i: int) -> ModelSpec:
        return self.space.spec(self.widths[i])

    def specs(self) -> Iterator[ModelSpec]:
        for i in range(len(self)):
            yield self.spec(i)

    def records(self) -> Iterator[dict[str, Any]]:
        """One JSON-ready dict per subnetwork (the lines of ``pruneopt sample --out``)."""
        stage_slots = get_arch(self.space.parent.arch).stage_slots()
        slot_index = {s: i for i, s in enumerate(self.space.slots)}
        for i in range(len(self)):
            row = self.widths[i]
            yield {
                "index": i,
                "spec": self.spec(i).to_dict(),
                "macs": int(self.stats.macs[i]),
                "params": int(self.stats.params[i]),
                "activations": int(self.stats.activations[i]),
                "ratio": float(self.stats.ratio[i]),
                "flops_fraction": float(self.stats.flops_fraction[i]),
                "stage_widths": {st: int(row[slot_index[sl]]) for st, sl in stage_slots.items()},
            }


@dataclass
class PruningSpace:
    """Keep-ratio space around a parent spec; see the module docstring."""

    parent: ModelSpec
    r_min: float = 0.2
    r_max: float = 1.0
    round_to: int | None = None  # None: the architecture's default
    input_hw: tuple[int, int] | None = None  # None: the architecture's default input size
    constraints: tuple[Constraint, ...] = ()
    groups: list[Group] = field(init=False)

    def __post_init__(self) -> None:
        self.parent.validate()
        if not (0.0 < self.r_min <= self.r_max <= 1.0):
            raise PruneoptError(f"keep ratios need 0 < r_min <= r_max <= 1, got r_min={self.r_min}, r_max={self.r_max}")
        arch = get_arch(self.parent.arch)
        if self.round_to is None:
            self.round_to = arch.round_to
        if self.round_to < 1:
            raise PruneoptError(f"round_to must be >= 1, got {self.round_to}")
        self.groups = derive_groups(self.parent, self.r_min, self.r_max)
        self._full = np.array([g.channels for g in self.groups], dtype=np.float64)
        self._cost = CostModel(self.parent, self.input_hw)
        self.stage_cost = StageCostModel(self.parent, self.input_hw)
        self.parent_complexity = count(self.parent, self.input_hw)

    # -- basic maps --------------------------------------------------------------------------------------
    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def widths(self, ratios: np.ndarray) -> np.ndarray:
        """Keep ratios ``[N, groups]`` -> integer widths, rounded to ``round_to`` and clipped to the parent."""
        step = float(self.round_to)  # type: ignore[arg-type]
        w = np.rint(np.asarray(ratios) * self._full / step) * step
        lo = np.minimum(step, self._full)
        return np.clip(w, lo, self._full).astype(np.int64)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages ("buckets") of the per-stage statistics, named by resolution (see :class:`StageCostModel`)."""
        return self.stage_cost.stages

    def stats(self, widths: np.ndarray) -> Stats:
        macs, params, acts = self._cost.evaluate(widths)
        stage_macs, stage_params = self.stage_cost.evaluate(widths)
        return Stats(macs, params, acts, macs / self.parent_complexity.macs, stage_macs, stage_params)

    def spec(self, widths: Sequence[int] | np.ndarray) -> ModelSpec:
        return ModelSpec(
            arch=self.parent.arch,
            widths=tuple(int(w) for w in widths),
            in_chans=self.parent.in_chans,
            num_classes=self.parent.num_classes,
            last_stride=self.parent.last_stride,
            features_only=self.parent.features_only,
        )

    def with_constraints(self, *constraints: Constraint) -> PruningSpace:
        """The same space with extra constraints (e.g. the ratio band of a refined space)."""
        return PruningSpace(self.parent, self.r_min, self.r_max, self.round_to, self.input_hw,
                            self.constraints + tuple(constraints))

    def fraction_range(self) -> tuple[float, float]:
        """The smallest and largest FLOPs fraction any subnetwork of this space can have."""
        lo = self.widths(np.full((1, len(self.groups)), self.r_min))
        hi = self.widths(np.full((1, len(self.groups)), self.r_max))
        return float(self.stats(lo).flops_fraction[0]), float(self.stats(hi).flops_fraction[0])

    # -- sampling ----------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        regime: Regime,
        seed: int = 0,
        *,
        max_draws: int = 20_000_000,
        progress: Any = None,
    ) -> Samples:
        """Draw ``n`` subnetworks with i.i.d. uniform keep ratios, rejection-sampled into ``regime``.

        Deterministic by ``seed``: ratios come in batches of ``SAMPLE_BATCH`` from one generator, so the first
        ``m`` samples of a call with ``n > m`` are those of the call with ``m``. Raises :class:`PruneoptError` if
        the band lies outside what the space can reach, or if ``max_draws`` draws do not yield ``n``.
        ``progress``, if given, is called as ``progress(accepted, drawn)`` after each batch.
        """
        if n < 1:
            raise PruneoptError(f"number of samples must be >= 1, got {n}")
        lo, hi = self.fraction_range()
        if regime.high < lo or regime.low > hi:
            raise PruneoptError(
                f"regime {regime} of the parent's FLOPs is out of this space's reach: its subnetworks have "
                f"{lo:.3f} to {hi:.3f} (widen the band or change --r-min/--r-max)"
            )
        rng = np.random.default_rng(seed)
        draw = self._fast_draw()
        kept_w: list[np.ndarray] = []
        accepted = drawn = 0
        while accepted < n:
            # after a few batches, give up early when the budget cannot reach n at the observed acceptance
            hopeless = drawn >= 8 * SAMPLE_BATCH and (accepted == 0 or n * drawn / accepted > max_draws)
            if drawn >= max_draws or hopeless:
                raise PruneoptError(
                    f"only {accepted} of {n} subnetworks in regime {regime} after {drawn:,} draws (acceptance "
                    f"{accepted / drawn:.1e}, budget {max_draws:,} draws): the regime is in the tail of this "
                    f"space; {self._advice(regime)}"
                )
            w32, approx = draw(rng)
            drawn += SAMPLE_BATCH
            # float32 pre-filter with a margin, then the exact float64 count decides
            w = w32[(approx >= regime.low - 1e-4) & (approx <= regime.high + 1e-4)].astype(np.int64)
            frac = self._cost.macs(w) / self.parent_complexity.macs
            w = w[(frac >= regime.low) & (frac <= regime.high)]
            if self.constraints and len(w):
                st = self.stats(w)
                ok = np.ones(len(w), dtype=bool)
                for c in self.constraints:
                    ok &= c.mask(st)
                w = w[ok]
            if len(w):
                kept_w.append(w)
                accepted += len(w)
            if progress is not None:
                progress(min(accepted, n), drawn)
        widths = np.concatenate(kept_w)[:n]
        return Samples(self, widths, self.stats(widths), drawn, accepted, seed, regime)

    def _fast_draw(self) -> Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]:
        """A batch drawer: uniform keep ratios -> widths and approximate FLOPs fractions, all in float32.

        Widths are exact (small integers are exact in float32); the fractions carry ~1e-6 relative error, so the
        sampler pre-filters with a margin and re-counts the survivors exactly.
        """
        g, step = len(self.groups), float(self.round_to)  # type: ignore[arg-type]
        scale = ((self.r_max - self.r_min) * self._full / step).astype(np.float32)
        offset = (self.r_min * self._full / step).astype(np.float32)
        lo = np.minimum(step, self._full).astype(np.float32)
        hi = self._full.astype(np.float32)
        q = self._cost.q[MACS] / self.parent_complexity.macs
        quad = q[:g, :g].astype(np.float32)
        lin = (q[:g, g] + q[g, :g]).astype(np.float32)
        const = np.float32(q[g, g])

        def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            x = rng.random((SAMPLE_BATCH, g), dtype=np.float32)
            x *= scale
            x += offset
            np.rint(x, out=x)
            x *= np.float32(step)
            np.maximum(x, lo, out=x)
            np.minimum(x, hi, out=x)
            return x, np.einsum("ni,ni->n", x @ quad, x) + x @ lin + const

        return draw

    def _advice(self, regime: Regime) -> str:
        """What to change so that ``regime`` sits in the bulk of the space (a bisection on r_min / r_max)."""
        probe = np.random.default_rng(0).uniform(size=(2048, len(self.groups)))

        def median_fraction(lo: float, hi: float) -> float:
            return float(np.median(self._cost.macs(self.widths(lo + (hi - lo) * probe)))
                         / self.parent_complexity.macs)

        if self.constraints:
            return "widen the band or relax the constraints"
        if median_fraction(self.r_min, self.r_max) < regime.fraction:
            lo, hi = self.r_min, self.r_max
            for _ in range(20):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if median_fraction(mid, self.r_max) < regime.fraction else (lo, mid)
            return f"raise --r-min to about {hi:.2f} or widen the band"
        lo, hi = self.r_min, self.r_max
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if median_fraction(self.r_min, mid) > regime.fraction else (mid, hi)
        return f"lower --r-max to about {lo:.2f} or widen the band"

    # -- description -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent.to_dict(),
            "r_min": self.r_min,
            "r_max": self.r_max,
            "round_to": self.round_to,
            "input_hw": list(self.input_hw) if self.input_hw else None,
            "constraints": [c.to_dict() for c in self.constraints],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningSpace:
        hw = data.get("input_hw")
        return cls(
            ModelSpec.from_dict(data["parent"]),
            float(data.get("r_min", 0.2)),
            float(data.get("r_max", 1.0)),
            data.get("round_to"),
            (int(hw[0]), int(hw[1])) if hw else None,
            tuple(constraint_from_dict(c) for c in data.get("constraints", [])),
        )

    def table(self) -> list[dict[str, Any]]:
        """One row per group: name, kind, member layers, channels and the width range (after rounding)."""
        lo = self.widths(np.full((1, len(self.groups)), self.r_min))[0]
        hi = self.widths(np.full((1, len(self.groups)), self.r_max))[0]
        return [
            {**g.to_dict(), "round_to": self.round_to, "min_width": int(lo[i]), "max_width": int(hi[i])}
            for i, g in enumerate(self.groups)
        ]
