"""``reidserve train`` (unsupervised TMP training) and ``reidserve eval`` (Market-1501-protocol figures).

Both import the training stack (torch) only when they run, so the serving process and the other commands never
load it.
"""

from __future__ import annotations

import json
from typing import Any

import click

from pruneopt.common.params import HW, PXK
from pruneopt.common.threads import torch_threads

from ..data import load_dataset

__all__ = ["EVAL_KEYS", "eval_cmd", "train"]

EVAL_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")
_DEVICE = click.Choice(["cpu", "cuda"])


@click.command()
@click.option("--data", required=True, type=click.Path(), help="dataset folder (Market-1501 layout, DukeMTMC, MSMT17)")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="run folder (created; resumed if it "
              "holds a checkpoint of the same configuration)")
@click.option("--arch", default=None, help="fresh backbone architecture  [default: resnet18]")
@click.option("--backbone", type=click.Path(), default=None,
              help="pruned winner folder (spec.json + weights.safetensors) instead of --arch")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--iters", type=click.IntRange(min=1), default=200, show_default=True, help="steps per epoch (per rank)")
@click.option("--batch", type=PXK, default="16x8", show_default=True,
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
@click.option("--size", type=HW, default="256x128", show_default=True, help="input HEIGHTxWIDTH")
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
def train(data: str, out: str, arch: str | None, backbone: str | None, batch: tuple[int, int],
          size: tuple[int, int], resume: bool, **options: Any) -> None:
    """Unsupervised TMP training: extract, cluster (Jaccard + DBSCAN), train with all positives, repeat."""
    from ..train import ReidTrainConfig, train_reid  # lazy: torch (see the module docstring)

    if arch is None and backbone is None:
        arch = "resnet18"
    cfg = ReidTrainConfig(data=data, arch=arch, backbone=backbone, p=batch[0], k=batch[1], size=size, **options)
    result = train_reid(cfg, out, resume=resume, log=lambda line: click.echo(line))
    last = result.last
    if last is not None and last.get("val"):
        click.echo(json.dumps({"epoch": last["epoch"], **{k: last["val"][k] for k in EVAL_KEYS}}))


@click.command("eval")
@click.option("--data", required=True, type=click.Path(), help="dataset folder with query/ and bounding_box_test/")
@click.option("--model", "model_path", type=click.Path(), default=None, help="run folder or re-ID model folder")
@click.option("--backbone", type=click.Path(), default=None,
              help="pruned winner / converted backbone folder, evaluated with a fresh GeM + BNNeck head")
@click.option("--arch", default=None, help="with --random: evaluate a randomly initialised backbone")
@click.option("--random", "random_init", is_flag=True, help="random initialisation (the 'before training' figure)")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="seed of the fresh parts")
@click.option("--size", type=HW, default=None, help="input HEIGHTxWIDTH  [default: the model's, or 256x128]")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=_DEVICE, default="cpu", show_default=True)
def eval_cmd(data: str, model_path: str | None, backbone: str | None, arch: str | None, random_init: bool,
             seed: int, size: tuple[int, int] | None, rerank: bool, as_json: bool, batch_size: int,
             threads: int | None, workers: int, device: str) -> None:
    """Evaluate a re-ID model on the query/gallery split: mAP, CMC rank-1/5/10, mINP.

    The model is a trained one (--model), a backbone folder with a fresh head (--backbone), or a randomly
    initialised network (--arch ARCH --random), the last two giving the "before training" figure.
    """
    if sum(x is not None for x in (model_path, backbone, arch)) != 1:
        raise click.UsageError("give one of --model PATH, --backbone DIR, or --arch ARCH --random")
    if random_init != (arch is not None):
        raise click.UsageError("--random goes with --arch (e.g. --arch resnet18 --random)")
    # lazy: torch and the training stack (see the module docstring)
    import torch

    from ..model import HeadConfig, ReidModel, backbone_from_subnet, build_reid_model, load_reid_model
    from ..train import evaluate_model

    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda was asked for but torch sees no CUDA device")
    with torch_threads(threads):
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
        metrics = evaluate_model(model.eval(), dataset, size=size or model.head.input_size, batch_size=batch_size,
                                 device=device, workers=workers, rerank=rerank)
    assert metrics is not None
    if as_json:
        click.echo(json.dumps({k: getattr(metrics, k) for k in EVAL_KEYS}))
    else:
        click.echo(str(metrics))
