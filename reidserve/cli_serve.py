"""``reidserve serve``, ``reidserve query`` and ``reidserve demo-gallery``: the re-ID service and its clients.

The commands register themselves on :data:`reidserve.cli.main` when this module is imported (``reidserve.cli``
imports it). ``python -m reidserve.service ARGS`` runs ``serve`` without the rest of the command line. The
``serve`` process never imports torch.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from .cli import main

__all__ = ["demo_gallery", "query", "serve"]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise click.ClickException(f"--host {host}: cannot be resolved ({exc.strerror})") from None
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        hint = "another process listens there: pick another --port" if exc.errno in (98, 48) else \
            "check --host names an address of this machine"
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}); {hint}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@main.command("serve")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="an .onnx from `pruneopt export --onnx`, or a TensorRT .engine/.plan from `pruneopt export --trt`")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="the gallery (SQLite + FAISS snapshot), the lock and the generated token live here")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (loopback by default)")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="0: any free port")
@click.option("--store", default="sqlite", show_default=True,
              help="sqlite | milvus-lite:///path/gallery.db | milvus://HOST:19530[/COLLECTION]")
@click.option("--runtime", type=click.Choice(["auto", "ort-cpu", "ort-cuda", "ort-trt", "trt"]), default="auto",
              show_default=True, help="auto: TensorRT for engines, ONNX Runtime CUDA when available, else CPU")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="images per model run (micro-batch)")
@click.option("--max-wait-ms", type=click.FloatRange(0, 1000), default=2.0, show_default=True,
              help="how long the first request of a micro-batch waits for others")
@click.option("--index", type=click.Choice(["flat", "ivf", "hnsw"]), default="ivf", show_default=True,
              help="flat: exact search; ivf: flat until --ivf-threshold items, then IVF (approximate, faster); "
                   "hnsw: an HNSW graph (approximate, cheaper per query than IVF at higher recall; CPU only, "
                   "slower to build and to add to)")
@click.option("--ivf-threshold", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option("--nlist", type=click.IntRange(min=0), default=0, help="IVF lists (0: about 8 sqrt(n), a power of two)")
@click.option("--nprobe", type=click.IntRange(min=0), default=0, help="IVF lists searched (0: nlist/32, >= 16)")
@click.option("--ivf-codec", type=click.Choice(["sq8", "flat"]), default="sq8", show_default=True,
              help="how IVF lists store vectors: sq8 (8 bits per value: 1/4 of the memory, about 2x the searches "
                   "per second, scores within ~1e-3) or flat (float32)")
@click.option("--hnsw-m", type=click.IntRange(min=0), default=0,
              help="HNSW graph neighbours per vector (0: 32); more: better recall, more memory, slower build")
@click.option("--ef-search", type=click.IntRange(min=0), default=0,
              help="HNSW candidates explored per query (0: 32; at least k); more: better recall, slower search")
@click.option("--faiss-threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="OpenMP threads of one FAISS call: a micro-batch of searches spreads its queries over them "
                   "(0: the CPU count, at most 8)")
@click.option("--search-max-batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="search requests answered by one index search (micro-batch)")
@click.option("--search-max-wait-ms", type=click.FloatRange(0, 1000), default=1.0, show_default=True,
              help="how long the first search of a micro-batch waits for others (0: no wait: a lone search on "
                   "an idle server answers in ~2 ms instead of ~4.5, at some throughput under heavy load)")
@click.option("--faiss-gpu", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="put the index on a GPU when FAISS has GPU support (flat, ivf; hnsw stays on the CPU)")
@click.option("--snapshot-interval", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="seconds between index snapshots (0: only on shutdown)")
@click.option("--auth", type=click.Choice(["mutating", "all", "none"]), default="mutating", show_default=True,
              help="which endpoints need a bearer token")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="tokens, one per line (also $REIDSERVE_TOKENS; else one is generated in DATA_DIR/token)")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=16.0, show_default=True)
@click.option("--max-images", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="images per request")
@click.option("--max-items", type=click.IntRange(1, 4096), default=1024, show_default=True,
              help="gallery items per request")
@click.option("--max-k", type=click.IntRange(1, 10_000), default=1000, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=4_000_000, show_default=True,
              help="width x height of one image, checked before decoding")
@click.option("--accept-model-change", is_flag=True,
              help="serve a gallery filled by another model (only when both produce the same embeddings)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--access-log", is_flag=True, help="log every request")
@click.option("--port-file", type=click.Path(dir_okay=False, path_type=Path), default=None, hidden=True,
              help="write the bound port here once listening (for --port 0)")
def serve(model_path: Path, data_dir: Path, host: str, port: int, store: str, runtime: str, threads: int | None,
          max_batch: int, max_wait_ms: float, index: str, ivf_threshold: int, nlist: int, nprobe: int,
          ivf_codec: str, hnsw_m: int, ef_search: int, faiss_threads: int, search_max_batch: int,
          search_max_wait_ms: float, faiss_gpu: str,
          snapshot_interval: float, auth: str, token_file: Path | None,
          max_body_mb: float, max_images: int, max_items: int, max_k: int, max_pixels: int,
          accept_model_change: bool, log_level: str, access_log: bool, port_file: Path | None) -> None:
    """Serve a re-ID model: embeddings, a durable gallery and top-k search over HTTP (OpenAPI at /docs).

    \b
    reidserve serve --model winner.onnx --data-dir gallery/
    reidserve serve --model r50.onnx --data-dir g/ --store milvus-lite:///srv/g.db --auth all
    """
    import uvicorn

    from .service.app import ServiceState, create_app
    from .service.auth import TokenError
    from .service.config import ServiceConfig
    from .service.embedder import ModelLoadError
    from .service.store import StoreError

    # idle OpenMP threads sleep instead of spinning on the cores the event loop needs (set before FAISS loads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    config = ServiceConfig(
        model=model_path, data_dir=data_dir, store=store, runtime=runtime, threads=threads, max_batch=max_batch,
        max_wait_ms=max_wait_ms, index=index, ivf_threshold=ivf_threshold, nlist=nlist, nprobe=nprobe,
        ivf_codec=ivf_codec, hnsw_m=hnsw_m, ef_search=ef_search, faiss_threads=faiss_threads,
        search_max_batch=search_max_batch, search_max_wait_ms=search_max_wait_ms,
        faiss_gpu=faiss_gpu, snapshot_interval=snapshot_interval, auth=auth,
        token_file=token_file, max_body_bytes=int(max_body_mb * 2**20), max_images=max_images, max_items=max_items,
        max_k=max_k, max_pixels=max_pixels, accept_model_change=accept_model_change,
        milvus_token=os.environ.get("REIDSERVE_MILVUS_TOKEN"))
    if not _is_loopback(host):
        click.echo(f"reidserve: warning: listening on {host}, reachable from other machines"
                   + ("; --auth none lets anyone read AND change the gallery" if auth == "none" else
                      "; requests and tokens travel unencrypted: put a TLS proxy in front"), err=True)
    sock = bind_socket(host, port)
    state = ServiceState(config)
    try:
        state.open()  # model, tokens and gallery now, so that mistakes are one clear line
    except (ModelLoadError, StoreError, TokenError) as exc:
        sock.close()
        raise click.ClickException(str(exc)) from None
    bound = sock.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_name(port_file.name + ".tmp")
        tmp.write_text(f"{bound}\n")
        tmp.replace(port_file)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"reidserve: serving {model_path.name} on http://{shown}:{bound} (docs: /docs, auth: {auth})",
               err=True)
    app = create_app(state=state)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                                           timeout_graceful_shutdown=15, server_header=False))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if state.store is not None or state.model is not None:  # startup failed before the lifespan closed them
            import asyncio

            asyncio.run(state.stop())
    if not server.started:
        raise click.ClickException("the server did not start (see the log above)")


# -- clients ------------------------------------------------------------------------------------------------------
def _token(token: str | None, token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            lines = [ln.strip() for ln in token_file.read_text().splitlines()]
        except OSError as exc:
            raise click.ClickException(f"--token-file {token_file}: {exc.strerror or exc}") from None
        found = [ln for ln in lines if ln and not ln.startswith("#")]
        if not found:
            raise click.ClickException(f"--token-file {token_file} holds no token")
        return found[0]
    return token


def _client(ctx: click.Context) -> Any:
    from .client import ReidClient

    o = ctx.obj
    return ReidClient(o["url"], _token(o["token"], o["token_file"]), timeout=o["timeout"])


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from .client import ReidClientError

    try:
        return fn(*args, **kwargs)
    except ReidClientError as exc:
        raise click.ClickException(str(exc)) from None


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@main.group("query")
@click.option("--url", envvar="REIDSERVE_URL", default="http://127.0.0.1:8080", show_default=True,
              help="the server (also $REIDSERVE_URL)")
@click.option("--token", envvar="REIDSERVE_TOKEN", default=None, help="API token (also $REIDSERVE_TOKEN)")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="read the token from this file (e.g. the server's DATA_DIR/token)")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True)
@click.pass_context
def query(ctx: click.Context, url: str, token: str | None, token_file: Path | None, timeout: float) -> None:
    """Talk to a running `reidserve serve`: search, add, get, delete, embed, stats."""
    ctx.obj = {"url": url, "token": token, "token_file": token_file, "timeout": timeout}


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
            out[str(path)] = _call(c.search, image=path, k=k, cameras=list(cameras) or None,
                                   exclude_cameras=list(exclude))
    if as_json:
        _echo_json(out)
        return
    for path, hits in out.items():
        click.echo(f"{path}:")
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
        res = _call(c.add, item_id, images=list(images), camera=camera, time=time_, metadata=_meta_pairs(meta))
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
        _echo_json(_call(c.get, item_id, include_embedding=embedding))


@query.command("delete")
@click.argument("item_id")
@click.pass_context
def query_delete(ctx: click.Context, item_id: str) -> None:
    """Delete a gallery item."""
    with _client(ctx) as c:
        res = _call(c.delete, item_id)
    click.echo(f"deleted {res['id']}; gallery size {res['gallery_size']}")


@query.command("embed")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_context
def query_embed(ctx: click.Context, images: tuple[Path, ...]) -> None:
    """Print the embeddings of IMAGES as JSON."""
    with _client(ctx) as c:
        emb = _call(c.embed, list(images))
    _echo_json({str(p): [round(float(v), 6) for v in e] for p, e in zip(images, emb, strict=True)})


@query.command("stats")
@click.pass_context
def query_stats(ctx: click.Context) -> None:
    """Print the server's /v1/stats."""
    with _client(ctx) as c:
        _echo_json(_call(c.stats))


# -- demo gallery -------------------------------------------------------------------------------------------------
@main.command("demo-gallery")
@click.option("--url", envvar="REIDSERVE_URL", default="http://127.0.0.1:8080", show_default=True)
@click.option("--token", envvar="REIDSERVE_TOKEN", default=None)
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--fashion-mnist", "fmnist", is_flag=True,
              help="fill from the Fashion-MNIST test set (IDX files read with numpy; see --fmnist-dir)")
@click.option("--fmnist-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="folder of the IDX files  [default: $PRUNEOPT_DATA, Debian's, the pruneopt cache]")
@click.option("--images", "image_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="fill from a folder of images instead (Market-1501 names give camera and person id)")
@click.option("--count", type=click.IntRange(min=1), default=1000, show_default=True, help="gallery items to add")
@click.option("--queries-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Fashion-MNIST: write held-out query images (PNG, label in the name) here")
@click.option("--queries", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1024), default=64, show_default=True, help="items per request")
def demo_gallery(url: str, token: str | None, token_file: Path | None, fmnist: bool, fmnist_dir: Path | None,
                 image_dir: Path | None, count: int, queries_out: Path | None, queries: int, batch: int) -> None:
    """Fill a running server's gallery with Fashion-MNIST test images or a folder of images."""
    from .client import ReidClient, ReidClientError
    from .service import demo

    if fmnist == (image_dir is not None):
        raise click.UsageError("give one of --fashion-mnist or --images DIR")
    written: list[Path] = []
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    with ReidClient(url, _token(token, token_file), timeout=120) as c:
        try:
            if fmnist:
                n, written = demo.fill_fashion_mnist(c, count=count, batch=batch, data_dir=fmnist_dir,
                                                     queries_out=queries_out, queries=queries, log=log)
            else:
                assert image_dir is not None
                n = demo.fill_folder(c, image_dir, count=count, batch=batch, log=log)
        except (demo.DemoDataError, ReidClientError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"added {n} items to {url}")
    if written:
        click.echo(f"query images in {queries_out}: reidserve query --url {url} search {written[0]}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
