"""``pruneopt search`` and ``pruneopt analyze``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import PruneoptError
from ..models import ModelSpec
from ..search import OUTLIER_MODES, TASKS, SearchConfig, run_search
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
    "finetune_steps": (int, "Steps of each candidate's fine-tune: SGD for classification [60; quick 20], "
                            "unsupervised TMP for reid [100; quick 20]."),
    "parent_epochs": (int, "Classification: epochs to train the parent when no --parent is given [4; quick 1]."),
    "bn_batches": (int, "Classification: training batches that recalibrate each candidate's batch norm "
                        "[8; quick 5]."),
    "batch_size": (int, "Classification: batch size of the parent's training and of the final fine-tunes [128]."),
    "final_epochs": (int, "Classification: epochs of the final fine-tune of the winner and the baselines "
                          "[2; quick 1]."),
    "val_size": (int, "Classification: validation images that score each candidate [2000; quick 1000]."),
    "train_limit": (int, "Classification: use only the first N training images [all; quick 12000]."),
    "finetune_rounds": (int, "Reid: cluster-and-train rounds of each candidate's fine-tune [1]."),
    "final_steps": (int, "Reid: TMP steps of the final fine-tune of the winner and the baselines [400; quick 60]."),
    "final_rounds": (int, "Reid: cluster-and-train rounds of the final fine-tune [4; quick 2]."),
    "k1": (int, "Reid clustering: k of the k-reciprocal neighbours [30]."),
    "k2": (int, "Reid clustering: neighbours of the local query expansion [6]."),
    "cluster_eps": (float, "Reid clustering: DBSCAN eps on the Jaccard distance [0.6]."),
}


def _tunable_options(f):  # noqa: ANN001, ANN202
    for name, (typ, help_) in reversed(list(_TUNABLES.items())):
        f = click.option("--" + name.replace("_", "-"), name, type=typ, default=None, help=help_)(f)
    return f


def _pair(text: str | None, option: str, what: str) -> tuple[int, int] | None:
    """``'256x128'`` -> ``(256, 128)``; a one-line error otherwise."""
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(x.strip().isdigit() for x in parts):
        raise PruneoptError(f"{option} must look like {what}, got {text!r}")
    return int(parts[0]), int(parts[1])


@cli.command("search")
@click.option("--task", type=click.Choice(TASKS), default="classification", show_default=True,
              help="classification: Fashion-MNIST, top-1 error. reid: person re-ID, 1 - mAP after an unsupervised "
                   "fine-tune (needs --data DIR and --parent).")
@click.option("--arch", default=None,
              help="Parent architecture [classification: resnet20; reid: the --parent's].")
@click.option("--data", default=None,
              help="classification: fashion-mnist (the default). reid: a re-ID dataset folder (Market-1501 layout: "
                   "bounding_box_train/, bounding_box_test/, query/); the finals are scored on its query/gallery.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Classification: folder with the Fashion-MNIST files (default: $PRUNEOPT_DATA, "
                   "/usr/share/datasets, the user cache).")
@click.option("--val-data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Reid: a dataset folder that scores the candidates (fine-tune on its training images, mAP on its "
                   "query/gallery) [--data: then the winner is selected on the final query/gallery, as the report "
                   "says].")
@click.option("--regimes", default="0.5", show_default=True,
              help="Comma-separated FLOPs regimes (fractions of the parent's FLOPs); the first is the primary.")
@click.option("--parent", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A trained parent (spec.json + weights.safetensors folder) [classification: train one in the run]. "
                   "Required for reid: a backbone, e.g. from `python bench/tmp_train.py pretrain`, an earlier "
                   "winner, or a `reidserve train` model folder.")
@click.option("--size", default=None, metavar="HxW",
              help="Reid: input height x width of the FLOPs count and of every fine-tune [256x128].")
@click.option("--reid-batch", default=None, metavar="PxK",
              help="Reid: P pseudo-identities x K images per fine-tune batch [16x4; quick 8x4].")
@click.option("--outliers", type=click.Choice(OUTLIER_MODES), default=None,
              help="Reid clustering: drop DBSCAN outliers or keep each as its own identity [drop].")
@_tunable_options
@click.option("--latency", is_flag=True, help="Also measure each candidate's ONNX Runtime CPU latency.")
@click.option("--quick", is_flag=True,
              help="Small populations and short fine-tunes (classification: about 10 minutes on 2 cores).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder (runs/NAME); re-running the same command resumes it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Candidates evaluated in parallel (processes, or Ray actors).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch threads of each worker and, when given, of this process's own training "
                   "[cores / workers; all cores]. Equal settings give identical results.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address (e.g. auto); default: start a local Ray.")
@click.option("--device", default="cpu", show_default=True,
              help="Reid: device of the fine-tunes (cpu or cuda[:N]); a runtime choice, not part of the config.")
@click.option("--no-progress", is_flag=True, help="No progress bars: print each stage's result on stderr instead.")
def search_cmd(task, arch, data, data_dir, val_data, regimes, parent, size, reid_batch, outliers, latency, quick,  # noqa: ANN001
               out, workers, threads, backend, address, device, no_progress, **tunables) -> None:
    """Search a pruning space: evaluate populations of subnetworks, find the winning FLOPs/params ratio R*,
    refine the space around it, and deliver a winner (runs/NAME/winner) with a report.

    --task classification (default) scores candidates by top-1 validation error on Fashion-MNIST. --task reid
    scores them by 1 - mAP after a short unsupervised TMP fine-tune (pseudo-labels from k-reciprocal Jaccard +
    DBSCAN clustering) on a re-ID dataset's training images, on its query/gallery (--val-data's if given, else
    --data's); the winner and the two baselines (uniform width, global L1) get the same longer fine-tune and
    report test mAP on --data's query/gallery. Reid needs --parent (a trained backbone) and counts FLOPs at --size.

    \b
    pruneopt search --arch resnet20 --data fashion-mnist --regimes 0.5 --samples 64 --out runs/r20 --workers 2
    pruneopt search --quick --out runs/demo
    pruneopt search --task reid --data runs/synth200_64x32 --parent runs/src_r18 --size 64x32 --quick \\
        --out runs/reid_demo --workers 2 --threads 1
    """
    try:
        regime_list = tuple(float(x) for x in regimes.split(",") if x.strip())
    except ValueError:
        raise PruneoptError(f"--regimes must be comma-separated numbers, got {regimes!r}") from None
    overrides = {k: v for k, v in tunables.items() if v is not None}
    if task == "reid":
        if data is None or data == "fashion-mnist":
            raise PruneoptError("--task reid needs --data DIR: a re-ID dataset folder (Market-1501 layout: "
                                "bounding_box_train/, bounding_box_test/, query/)")
        if not Path(data).is_dir():
            raise PruneoptError(f"--data {data}: not a folder (--task reid needs a re-ID dataset folder)")
        data = str(Path(data).resolve())
        if arch is None and parent is not None:
            arch = ModelSpec.load(parent / "spec.json").arch
    elif data is not None and data != "fashion-mnist":
        raise PruneoptError(f"--data {data!r}: --task classification knows fashion-mnist only (a re-ID dataset "
                            "folder needs --task reid)")
    elif device != "cpu":
        raise PruneoptError("--device applies to --task reid only (classification trains on the CPU)")
    for name, value in (("size", _pair(size, "--size", "HxW, e.g. 256x128")),
                        ("reid_batch", _pair(reid_batch, "--reid-batch", "PxK, e.g. 16x4")),
                        ("outliers", outliers), ("val_data", str(val_data.resolve()) if val_data else None),
                        ("arch", arch), ("data", data)):
        if value is not None:
            overrides[name] = value
    overrides.update(task=task, regimes=regime_list, latency=latency, parent=str(parent.resolve()) if parent else None)
    cfg = SearchConfig.quick(**overrides) if quick else SearchConfig(**overrides)
    summary = run_search(cfg, out, workers=workers, backend=backend, address=address, threads=threads,
                         data_dir=str(data_dir) if data_dir else None, show_progress=not no_progress, echo=True,
                         device=device)
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
    reid = summary.get("task") == "reid"
    for name in ("winner", "uniform", "global_l1"):
        f = finals.get(name)
        if f:
            figure = (f"test mAP {1 - f['test_error']:.4f}" if reid else f"test accuracy {1 - f['test_error']:.4f}")
            click.echo(f"{name:>10}: {figure} at {f['flops_fraction']:.3f} of the parent's FLOPs "
                       f"(R = {f['ratio']:.1f})")
    for key, v in (summary.get("regimes") or {}).items():
        rs, c = v.get("r_star") or {}, v.get("compare") or {}
        if rs:
            click.echo(f"regime {key}: R* = {rs['r_star']:.1f} [{rs['ci_low']:.1f}, {rs['ci_high']:.1f}]"
                       + (f"; search cost refined/initial {c['cost_ratio']:.2f}, KS p = {c['ks_pvalue']:.3g}"
                          if c and c.get("cost_ratio") is not None else ""))
    selection = summary.get("selection") or {}
    if selection.get("same_query_gallery"):
        click.echo(f"note: {selection['note']}")
    click.echo(f"report: {out / 'report.md'}")
