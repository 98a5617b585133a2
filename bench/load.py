"""Load test of ``reidserve serve`` on loopback: search and embed with concurrent clients, side by side with the
same work done in-process (FAISS search on the store, the bare model runner).

    python bench/load.py                       # 100,000 x 512 gallery, 16 clients, resnet18 re-ID embedder
    python bench/load.py --gallery 20000 --search-requests 1000 --embed-images 64   # quicker
    python bench/load.py --skip-embed --index hnsw   # the HNSW index instead of IVF (gallery folder of its own)
    python bench/load.py --skip-embed --ivf-codec flat   # IVF lists of float32 vectors instead of 8-bit codes
    python bench/load.py --skip-embed --rates 200,400,800   # also latency at fixed request rates (open loop)

What it does, bounded in requests and time (``--max-seconds`` per phase) and only on 127.0.0.1:

1. exports (once, cached in ``--work-dir``) a resnet18 re-ID backbone (features only, last stride 1, 3x256x128,
   512-d embedding) through ``export.onnx.export_onnx``, in a subprocess;
2. builds a gallery of ``--gallery`` re-ID-like 512-d embeddings (identities x views) directly in the SQLite +
   FAISS store (an IVF index above 20,000 items, as the service would build), then times single-query searches
   in-process (IVF, and exact flat search for recall@10 and latency);
3. starts ``reidserve serve`` on that gallery and a free port, and runs ``--clients`` concurrent clients doing
   ``POST /v1/search`` with an embedding: throughput, p50 / p99 latency, errors; with ``--rates``, also open-loop
   searches at those request rates (Poisson arrivals), the latency counted from each request's scheduled arrival;
4. times the bare ONNX Runtime runner at batch ``--batch`` (images/s), then ``--clients`` concurrent clients each
   posting one JPEG to ``POST /v1/embed`` (micro-batched by the server up to ``--batch``): images/s and the ratio.

The load generator is a minimal asyncio HTTP/1.1 keep-alive client in this process (a full HTTP client library
costs several times more CPU per request, and the 2 cores are shared with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from base64 import b64encode
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support lives in the checkout, not in the installed package
    sys.path.insert(0, str(REPO))

from export.metadata import read_metadata  # noqa: E402
from export.runners import make_runner  # noqa: E402
from reidserve.service.process import ServerProcess  # noqa: E402
from reidserve.service.sqlite_store import SqliteFaissStore  # noqa: E402
from reidserve.service.store import GalleryRecord  # noqa: E402
from tests.support.serving import ModelSpec, export_models, png_bytes, random_images  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
MODEL = ModelSpec("reid-resnet18-256x128.onnx", "resnet18", (3, 256, 128), features_only=True, last_stride=1)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summary(name: str, lat_s: list[float], seconds: float, errors: int, unit: str = "req", count: int = 0) -> dict:
    n = count or len(lat_s)
    out = {"name": name, "requests": len(lat_s), "errors": errors, "seconds": round(seconds, 2),
           f"{unit}_per_s": round(n / seconds, 1) if seconds else None,
           "p50_ms": round(pct(lat_s, 50) * 1000, 2), "p99_ms": round(pct(lat_s, 99) * 1000, 2)}
    print(f"  {name:<34} {out[f'{unit}_per_s']:>9} {unit}/s   p50 {out['p50_ms']:>8.2f} ms   "
          f"p99 {out['p99_ms']:>8.2f} ms   errors {errors}   ({len(lat_s)} requests, {seconds:.1f} s)")
    return out


# -- gallery ------------------------------------------------------------------------------------------------------
def reid_like(n: int, dim: int, views: int, seed: int, queries: int = 0,
              latent: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` unit vectors shaped like re-ID embeddings: n / views identities, each seen ``views`` times; identities
    and view changes live in a ``latent``-dimensional subspace (CNN embeddings have a low intrinsic dimension), plus
    a little isotropic noise. Also ``queries`` new views of random identities. Returns (gallery, identity of each
    gallery vector, queries)."""
    rng = np.random.default_rng(seed)
    basis = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    ids = n // views + 1
    centers = rng.standard_normal((ids, latent)).astype(np.float32)
    who = np.arange(n) // views
    qwho = np.random.default_rng(seed + 1).integers(0, ids, size=queries)

    def views_of(people: np.ndarray, r: np.random.Generator) -> np.ndarray:
        z = centers[people] + 0.6 * r.standard_normal((len(people), latent)).astype(np.float32)  # same-id cos ~0.7
        v = z @ basis + 0.05 * r.standard_normal((len(people), dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return views_of(who, rng), who, views_of(qwho, np.random.default_rng(seed + 2))


def build_gallery(folder: Path, n: int, dim: int, model_id: str, index: str = "ivf", ef_search: int = 0,
                  codec: str = "sq8", nlist: int = 0) -> None:
    marker = folder / "bench.json"
    want = {"n": n, "dim": dim, "model": model_id, "data": "reid_like/4"}
    if index != "ivf":
        want["index"] = index
    else:
        want["codec"] = codec
        if nlist:
            want["nlist"] = nlist
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return

    shutil.rmtree(folder, ignore_errors=True)
    x, who, _ = reid_like(n, dim, 10, seed=0)
    t0 = time.perf_counter()
    with SqliteFaissStore(folder, dim, model_id=model_id, snapshot_interval=0, index=index, ef_search=ef_search,
                          ivf_codec=codec, nlist=nlist, faiss_threads=os.cpu_count() or 1) as store:
        step = 5000
        for s in range(0, n, step):
            store.upsert([GalleryRecord(f"g{i:07d}", x[i], camera=f"c{i % 6}", time=float(i),
                                        metadata={"pid": int(who[i])}) for i in range(s, min(n, s + step))])
        store.wait_idle(timeout=600)
        kind = store.stats()["index"]
    marker.write_text(json.dumps(want))
    print(f"  gallery: {n} x {dim} written in {time.perf_counter() - t0:.1f} s, index {kind['kind']} "
          f"(codec {kind['codec']}, nlist {kind['nlist']}, nprobe {kind['nprobe']}, hnsw_m {kind['hnsw_m']}, "
          f"ef_search {kind['ef_search']})")


def in_process_search(folder: Path, dim: int, model_id: str, x: np.ndarray, queries: np.ndarray,
                      k: int, nprobe: int = 0, index: str = "ivf", ef_search: int = 0,
                      codec: str = "sq8") -> list[dict]:
    """Single-query searches on the store (its index, its lock), then exact search over the same vectors ``x``
    (gallery item ``g{i:07d}`` is ``x[i]``) for latency and recall@k of the store's index."""


    results = []
    with SqliteFaissStore(folder, dim, model_id=model_id, snapshot_interval=0, nprobe=nprobe, index=index,
                          ef_search=ef_search, ivf_codec=codec) as store:
        st = store.stats()
        described = st["index"]
        print(f"  store opened in {st['startup']['seconds']:.2f} s (rebuilt: {st['startup']['rebuilt']})")
        lat, got_ids = [], []
        for q in queries[:50]:  # warm-up
            store.search(q, k)
        for q in queries:
            t0 = time.perf_counter()
            hits = store.search(q, k)[0]
            lat.append(time.perf_counter() - t0)
            got_ids.append({h.id for h in hits})
        label = f"ivf {described['codec']}, nlist {described['nlist']}, nprobe {described['nprobe']}" \
            if described["nlist"] else f"hnsw, M {described['hnsw_m']}, efSearch {described['ef_search']}" \
            if described["kind"] == "hnsw" else "flat"
        results.append(summary(f"in-process search ({label})", lat, sum(lat), 0))
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    lat_f, recall = [], []
    for q, got in zip(queries[:300], got_ids[:300], strict=False):
        t0 = time.perf_counter()
        _, ids = flat.search(q[None], k)
        lat_f.append(time.perf_counter() - t0)
        recall.append(len({f"g{int(i):07d}" for i in ids[0]} & got) / k)
    r = summary(f"in-process exact flat search (k={k})", lat_f, sum(lat_f), 0)
    r["recall_at_k_of_store_index"] = round(float(np.mean(recall)), 4)
    print(f"  recall@{k} of the store's {described['kind']} index vs exact search: "
          f"{r['recall_at_k_of_store_index']:.3f}")
    results.append(r)
    return results


# -- a small HTTP/1.1 client --------------------------------------------------------------------------------------
class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes, ctype: str = "application/json") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {ctype}\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:  # the server closed an idle keep-alive connection
            await self.close()
            raise ConnectionResetError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        data = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def load(port: int, clients: int, make_body: object, path: str, total: int, max_seconds: float,
               ctype: str = "application/json") -> tuple[list[float], int, float]:
    lat: list[float] = []
    errors = 0
    counter = iter(range(total))
    deadline = time.monotonic() + max_seconds

    async def client(n: int) -> None:
        nonlocal errors
        conn = Conn("127.0.0.1", port)
        try:
            for i in counter:
                if time.monotonic() > deadline:
                    break
                body = make_body(i)  # type: ignore[operator]
                t0 = time.perf_counter()
                try:
                    status, _ = await conn.request("POST", path, body, ctype)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    await conn.close()
                    continue
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors += 1
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return lat, errors, time.perf_counter() - t0


async def load_rate(port: int, rate: float, make_body: object, path: str, total: int, max_seconds: float,
                    seed: int = 0, ctype: str = "application/json") -> tuple[list[float], int, float]:
    """Open-loop load: ``total`` requests at Poisson arrivals of ``rate`` per second, whatever the server's speed
    (as Triton's perf_analyzer --request-rate-range does). A request's latency counts from its scheduled arrival,
    so time spent waiting for a free client connection is included (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=total)
    idle: list[Conn] = []
    lat: list[float] = []
    errors = 0
    start = loop.time()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        reused = bool(idle)
        conn = idle.pop() if idle else Conn("127.0.0.1", port)
        try:
            try:
                status, _ = await conn.request("POST", path, make_body(i), ctype)  # type: ignore[operator]
            except ConnectionResetError:
                if not reused:
                    raise
                conn = Conn("127.0.0.1", port)  # an idle connection the server had closed: once more, afresh
                status, _ = await conn.request("POST", path, make_body(i), ctype)  # type: ignore[operator]
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            await conn.close()
            return
        lat.append(loop.time() - due)
        if status != 200:
            errors += 1
        idle.append(conn)

    tasks = []
    due = start
    for i, gap in enumerate(gaps):
        due += float(gap)
        if due - start > max_seconds:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for conn in idle:
        await conn.close()
    return lat, errors, loop.time() - start


def search_phase(port: int, args: argparse.Namespace, queries: np.ndarray) -> dict[str, object]:
    """Closed-loop searches with ``--clients`` clients, then open-loop ones at each of ``--rates``."""
    results: dict[str, object] = {}
    bodies = [json.dumps({"embedding": q.tolist(), "k": args.k}).encode() for q in queries[:1000]]
    asyncio.run(load(port, args.clients, lambda i: bodies[i % len(bodies)], "/v1/search", 200, 30))  # warm-up
    lat, err, secs = asyncio.run(load(port, args.clients, lambda i: bodies[i % len(bodies)], "/v1/search",
                                      args.search_requests, args.max_seconds))
    results["service_search"] = summary(f"service search ({args.clients} clients, k={args.k})", lat, secs, err)
    for rate in [float(r) for r in args.rates.split(",") if r.strip()]:
        n = min(args.search_requests, int(rate * args.max_seconds))
        lat_r, err_r, secs_r = asyncio.run(load_rate(port, rate, lambda i: bodies[i % len(bodies)], "/v1/search",
                                                     n, args.max_seconds))
        results[f"service_search_rate_{rate:g}"] = summary(f"service search (open loop, {rate:g}/s)", lat_r,
                                                           secs_r, err_r)
    return results


def embed_phase(port: int, args: argparse.Namespace, model: Path,
                input_shape: tuple[int, int, int]) -> dict[str, object]:
    """The bare ONNX Runtime runner at batch ``--batch``, then ``--clients`` clients posting one image each."""
    print(f"\n[2] embedding, batch {args.batch}, {args.threads} ONNX Runtime threads")
    c, h, w = input_shape
    jpegs = [png_bytes(im, "JPEG") for im in random_images(32, h, w, seed=5)]
    embed_bodies = [json.dumps({"images": [b64encode(j).decode()]}).encode() for j in jpegs]
    asyncio.run(load(port, args.clients, lambda i: embed_bodies[i % 32], "/v1/embed", 2 * args.clients, 60))
    # the bare runner, measured while the server idles (its ONNX Runtime threads do not spin)
    runner = make_runner("ort-cpu", model, threads=args.threads, spin=False)
    xb = np.random.default_rng(0).standard_normal((args.batch, c, h, w)).astype(np.float32)
    runner.run(xb)
    lat_b: list[float] = []
    tb = time.perf_counter()
    while len(lat_b) * args.batch < args.embed_images and time.perf_counter() - tb < args.max_seconds:
        t1 = time.perf_counter()
        runner.run(xb)
        lat_b.append(time.perf_counter() - t1)
    bare_secs = time.perf_counter() - tb
    runner.close()
    bare = summary(f"bare runner (batch {args.batch})", lat_b, bare_secs, 0, unit="img",
                   count=len(lat_b) * args.batch)
    before = json.loads(asyncio.run(_get_stats(port)))["batching"]
    lat_e, err_e, secs_e = asyncio.run(load(port, args.clients, lambda i: embed_bodies[i % 32], "/v1/embed",
                                            args.embed_images, args.max_seconds))
    svc = summary(f"service embed ({args.clients} clients x 1 image)", lat_e, secs_e, err_e, unit="img")
    ratio = svc["img_per_s"] / bare["img_per_s"] if bare["img_per_s"] else float("nan")
    after = json.loads(asyncio.run(_get_stats(port)))["batching"]
    batches = after["batches"] - before["batches"]
    mean_batch = round((after["images"] - before["images"]) / batches, 2) if batches else None
    print(f"  service / bare runner throughput: {ratio:.3f}  (server micro-batches in this phase: {batches}, "
          f"mean size {mean_batch}, max {args.batch})")
    return {"bare_runner": bare, "service_embed": svc, "embed_ratio": round(ratio, 4), "mean_batch": mean_batch}


# -- main ---------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--server-args", default="", help="more reidserve serve options, e.g. '--search-max-wait-ms 0'")
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (0: the service's default)")
    ap.add_argument("--nprobe", type=int, default=0, help="IVF lists searched (0: the service's default)")
    ap.add_argument("--index", choices=["ivf", "hnsw"], default="ivf", help="the service's index kind")
    ap.add_argument("--ivf-codec", choices=["sq8", "flat"], default="sq8", help="how IVF lists store vectors")
    ap.add_argument("--ef-search", type=int, default=0, help="HNSW candidates per query (0: the service's default)")
    ap.add_argument("--rates", default="", help="also open-loop search at these request rates per second, e.g. "
                    "'200,400,800' (Poisson arrivals; latency from the scheduled arrival)")
    ap.add_argument("--search-requests", type=int, default=4000, help="service search requests (bound)")
    ap.add_argument("--inproc-queries", type=int, default=2000)
    ap.add_argument("--embed-images", type=int, default=192, help="images posted to /v1/embed (bound)")
    ap.add_argument("--batch", type=int, default=16, help="micro-batch size of the server = bare runner batch")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (server and bare runner)")
    ap.add_argument("--max-seconds", type=float, default=90.0, help="time bound of each load phase")
    ap.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "reidserve-bench")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--skip-embed", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    work: Path = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; work dir {work}")
    t0 = time.perf_counter()
    model = export_models(work / "models", (MODEL,))[MODEL.name]
    meta = read_metadata(model)
    dim = meta.output_dim
    print(f"model: {model.name} ({meta.arch}, input {'x'.join(map(str, meta.input_shape))}, {dim}-d), "
          f"ready in {time.perf_counter() - t0:.1f} s")
    gallery = work / (f"gallery-{args.gallery}" + (f"-{args.index}" if args.index != "ivf" else
                                                   "" if args.ivf_codec == "sq8" else f"-{args.ivf_codec}")
                      + (f"-nlist{args.nlist}" if args.nlist else ""))
    results: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}

    print("\n[1] gallery search")
    t_build = time.perf_counter()
    build_gallery(gallery, args.gallery, dim, meta.graph_digest, args.index, args.ef_search, args.ivf_codec,
                  args.nlist)
    results["gallery_build_s"] = round(time.perf_counter() - t_build, 1)
    x, _, queries = reid_like(args.gallery, dim, 10, seed=0, queries=max(args.inproc_queries, 1000))
    results["in_process"] = in_process_search(gallery, dim, meta.graph_digest, x, queries[:args.inproc_queries],
                                              args.k, args.nprobe, args.index, args.ef_search, args.ivf_codec)
    del x

    srv_args = ["--model", str(model), "--data-dir", str(gallery), "--max-batch", str(args.batch),
                "--threads", str(args.threads), "--snapshot-interval", "0", "--max-wait-ms", "2",
                "--nprobe", str(args.nprobe), "--nlist", str(args.nlist), "--index", args.index,
                "--ef-search", str(args.ef_search), "--ivf-codec", args.ivf_codec, *args.server_args.split()]
    with ServerProcess(srv_args, tokens=[TOKEN], log_path=work / "server.log") as srv:
        port = int(srv.port or 0)
        results.update(search_phase(port, args, queries))
        if not args.skip_embed:
            results.update(embed_phase(port, args, model, meta.input_shape))
        st = json.loads(asyncio.run(_get_stats(port)))
        results["torch_loaded_in_server"] = st["torch_loaded"]
    print(f"\nserver: torch loaded = {results['torch_loaded_in_server']}; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


async def _get_stats(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
                 .encode())
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1].decode()


if __name__ == "__main__":
    main()
