"""``pruneopt search`` and ``pruneopt analyze``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import PruneoptError
from ..report import render_report
from ..search import run_search
from ..search_config import SearchConfig, misplaced_message
from ..store import Store
from ..tasks.registry import available_tasks, get_task
from ..tasks.sections import CommonConfig, field_names, option_name
from .task_options import TaskOptionsCommand

RUNTIME_DEFAULTS: dict[str, Any] = {"data_dir": None, "device": "cpu"}  # run-time options some tasks use


@click.command("search", cls=TaskOptionsCommand)
@click.option("--quick", is_flag=True,
              help="The quick preset: small populations and short fine-tunes (classification: about 10 minutes on "
                   "2 cores); each option's help shows its quick value.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder (runs/NAME); re-running the same command resumes it.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="For tasks that read their data from a folder (classification: the Fashion-MNIST files; default: "
                   "$PRUNEOPT_DATA, /usr/share/datasets, the user cache).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Candidates evaluated in parallel (processes, or Ray actors).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads of each worker and, when given, of this process's own training "
                   "[cores / workers; all cores]. Equal settings give identical results.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray.")
@click.option("--device", default=RUNTIME_DEFAULTS["device"], show_default=True,
              help="For tasks that fine-tune on a chosen device: cpu or cuda[:N]; a runtime choice, not part of the "
                   "config.")
@click.option("--no-progress", is_flag=True, help="No progress bars: print each stage's result on stderr instead.")
def search_cmd(task: str, quick: bool, out: Path, data_dir: Path | None, workers: int, threads: int | None,
               backend: str, address: str | None, device: str, no_progress: bool, **config_values: Any) -> None:
    """Search a pruning space: evaluate populations of subnetworks, find the winning FLOPs/params ratio R*,
    refine the space around it, and deliver a winner (runs/NAME/winner) with a report.

    --task names what a candidate's error is (see --task below); the winner and the two baselines (uniform width,
    global L1) get the same final fine-tune and are scored once on the task's test data.

    \b
    pruneopt search --arch resnet20 --data fashion-mnist --regimes 0.5 --samples 64 --out runs/r20 --workers 2
    pruneopt search --quick --out runs/demo
    """
    t = get_task(task)
    given = {name: value for name, value in config_values.items() if value is not None}
    stray = [name for name in given if name not in field_names(CommonConfig) and name not in field_names(t.section)]
    if stray:
        raise PruneoptError(misplaced_message(stray, task))
    runtime = {"data_dir": data_dir, "device": device}
    for name, value in runtime.items():
        if value != RUNTIME_DEFAULTS[name] and name not in t.runtime_options:
            users = [n for n in available_tasks() if name in get_task(n).runtime_options]
            raise PruneoptError(f"{option_name(name)} applies to --task {' or '.join(users)} only")
    values = t.from_command_line(given)
    cfg = SearchConfig.preset("quick", task, **values) if quick else SearchConfig(task, **values)
    summary = run_search(cfg, out, workers=workers, backend=backend, address=address, threads=threads,
                         data_dir=str(data_dir) if data_dir else None, show_progress=not no_progress, echo=True,
                         device=device)
    print_summary(summary, out)


@click.command("analyze")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print summary.json to stdout.")
def analyze_cmd(run: Path, as_json: bool) -> None:
    """Re-render a run's report (report.md, plots, summary.json) from its database alone."""
    with Store.open(run, None, readonly=True) as store:
        summary = render_report(store, run)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        print_summary(summary, run)


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """The finals, R* per regime and the task's caveats, in a few lines."""
    task = get_task(summary["task"])
    finals = summary.get("finals") or {}
    for name in ("winner", "uniform", "global_l1"):
        f = finals.get(name)
        if f:
            click.echo(f"{name:>10}: test {task.score_name} {1 - f['test_error']:.4f} at {f['flops_fraction']:.3f} of "
                       f"the parent's FLOPs (R = {f['ratio']:.1f})")
    for key, v in (summary.get("regimes") or {}).items():
        rs, c = v.get("r_star") or {}, v.get("compare") or {}
        if rs:
            click.echo(f"regime {key}: R* = {rs['r_star']:.1f} [{rs['ci_low']:.1f}, {rs['ci_high']:.1f}]"
                       + (f"; search cost refined/initial {c['cost_ratio']:.2f}, KS p = {c['ks_pvalue']:.3g}"
                          if c and c.get("cost_ratio") is not None else ""))
    for note in task.notes(summary):
        click.echo(f"note: {note}")
    click.echo(f"report: {out / 'report.md'}")
