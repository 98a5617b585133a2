"""``pruneopt search`` and ``pruneopt analyze``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..baselines import FINAL_LABELS
from ..devices import default_workers, resolve_device
from ..errors import PruneoptError
from ..report import render_report
from ..search import run_search
from ..search_config import SearchConfig, misplaced_message
from ..store import Store
from ..tasks.registry import available_tasks, get_task
from ..tasks.sections import CommonConfig, field_names, option_name
from .task_options import TaskOptionsCommand

RUNTIME_DEFAULTS: dict[str, Any] = {"data_dir": None, "device": "auto", "loader_workers": None}  # some tasks use


def default_loader_workers() -> int:
    """Image-decoding processes when --loader-workers is not given: the cores but one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))


@click.command("search", cls=TaskOptionsCommand)
@click.option("--quick", is_flag=True,
              help="The quick preset: small populations and short fine-tunes (classification: about 10 minutes on "
                   "2 cores); each option's help shows its quick value.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder (runs/NAME); re-running the same command resumes it.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where a named data set's files are (classification: --data fashion-mnist, cifar10, cifar100), "
                   "and only there; default for Fashion-MNIST: $PRUNEOPT_DATA, /usr/share/datasets, the user cache.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Candidates evaluated in parallel (processes, or Ray actors) [1; one per visible GPU with "
                   "--device cuda].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads of each worker and, when given, of this process's own training "
                   "[cores / workers; all cores]. Equal settings give identical results.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray.")
@click.option("--device", default=RUNTIME_DEFAULTS["device"], show_default=True, metavar="auto|cpu|cuda|cuda:N",
              help="Where training runs: auto (cuda when torch sees a GPU), cpu, cuda (each worker on its own GPU: "
                   "bf16 or fp16 autocast, channels-last) or cuda:N; a runtime choice, not part of the config.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=None,
              help="Processes decoding and augmenting image files (image folders) [cores - 1, at most 8; 0: in the "
                   "training process].")
@click.option("--force", is_flag=True, help="Go on when the parent's validation error is near chance.")
@click.option("--no-progress", is_flag=True, help="No progress bars: print each stage's result on stderr instead.")
def search_cmd(task: str, quick: bool, out: Path, data_dir: Path | None, workers: int | None, threads: int | None,
               backend: str, address: str | None, device: str, loader_workers: int | None, force: bool,
               no_progress: bool, **config_values: Any) -> None:
    """Search a pruning space: evaluate populations of subnetworks, find the winning FLOPs/params ratio R*,
    refine the space around it, and deliver a winner (runs/NAME/winner) with a report.

    --task names what a candidate's error is (see --task below); the winner, the initial space's best (random
    search + adaptive BN, EagleEye-style) and the baselines (uniform width, global mean-|w| L1, layer-normalised L1,
    BN gamma), each within 0.005 of the primary regime's FLOPs where one lands there, get the same final fine-tune
    and are scored once on
    the task's test data. Every candidate is fine-tuned with one seed and one data order (--seeding).

    \b
    pruneopt search --arch resnet20 --data fashion-mnist --regimes 0.5 --samples 64 --out runs/r20 --workers 2
    pruneopt search --quick --out runs/demo
    an image folder (ROOT/train/CLASS/*.jpg + ROOT/val/CLASS/*.jpg, or one ROOT/CLASS/* tree):
      pruneopt search --data ~/data/flowers --arch resnet18 --out runs/flowers
    CIFAR-10/100 in its python-pickle folder:
      pruneopt search --data cifar10 --data-dir ~/data/cifar-10-batches-py --arch resnet56 --out runs/c10
    your own trained network, a torchvision-named state dict (head replaced when the classes differ):
      pruneopt search --data ~/data/flowers --parent resnet18-f37072fd.pth --head-epochs 2 --out runs/fl-r18
    on the GPUs (one worker per visible GPU; Ray: --backend ray):
      pruneopt search --data ~/imagenet --parent resnet50.pth --device cuda --regimes 0.5 --out runs/r50
    """
    t = get_task(task)
    given = {name: value for name, value in config_values.items() if value is not None}
    stray = [name for name in given if name not in field_names(CommonConfig) and name not in field_names(t.section)]
    if stray:
        raise PruneoptError(misplaced_message(stray, task))
    runtime = {"data_dir": data_dir, "device": device, "loader_workers": loader_workers}
    for name, value in runtime.items():
        if value != RUNTIME_DEFAULTS[name] and name not in t.runtime_options:
            users = [n for n in available_tasks() if name in get_task(n).runtime_options]
            raise PruneoptError(f"{option_name(name)} applies to --task {' or '.join(users)} only")
    values = t.from_command_line(given)
    cfg = SearchConfig.preset("quick", task, **values) if quick else SearchConfig(task, **values)
    device = resolve_device(device) if device == "auto" else device  # checked against torch by run_search
    summary = run_search(cfg, out, workers=workers or default_workers(device), backend=backend, address=address,
                         threads=threads, data_dir=str(data_dir) if data_dir else None, show_progress=not no_progress,
                         echo=True, device=device, force=force,
                         loader_workers=default_loader_workers() if loader_workers is None else loader_workers)
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
    for name in FINAL_LABELS:
        f = finals.get(name)
        if f:
            click.echo(f"{name:>12}: test {task.score_name} {1 - f['test_error']:.4f} at {f['flops_fraction']:.3f} "
                       f"of the parent's FLOPs (R = {f['ratio']:.1f})" + (" = the winner" if f.get("same_as") else ""))
    for key, v in (summary.get("regimes") or {}).items():
        rs, c = v.get("r_star") or {}, v.get("compare") or {}
        if rs:
            click.echo(f"regime {key}: R* = {rs['r_star']:.1f} [{rs['ci_low']:.1f}, {rs['ci_high']:.1f}]"
                       + (f"; search cost refined/initial {c['cost_ratio']:.2f}, KS p = {c['ks_pvalue']:.3g}"
                          if c and c.get("cost_ratio") is not None else ""))
    for note in task.notes(summary):
        click.echo(f"note: {note}")
    click.echo(f"report: {out / 'report.md'}")
