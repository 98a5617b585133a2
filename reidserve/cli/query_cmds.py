"""``reidserve query ...`` (the command-line client of a running ``reidserve serve``; its bulk commands ``import``
and ``eval`` are in :mod:`.bulk_cmds`) and ``reidserve demo-gallery`` (fill a running server's gallery for a demo,
through the bulk import). Failures -- a server that cannot be reached or refuses a request, a bad token file, demo
data that is missing -- are :class:`~reidserve.errors.ReidserveError` subclasses: one line and exit status 2 on the
command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from .. import demo_gallery as demo
from ..client import ReidClient, read_token_file

__all__ = ["BULK_TIMEOUT", "bulk_client", "demo_gallery", "query"]

BULK_TIMEOUT = 300.0  # seconds a bulk request may take unless --timeout says otherwise (a batch queues behind others)


def _token(token: str | None, token_file: Path | None) -> str | None:
    return read_token_file(token_file) if token_file is not None else token


def _client(ctx: click.Context) -> ReidClient:
    o = ctx.obj
    return ReidClient(o["url"], _token(o["token"], o["token_file"]), timeout=o["timeout"])


def bulk_client(ctx: click.Context) -> ReidClient:
    """The client of a bulk command: its requests carry many images, so the default timeout is longer."""
    o = ctx.obj
    timeout = o["timeout"] if o.get("timeout_given") else max(o["timeout"], BULK_TIMEOUT)
    return ReidClient(o["url"], _token(o["token"], o["token_file"]), timeout=timeout)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group("query")
@click.option("--url", envvar="REIDSERVE_URL", default="http://127.0.0.1:8080", show_default=True,
              help="the server (also $REIDSERVE_URL)")
@click.option("--token", envvar="REIDSERVE_TOKEN", default=None, help="API token (also $REIDSERVE_TOKEN)")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="read the token from this file (e.g. the server's DATA_DIR/token)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help=f"seconds per request (import and eval: {BULK_TIMEOUT:g} unless given)")
@click.pass_context
def query(ctx: click.Context, url: str, token: str | None, token_file: Path | None, timeout: float) -> None:
    """Talk to a running `reidserve serve`: search, add, get, delete, embed, stats; import fills the gallery
    from a folder of images or a Market-1501 dataset (many images per request, resumable), eval measures mAP and
    rank-1 through the service.

    \b
    reidserve query --token-file DATA_DIR/token import datasets/market1501   # its bounding_box_test/
    reidserve query eval datasets/market1501                                  # its query/ against the gallery
    reidserve query search -k 5 person.jpg
    """
    given = ctx.get_parameter_source("timeout") is not ParameterSource.DEFAULT
    ctx.obj = {"url": url, "token": token, "token_file": token_file, "timeout": timeout, "timeout_given": given}


@query.command("search")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--camera", "cameras", multiple=True, help="only this camera (repeatable)")
@click.option("--exclude-camera", "exclude", multiple=True, help="not this camera (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def query_search(ctx: click.Context, images: tuple[Path, ...], k: int, cameras: tuple[str, ...],
                 exclude: tuple[str, ...], as_json: bool) -> None:
    """Who is this? The top-k gallery items for each IMAGE."""
    out = {}
    with _client(ctx) as c:
        for path in images:
            out[str(path)] = c.search(image=path, k=k, cameras=list(cameras) or None, exclude_cameras=list(exclude))
    if as_json:
        _echo_json(out)
        return
    for name, hits in out.items():
        click.echo(f"{name}:")
        if not hits:
            click.echo("  (no match: the gallery is empty or the filters exclude everything)")
        for rank, h in enumerate(hits, 1):
            extra = " ".join(f"{key}={value}" for key, value in h["metadata"].items())
            cam = f" camera={h['camera']}" if h["camera"] else ""
            click.echo(f"  {rank:>2}. {h['id']:<24} score {h['score']:.4f}{cam} {extra}".rstrip())


def _meta_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="'--meta'")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@query.command("add")
@click.argument("item_id")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--camera", default=None)
@click.option("--time", "time_", type=float, default=None, help="seconds since the epoch")
@click.option("--meta", "meta", multiple=True, help="KEY=VALUE metadata (repeatable; VALUE parsed as JSON if it can)")
@click.pass_context
def query_add(ctx: click.Context, item_id: str, images: tuple[Path, ...], camera: str | None, time_: float | None,
              meta: tuple[str, ...]) -> None:
    """Add (or replace) ITEM_ID from one or more IMAGES (their embeddings are averaged)."""
    with _client(ctx) as c:
        res = c.add(item_id, images=list(images), camera=camera, time=time_, metadata=_meta_pairs(meta))
    r = res["items"][0]
    click.echo(f"{'added' if r['created'] else 'replaced'} {r['id']} (seq {r['seq']}); gallery size "
               f"{res['gallery_size']}")


@query.command("get")
@click.argument("item_id")
@click.option("--embedding", is_flag=True, help="include the stored embedding")
@click.pass_context
def query_get(ctx: click.Context, item_id: str, embedding: bool) -> None:
    """Show a gallery item."""
    with _client(ctx) as c:
        _echo_json(c.get(item_id, include_embedding=embedding))


@query.command("delete")
@click.argument("item_id")
@click.pass_context
def query_delete(ctx: click.Context, item_id: str) -> None:
    """Delete a gallery item."""
    with _client(ctx) as c:
        res = c.delete(item_id)
    click.echo(f"deleted {res['id']}; gallery size {res['gallery_size']}")


@query.command("embed")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def query_embed(ctx: click.Context, images: tuple[Path, ...]) -> None:
    """Print the embeddings of IMAGES as JSON."""
    with _client(ctx) as c:
        emb = c.embed(list(images))
    _echo_json({str(p): [round(float(v), 6) for v in e] for p, e in zip(images, emb, strict=True)})


@query.command("stats")
@click.pass_context
def query_stats(ctx: click.Context) -> None:
    """Print the server's /v1/stats."""
    with _client(ctx) as c:
        _echo_json(c.stats())


@click.command("demo-gallery")
@click.option("--url", envvar="REIDSERVE_URL", default="http://127.0.0.1:8080", show_default=True)
@click.option("--token", envvar="REIDSERVE_TOKEN", default=None)
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--fashion-mnist", "fmnist", is_flag=True,
              help="fill from the Fashion-MNIST test set (IDX files read with numpy; see --fmnist-dir)")
@click.option("--fmnist-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of the IDX files  [default: $PRUNEOPT_DATA, Debian's, the pruneopt cache]")
@click.option("--images", "image_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="fill from a folder of images instead (Market-1501 names give camera and person id); "
                   "`reidserve query import` does this with more options")
@click.option("--count", type=click.IntRange(min=1), default=1000, show_default=True, help="gallery items to add")
@click.option("--queries-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Fashion-MNIST: write held-out query images (PNG, label in the name) here")
@click.option("--queries", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1024), default=64, show_default=True, help="items per request")
def demo_gallery(url: str, token: str | None, token_file: Path | None, fmnist: bool, fmnist_dir: Path | None,
                 image_dir: Path | None, count: int, queries_out: Path | None, queries: int, batch: int) -> None:
    """Fill a running server's gallery with Fashion-MNIST test images or a folder of images (through the bulk
    import of `reidserve query import`: items already there are skipped)."""
    if fmnist == (image_dir is not None):
        raise click.UsageError("give one of --fashion-mnist or --images DIR")
    written: list[Path] = []

    def log(message: str) -> None:
        click.echo(message, err=True)

    with ReidClient(url, _token(token, token_file), timeout=BULK_TIMEOUT) as c:
        if fmnist:
            n, written = demo.fill_fashion_mnist(c, count=count, batch=batch, data_dir=fmnist_dir,
                                                 queries_out=queries_out, queries=queries, log=log)
        else:
            assert image_dir is not None
            n = demo.fill_folder(c, image_dir, count=count, batch=batch, log=log)
    click.echo(f"added {n} items to {url}")
    if written:
        click.echo(f"query images in {queries_out}: reidserve query --url {url} search {written[0]}")
