"""Statistics, tables and plots shared by the protocols of ``bench/claims.py``.

Every comparison is a difference of means over seeds with a paired t interval (the arms of one seed share
their random numbers) and a verdict that says plainly whether the interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "fmt_interval",
    "fmt_pm",
    "grouped_bar_plot",
    "markdown_table",
    "mean_sd",
    "paired_interval",
    "verdict",
]

METRICS = ("mAP", "rank1", "mINP")
METRIC_NAMES = {"mAP": "mAP", "rank1": "rank-1", "mINP": "mINP"}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of ``a - b`` over pairs with its t interval (``n - 1`` degrees of freedom); unbounded for one pair."""
    from scipy import stats  # scipy comes with scikit-learn; imported here to keep --help fast

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = int(d.size)
    diff = float(d.mean())
    if n < 2:
        return {"diff": diff, "lo": -math.inf, "hi": math.inf, "n": n, "method": "paired t"}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "n": n, "method": f"paired t, {n - 1} df"}


def verdict(interval: dict[str, Any], above: str, below: str, unclear: str) -> str:
    """``above`` when the interval lies above 0, ``below`` when below, else ``unclear``."""
    if interval["lo"] > 0:
        return above
    if interval["hi"] < 0:
        return below
    return unclear


def fmt_pm(mean: float, sd: float, scale: float = 100.0) -> str:
    """``mean ± sd`` in percent (two decimals)."""
    return f"{scale * mean:.2f} ± {scale * sd:.2f}"


def fmt_interval(iv: dict[str, Any], scale: float = 100.0) -> str:
    """``+d [lo, hi]`` in percentage points."""
    lo = "-inf" if math.isinf(iv["lo"]) else f"{scale * iv['lo']:+.2f}"
    hi = "inf" if math.isinf(iv["hi"]) else f"{scale * iv['hi']:+.2f}"
    return f"{scale * iv['diff']:+.2f} [{lo}, {hi}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def grouped_bar_plot(path: Path, title: str, conditions: Sequence[str], arms: Sequence[str],
                     stats: dict[tuple[str, str], dict[str, tuple[float, float]]],
                     reference: tuple[str, dict[str, float]] | None = None) -> None:
    """One panel per metric: bars of the mean (error bars: SD over seeds) per condition and arm, and a dashed
    line at ``reference`` (a label and a value per metric, e.g. the model before training) when given."""
    import matplotlib  # only needed for the plot; imported when one is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(5 * len(METRICS), 4))
    width = 0.8 / max(len(arms), 1)
    xs = np.arange(len(conditions))
    for ax, metric in zip(axes, METRICS, strict=True):
        for j, arm in enumerate(arms):
            vals = [stats.get((c, arm), {}).get(metric, (math.nan, 0.0)) for c in conditions]
            ax.bar(xs + (j - (len(arms) - 1) / 2) * width, [100 * v[0] for v in vals], width,
                   yerr=[100 * v[1] for v in vals], capsize=3, label=arm)
        if reference is not None:
            ax.axhline(100 * reference[1][metric], color="black", linestyle="--", linewidth=1, label=reference[0])
        ax.set_xticks(xs, conditions, rotation=15, fontsize=8)
        ax.set_title(METRIC_NAMES[metric] + " (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
