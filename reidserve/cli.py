"""``reidserve`` command line.

``main`` is a :class:`click.Group`; add commands with ``@main.command()`` in this module or
``main.add_command(cmd)`` elsewhere. User errors -- click usage errors, and ``ValueError`` /
``OSError`` raised by commands (e.g. :class:`reidserve.data.DatasetError`) -- are printed as one
line ``reidserve: error: ...`` on stderr with exit code 2, without a traceback. Set
``REIDSERVE_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["main", "ReidserveGroup", "EXIT_USAGE"]

EXIT_USAGE = 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ReidserveGroup(click.Group):
    """A click group that reports user errors as a single stderr line and exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        name = "reidserve"
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name or name,
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except click.exceptions.Abort:
            click.echo(f"{name}: aborted", err=True)
            rv, code = None, 1
        except click.ClickException as exc:
            click.echo(f"{name}: error: {_one_line(exc.format_message())}", err=True)
            rv, code = None, EXIT_USAGE
        except (ValueError, OSError) as exc:
            if os.environ.get("REIDSERVE_DEBUG"):
                raise
            click.echo(f"{name}: error: {_one_line(str(exc)) or type(exc).__name__}", err=True)
            rv, code = None, EXIT_USAGE
        else:
            code = rv if isinstance(rv, int) else 0
        if standalone_mode:
            sys.exit(code)
        return rv if code == 0 else code


@click.group(
    cls=ReidserveGroup, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.pass_context
def main(ctx: click.Context) -> None:
    """Person re-identification toolkit: data, training, evaluation and serving."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


class _PairParam(click.ParamType):
    """A ``(int, int)`` option parsed by ``module:function`` (imported only when the option is used)."""

    def __init__(self, name: str, parser: str) -> None:
        self.name, self._parser = name, parser

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        import importlib

        if isinstance(value, tuple):
            return value
        module, func = self._parser.split(":")
        try:
            return getattr(importlib.import_module(module, __package__), func)(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_SIZE = _PairParam("HxW", ".data.synth:parse_size")
_RANGE = _PairParam("N|MIN-MAX", ".data.synth:parse_range")
_BATCH = _PairParam("PxK", ".train:parse_batch")


@main.command()
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="output folder (new or empty)"
)
@click.option(
    "--ids",
    type=click.IntRange(2, 9999),
    default=100,
    show_default=True,
    help="number of identities (first half train, second half test)",
)
@click.option("--cams", type=click.IntRange(2, 9), default=6, show_default=True, help="number of cameras")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="random seed")
@click.option(
    "--imgs-per-id",
    type=_RANGE,
    default="6-10",
    show_default=True,
    help="images per identity per camera it appears in: N or MIN-MAX",
)
@click.option(
    "--min-cams",
    type=click.IntRange(min=2),
    default=2,
    show_default=True,
    help="each identity is seen by a random subset of MIN-CAMS..CAMS cameras",
)
@click.option("--size", type=_SIZE, default="128x64", show_default=True, help="image HEIGHTxWIDTH")
@click.option(
    "--distractors",
    type=click.IntRange(min=0),
    default=None,
    help="pid-0 distractor images in the gallery  [default: one per identity]",
)
@click.option(
    "--junk",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="pid -1 junk images (background crops) in the gallery",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="parallel processes (0 = one per CPU core); output is identical for any value",
)
@click.option("--overwrite", is_flag=True, help="replace images in a non-empty output folder")
def synth(
    out: str,
    ids: int,
    cams: int,
    seed: int,
    imgs_per_id: tuple[int, int],
    min_cams: int,
    size: tuple[int, int],
    distractors: int | None,
    junk: int,
    workers: int,
    overwrite: bool,
) -> None:
    """Generate a synthetic re-ID dataset in the Market-1501 layout."""
    from .data.synth import SynthConfig, generate

    if min_cams > cams:
        raise click.BadParameter(
            f"--min-cams {min_cams} is larger than --cams {cams}", param_hint="'--min-cams'"
        )
    cfg = SynthConfig(
        ids=ids,
        cams=cams,
        seed=seed,
        imgs_per_id=imgs_per_id,
        min_cams=min_cams,
        size=size,
        distractors=distractors,
        junk=junk,
    )
    t0 = time.perf_counter()
    res = generate(cfg, out, workers=workers or (os.cpu_count() or 1), overwrite=overwrite)
    total = res.num_train + res.num_query + res.num_gallery
    click.echo(
        f"wrote {total} images to {res.root} in {time.perf_counter() - t0:.1f}s: "
        f"train {res.num_train} ({res.num_train_ids} ids), query {res.num_query}, "
        f"gallery {res.num_gallery} ({res.num_test_ids} ids + distractors)"
    )


_DEVICE = click.Choice(["cpu", "cuda"])


@main.command()
@click.option("--data", required=True, type=click.Path(), help="dataset folder (Market-1501 layout, DukeMTMC, MSMT17)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder (created; resumed if it "
              "holds a checkpoint of the same configuration)")
@click.option("--arch", default=None, help="fresh backbone architecture  [default: resnet18]")
@click.option("--backbone", type=click.Path(), default=None,
              help="pruned winner folder (spec.json + weights.safetensors) instead of --arch")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=200, show_default=True, help="steps per epoch (per rank)")
@click.option("--batch", type=_BATCH, default="16x8", show_default=True,
              help="P pseudo-identities x K images per batch (each image gives two views)")
@click.option("--loss", type=click.Choice(["tmp", "centroid"]), default="tmp", show_default=True,
              help="tmp: all in-batch positives; centroid: single-positive cluster-centroid InfoNCE")
@click.option("--memory/--no-memory", default=False, show_default=True,
              help="with --loss tmp, add the cluster-centroid memory loss")
@click.option("--memory-weight", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="centroid memory update: c <- m c + (1 - m) batch mean")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--tmp-mode", type=click.Choice(["mean_log", "log_sum"]), default="mean_log", show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3.5e-4, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--step-size", type=click.IntRange(min=1), default=20, show_default=True, help="epochs per lr step")
@click.option("--gamma", type=click.FloatRange(0, 1, min_open=True), default=0.1, show_default=True)
@click.option("--size", type=_SIZE, default="256x128", show_default=True, help="input HEIGHTxWIDTH")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--k1", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--k2", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--eps", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.6, show_default=True,
              help="DBSCAN radius on the Jaccard distance")
@click.option("--min-samples", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--outliers", type=click.Choice(["drop", "singleton"]), default="drop", show_default=True,
              help="DBSCAN noise points: left out of training, or one pseudo-identity each")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch / FAISS CPU threads")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="data-loading processes")
@click.option("--device", type=_DEVICE, default="cpu", show_default=True)
@click.option("--eval-every", type=click.IntRange(min=1), default=1, show_default=True,
              help="evaluate on query/gallery every N epochs (and after the last)")
@click.option("--eval-batch", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--cache/--no-cache", default=True, show_default=True, help="keep decoded, resized images in memory")
@click.option("--progress/--no-progress", default=None, help="progress bars  [default: when stderr is a terminal]")
@click.option("--resume", is_flag=True, help="require a checkpoint in --out and continue it")
def train(
    data: str,
    out: str,
    arch: str | None,
    backbone: str | None,
    batch: tuple[int, int],
    size: tuple[int, int],
    resume: bool,
    **options: Any,
) -> None:
    """Unsupervised TMP training: extract, cluster (Jaccard + DBSCAN), train with all positives, repeat."""
    from .train import ReidTrainConfig
    from .train import train_reid as run_training

    if arch is None and backbone is None:
        arch = "resnet18"
    cfg = ReidTrainConfig(data=data, arch=arch, backbone=backbone, p=batch[0], k=batch[1], size=size, **options)
    result = run_training(cfg, out, resume=resume, log=lambda line: click.echo(line))
    last = result.last
    if last is not None and last.get("val"):
        click.echo(json.dumps({"epoch": last["epoch"], **{k: last["val"][k] for k in _EVAL_KEYS}}))


_EVAL_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")


@main.command("eval")
@click.option("--data", required=True, type=click.Path(), help="dataset folder with query/ and bounding_box_test/")
@click.option("--model", "model_path", type=click.Path(), default=None, help="run folder or re-ID model folder")
@click.option("--backbone", type=click.Path(), default=None,
              help="pruned winner / converted backbone folder, evaluated with a fresh GeM + BNNeck head")
@click.option("--arch", default=None, help="with --random: evaluate a randomly initialised backbone")
@click.option("--random", "random_init", is_flag=True, help="random initialisation (the 'before training' figure)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="seed of the fresh parts")
@click.option("--size", type=_SIZE, default=None, help="input HEIGHTxWIDTH  [default: the model's, or 256x128]")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=_DEVICE, default="cpu", show_default=True)
def eval_cmd(
    data: str,
    model_path: str | None,
    backbone: str | None,
    arch: str | None,
    random_init: bool,
    seed: int,
    size: tuple[int, int] | None,
    rerank: bool,
    as_json: bool,
    batch_size: int,
    threads: int | None,
    workers: int,
    device: str,
) -> None:
    """Evaluate a re-ID model on the query/gallery split: mAP, CMC rank-1/5/10, mINP.

    The model is a trained one (--model), a backbone folder with a fresh head (--backbone), or a randomly
    initialised network (--arch ARCH --random), the last two giving the "before training" figure.
    """
    import torch

    from .data import load_dataset
    from .model import HeadConfig, ReidModel, backbone_from_subnet, build_reid_model, load_reid_model
    from .train import evaluate_model

    if sum(x is not None for x in (model_path, backbone, arch)) != 1:
        raise click.UsageError("give one of --model PATH, --backbone DIR, or --arch ARCH --random")
    if random_init != (arch is not None):
        raise click.UsageError("--random goes with --arch (e.g. --arch resnet18 --random)")
    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda was asked for but torch sees no CUDA device")
    if threads is not None:
        torch.set_num_threads(threads)
    dataset = load_dataset(data)
    head = HeadConfig(input_size=size or (256, 128))
    if model_path is not None:
        model = load_reid_model(model_path, map_location=device)
    elif backbone is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ReidModel(backbone_from_subnet(backbone), head).to(device)
    else:
        assert arch is not None
        model = build_reid_model(arch, head, seed=seed).to(device)
    metrics = evaluate_model(
        model.eval(),
        dataset,
        size=size or model.head.input_size,
        batch_size=batch_size,
        device=device,
        workers=workers,
        rerank=rerank,
    )
    assert metrics is not None
    if as_json:
        click.echo(json.dumps({k: getattr(metrics, k) for k in _EVAL_KEYS}))
    else:
        click.echo(str(metrics))


from . import cli_serve  # noqa: E402,F401  (registers serve / query / demo-gallery on main)

if __name__ == "__main__":
    # ``python -m reidserve.cli``: run the package module's group, which holds every command
    from reidserve.cli import main as _main

    _main()
