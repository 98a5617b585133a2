"""Bulk gallery import (``reidserve query import``) against the service's own embedding throughput, side by side.

    python bench/import_throughput.py                      # resnet18 re-ID model 3x256x128, 512 images, batch 32
    python bench/import_throughput.py --model small        # resnet20 at 3x64x32: per-image overheads dominate
    python bench/import_throughput.py --images 256 --batch 16 --workers 2 --json out.json

One run, one server (``reidserve serve`` on a free loopback port, a fresh gallery), the same images (JPEG files
with Market-1501 names, at the model's input size) and the same batch size ``--batch`` throughout:

1. bare runner: the ONNX Runtime runner alone on batches of ``--batch`` preprocessed images (images/s);
2. service embed: ``--workers`` client threads each posting ``--batch`` image files per ``POST /v1/embed``
   (``ReidClient.embed``: files read, base64, JSON) -- the service's bare embedding throughput;
3. import: :func:`reidserve.gallery_import.import_items` of the same files into the empty gallery, ``--batch``
   items per request and ``--workers`` requests in flight (what ``reidserve query import`` does): items/s, which
   adds the gallery's writes (SQLite commit, FAISS add) to the embedding.

It prints images/s of each and the ratios import / service embed (the aim: >= 0.8) and import / bare runner. The
clients run in this process, on the same cores as the server: their cost counts in both service figures alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support lives in the checkout, not in the installed package
    sys.path.insert(0, str(REPO))

from export.metadata import read_metadata  # noqa: E402
from export.runners import make_runner  # noqa: E402
from reidserve.client import ReidClient  # noqa: E402
from reidserve.gallery_import import import_items  # noqa: E402
from reidserve.import_sources import list_items  # noqa: E402
from reidserve.service.process import ServerProcess  # noqa: E402
from tests.support.serving import ModelSpec, export_models, png_bytes, random_images  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
MODELS = {
    "reid": ModelSpec("reid-resnet18-256x128.onnx", "resnet18", (3, 256, 128), features_only=True, last_stride=1),
    "small": ModelSpec("embed-resnet20-64x32.onnx", "resnet20", (3, 64, 32), features_only=True),
}


def write_images(folder: Path, n: int, height: int, width: int) -> list[Path]:
    """``n`` JPEG files with Market-1501 names (``PPPP_cCs1_NNNNNN_00.jpg``), written once."""
    marker = folder / f".done-{n}-{height}x{width}"
    if not marker.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i, im in enumerate(random_images(n, height, width, seed=7)):
            (folder / f"{i // 8 + 1:04d}_c{i % 6 + 1}s1_{i:06d}_00.jpg").write_bytes(png_bytes(im, "JPEG"))
        marker.write_text("ok\n")
    return sorted(folder.glob("*.jpg"))


def bare_runner(model: Path, batch: int, threads: int, images: int) -> float:
    """Images/s of the ONNX Runtime runner alone at ``batch``."""
    meta = read_metadata(model)
    runner = make_runner("ort-cpu", model, threads=threads, spin=False)
    x = np.random.default_rng(0).standard_normal((batch, *meta.input_shape)).astype(np.float32)
    runner.run(x)
    runs = max(2, images // batch)
    t0 = time.perf_counter()
    for _ in range(runs):
        runner.run(x)
    seconds = time.perf_counter() - t0
    runner.close()
    return runs * batch / seconds


def service_embed(url: str, files: list[Path], batch: int, workers: int) -> float:
    """Images/s of ``POST /v1/embed`` with ``batch`` files per request, ``workers`` requests in flight."""
    chunks = [files[i:i + batch] for i in range(0, len(files), batch)]
    local = threading.local()
    clients: list[ReidClient] = []

    def one(chunk: list[Path]) -> int:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = ReidClient(url, TOKEN, timeout=300)
            clients.append(c)
        return len(c.embed(chunk))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, chunks[:workers]))  # warm-up: connections, limits
        t0 = time.perf_counter()
        done = sum(pool.map(one, chunks))
        seconds = time.perf_counter() - t0
    for c in clients:
        c.close()
    return done / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="reid")
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32, help="images per request = server micro-batch = bare batch")
    ap.add_argument("--workers", type=int, default=4, help="requests in flight")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (server and bare runner)")
    ap.add_argument("--work-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "reidserve-import")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    spec = MODELS[args.model]
    work: Path = args.work_dir
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; work dir {work}")
    model = export_models(work / "models", (spec,))[spec.name]
    _, h, w = spec.input_shape
    files = write_images(work / f"images-{h}x{w}", args.images, h, w)
    print(f"model {model.name} ({spec.arch}, input {'x'.join(map(str, spec.input_shape))}); {len(files)} JPEG images; "
          f"batch {args.batch}, {args.workers} requests in flight, {args.threads} ONNX Runtime threads")

    bare = bare_runner(model, args.batch, args.threads, args.images)
    print(f"  bare runner (batch {args.batch}):            {bare:8.1f} images/s")
    gallery = work / "gallery"
    shutil.rmtree(gallery, ignore_errors=True)
    srv_args = ["--model", str(model), "--data-dir", str(gallery), "--max-batch", str(args.batch), "--threads",
                str(args.threads), "--max-images", str(max(64, args.batch)), "--snapshot-interval", "0"]
    with ServerProcess(srv_args, tokens=[TOKEN], log_path=work / "server.log") as srv:
        embed = service_embed(srv.url, files, args.batch, args.workers)
        print(f"  service embed ({args.batch} per request):      {embed:8.1f} images/s")
        _, items = list_items(files[0].parent)
        with ReidClient(srv.url, TOKEN, timeout=300) as c:
            report = import_items(c, items, batch=args.batch, workers=args.workers)
        print(f"  import ({report.batch} per request, {report.workers} in flight): {report.items_per_s:8.1f} items/s "
              f"({report.sent} items in {report.seconds:.1f} s)")
    results = {"model": spec.name, "images": len(files), "batch": args.batch, "workers": args.workers,
               "threads": args.threads, "bare_runner_img_s": round(bare, 1), "service_embed_img_s": round(embed, 1),
               "import_items_s": round(report.items_per_s, 1),
               "import_over_service_embed": round(report.items_per_s / embed, 3),
               "import_over_bare_runner": round(report.items_per_s / bare, 3),
               "load_average": round(os.getloadavg()[0], 2)}
    print(f"  import / service embed: {results['import_over_service_embed']:.3f}   "
          f"import / bare runner: {results['import_over_bare_runner']:.3f}   "
          f"(load average now {results['load_average']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
