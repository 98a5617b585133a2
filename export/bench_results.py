"""What a benchmark measured: the models (:class:`BenchModel`), one :class:`Cell` per (model, runtime, batch), and
:class:`BenchResult` with its JSON, markdown table and plot."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BenchModel", "BenchResult", "Cell"]


@dataclass
class BenchModel:
    """A model under test and the artefacts each runtime needs."""

    label: str
    folder: Path | None = None  # subnetwork folder (torch runtimes)
    onnx: Path | None = None
    engine: Path | None = None
    input_shape: tuple[int, int, int] | None = None
    macs: int | None = None
    arch: str | None = None
    spec_hash: str | None = None
    normalize: bool = False


@dataclass
class Cell:
    """The measurement of one (model, runtime, batch)."""

    model: str
    runtime: str
    batch: int
    times_s: list[float] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None
    gpu_mem_mb: float | None = None
    error: str | None = None
    speedup_vs_first: float | None = None
    flops_ratio_vs_first: float | None = None
    throughput_vs_torch: float | None = None

    def _q(self, q: float) -> float | None:
        if not self.times_s:
            return None
        return float(np.quantile(np.asarray(self.times_s), q))

    @property
    def median_ms(self) -> float | None:
        return None if not self.times_s else statistics.median(self.times_s) * 1e3

    @property
    def p90_ms(self) -> float | None:
        v = self._q(0.9)
        return None if v is None else v * 1e3

    @property
    def p99_ms(self) -> float | None:
        v = self._q(0.99)
        return None if v is None else v * 1e3

    @property
    def throughput(self) -> float | None:
        m = self.median_ms
        return None if not m else self.batch / (m / 1e3)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(median_ms=self.median_ms, p90_ms=self.p90_ms, p99_ms=self.p99_ms, throughput=self.throughput,
                 iters=len(self.times_s))
        return d


@dataclass
class BenchResult:
    meta: dict[str, Any]
    models: list[BenchModel]
    cells: list[Cell]
    skipped: list[dict[str, str]]

    def cell(self, model: str, runtime: str, batch: int) -> Cell | None:
        return next((c for c in self.cells if (c.model, c.runtime, c.batch) == (model, runtime, batch)), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "models": [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(m).items()} for m in self.models],
            "results": [c.to_dict() for c in self.cells],
            "skipped": self.skipped,
        }

    def markdown(self) -> str:
        """The results as a markdown table, followed by the skipped runtimes."""
        multi = len(self.models) > 1
        has_torch = any(c.throughput_vs_torch is not None for c in self.cells)
        head = ["model", "runtime", "batch", "median ms", "p90 ms", "p99 ms", "img/s", "peak MB"]
        if has_torch:
            head.append("x torch (img/s)")
        if multi:
            head += [f"speedup vs {self.models[0].label}", "FLOPs ratio"]
        rows = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]

        def f(v: float | None, spec: str) -> str:
            return "-" if v is None else format(v, spec)

        for c in self.cells:
            mem = c.gpu_mem_mb if c.gpu_mem_mb is not None else c.peak_rss_mb
            row = [c.model, c.runtime, str(c.batch), f(c.median_ms, ".2f"), f(c.p90_ms, ".2f"), f(c.p99_ms, ".2f"),
                   f(c.throughput, ".1f"), f(mem, ".0f")]
            if c.error:
                row[3] = f"error: {c.error}"
            if has_torch:
                row.append(f(c.throughput_vs_torch, ".2f"))
            if multi:
                row += [f(c.speedup_vs_first, ".2f"), f(c.flops_ratio_vs_first, ".2f")]
            rows.append("| " + " | ".join(row) + " |")
        if self.skipped:
            rows.append("")
        for s in self.skipped:
            rows.append(f"skipped: {s['model']} on {s['runtime']}: {s['reason']}")
        return "\n".join(rows)

    def plot(self, path: str | Path) -> Path:
        """Throughput and median latency against batch size, one line per (model, runtime)."""
        import matplotlib  # lazy: plotting is optional and matplotlib takes a second to import

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # lazy: matplotlib only when plots are drawn

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        keys = sorted({(c.model, c.runtime) for c in self.cells if c.times_s},
                      key=lambda k: ([m.label for m in self.models].index(k[0]), k[1]))
        for model, runtime in keys:
            cs = sorted((c for c in self.cells if (c.model, c.runtime) == (model, runtime) and c.times_s),
                        key=lambda c: c.batch)
            b = [c.batch for c in cs]
            ax1.plot(b, [c.throughput for c in cs], marker="o", label=f"{model} / {runtime}")
            ax2.plot(b, [c.median_ms for c in cs], marker="o", label=f"{model} / {runtime}")
        for ax, title, ylab in ((ax1, "throughput", "images / s"), (ax2, "median latency", "ms per batch")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylab)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
        ax1.set_yscale("log")
        ax2.set_yscale("log")
        ax1.legend(fontsize=7)
        shape = self.meta.get("input_shape")
        fig.suptitle(f"pruneopt bench: input {'x'.join(map(str, shape)) if shape else '?'}, "
                     f"{self.meta.get('threads')} threads, {self.meta.get('machine', '')}", fontsize=9)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out
