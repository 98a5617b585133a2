"""``pruneopt search`` and ``pruneopt analyze``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import PruneoptError
from ..search import SearchConfig, run_search
from . import cli

# option name -> (type, help); None defaults mean "the config's default (or --quick's)"
_TUNABLES: dict[str, tuple[type, str]] = {
    "samples": (int, "Subnetworks sampled and evaluated per regime in the initial space [64; quick 16]."),
    "refined_samples": (int, "Fresh subnetworks per regime in the refined space [64; quick 16]."),
    "band": (float, "Absolute half-width of each regime [0.02]."),
    "seed": (int, "Seed of everything: sampling, training, bootstrap [0]."),
    "r_min": (float, "Smallest keep ratio of a group [0.2]."),
    "r_max": (float, "Largest keep ratio of a group [1.0]."),
    "round_to": (int, "Round widths to this multiple [architecture default: 1 CIFAR-style, 8 ImageNet-style]."),
    "eps": (float, "Refined space keeps |R - R*| <= eps R* [from the bootstrap: the best models' R range]."),
    "parent_epochs": (int, "Epochs to train the parent when no --parent is given [4; quick 1]."),
    "finetune_steps": (int, "SGD steps of each candidate's fine-tune [60; quick 20]."),
    "bn_batches": (int, "Training batches that recalibrate each candidate's batch norm [8; quick 5]."),
    "batch_size": (int, "Batch size of the parent's training and of the final fine-tunes [128]."),
    "final_epochs": (int, "Epochs of the final fine-tune of the winner and the baselines [2; quick 1]."),
    "val_size": (int, "Validation images that score each candidate [2000; quick 1000]."),
    "train_limit": (int, "Use only the first N training images [all; quick 12000]."),
}


def _tunable_options(f):  # noqa: ANN001, ANN202
    for name, (typ, help_) in reversed(list(_TUNABLES.items())):
        f = click.option("--" + name.replace("_", "-"), name, type=typ, default=None, help=help_)(f)
    return f


@cli.command("search")
@click.option("--arch", default="resnet20", show_default=True, help="Parent architecture.")
@click.option("--data", default="fashion-mnist", show_default=True, type=click.Choice(["fashion-mnist"]))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder with the dataset files (default: $PRUNEOPT_DATA, /usr/share/datasets, the user cache).")
@click.option("--regimes", default="0.5", show_default=True,
              help="Comma-separated FLOPs regimes (fractions of the parent's FLOPs); the first is the primary.")
@click.option("--parent", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A trained parent (spec.json + weights.safetensors folder); default: train one in the run.")
@_tunable_options
@click.option("--latency", is_flag=True, help="Also measure each candidate's ONNX Runtime CPU latency.")
@click.option("--quick", is_flag=True, help="Small populations and short training: a few minutes on 2 cores.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder (runs/NAME); re-running the same command resumes it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Candidates evaluated in parallel (processes, or Ray actors).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads of each worker and, when given, of this process's own training "
                   "[cores / workers; all cores]. Equal settings give identical results.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray.")
@click.option("--no-progress", is_flag=True, help="No progress bars: print each stage's result on stderr instead.")
def search_cmd(arch, data, data_dir, regimes, parent, latency, quick, out, workers, threads, backend, address,  # noqa: ANN001
               no_progress, **tunables) -> None:
    """Search a pruning space: evaluate populations of subnetworks, find the winning FLOPs/params ratio R*,
    refine the space around it, and deliver a winner (runs/NAME/winner) with a report.

    \b
    pruneopt search --arch resnet20 --data fashion-mnist --regimes 0.5 --samples 64 --out runs/r20 --workers 2
    pruneopt search --quick --out runs/demo
    """
    try:
        regime_list = tuple(float(x) for x in regimes.split(",") if x.strip())
    except ValueError:
        raise PruneoptError(f"--regimes must be comma-separated numbers, got {regimes!r}") from None
    overrides = {k: v for k, v in tunables.items() if v is not None}
    overrides.update(arch=arch, data=data, regimes=regime_list, latency=latency,
                     parent=str(parent.resolve()) if parent else None)
    cfg = SearchConfig.quick(**overrides) if quick else SearchConfig(**overrides)
    summary = run_search(cfg, out, workers=workers, backend=backend, address=address, threads=threads,
                         data_dir=str(data_dir) if data_dir else None, show_progress=not no_progress, echo=True)
    _print_summary(summary, out)


@cli.command("analyze")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout.")
def analyze_cmd(run: Path, as_json: bool) -> None:
    """Re-render a run's report (report.md, plots, summary.json) from its database alone."""
    from ..report import render_report
    from ..store import Store

    with Store.open(run, None, readonly=True) as store:
        summary = render_report(store, run)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary, run)


def _print_summary(summary: dict, out: Path) -> None:
    finals = summary.get("finals") or {}
    for name in ("winner", "uniform", "global_l1"):
        f = finals.get(name)
        if f:
            click.echo(f"{name:>10}: test accuracy {1 - f['test_error']:.4f} at {f['flops_fraction']:.3f} of the "
                       f"parent's FLOPs (R = {f['ratio']:.1f})")
    for key, v in (summary.get("regimes") or {}).items():
        rs, c = v.get("r_star") or {}, v.get("compare") or {}
        if rs:
            click.echo(f"regime {key}: R* = {rs['r_star']:.1f} [{rs['ci_low']:.1f}, {rs['ci_high']:.1f}]"
                       + (f"; search cost refined/initial {c['cost_ratio']:.2f}, KS p = {c['ks_pvalue']:.3g}"
                          if c and c.get("cost_ratio") is not None else ""))
    click.echo(f"report: {out / 'report.md'}")
