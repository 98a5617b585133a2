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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .complexity import MACS, CostModel, count
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
    """Structure statistics of N subnetworks (arrays of length N)."""

    macs: np.ndarray
    params: np.ndarray
    activations: np.ndarray
    flops_fraction: np.ndarray

    @property
    def ratio(self) -> np.ndarray:
        """R = FLOPs / params."""
        return self.macs / self.params


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


def constraint_from_dict(data: dict[str, Any]) -> Constraint:
    if data.get("type") == "ratio":
        return RatioConstraint(float(data["r_star"]), float(data["eps"]))
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

    def stats(self, widths: np.ndarray) -> Stats:
        macs, params, acts = self._cost.evaluate(widths)
        return Stats(macs, params, acts, macs / self.parent_complexity.macs)

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
