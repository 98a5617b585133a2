"""Is the image loader the bottleneck? Images/s of the loader (decode + augment in N worker processes) next to the
training step's images/s at the same input size, and the training step fed by the loader.

    python bench/data_throughput.py [--loader-workers N] [--json FILE] [--quick]

Cases: resnet18 and resnet50 at 3x224x224 (JPEG images of ImageNet's typical 500x375, random-resized crop + flip),
resnet20 at 3x32x32 (32x32 PNGs, pad-crop + flip). The images are generated (random colour fields, saved as
JPEG/PNG), so nothing is downloaded. ``loader`` decodes and augments batches without a network; ``train`` runs SGD
steps (forward, backward, update) on batches already in memory; ``fed`` runs the same steps on the loader's batches.
The loader is not the bottleneck when ``fed`` is close to ``train`` (and ``loader`` well above it). Default worker
count: what `pruneopt search` uses (the cores but one, at most 8).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pruneopt.cli.search_cmds import default_loader_workers
from pruneopt.data.image_folder import scan_folder
from pruneopt.data.images import style_for
from pruneopt.data.splits import FileSplit
from pruneopt.loader import Feed, batches
from pruneopt.models import build, default_spec
from pruneopt.train import Stepper, _generator

CASES = (("resnet18", 224, 16, (375, 500), ".jpg"), ("resnet50", 224, 16, (375, 500), ".jpg"),
         ("resnet20", 32, 128, (32, 32), ".png"))


def make_images(root: Path, n: int, size: tuple[int, int], suffix: str) -> FileSplit:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = size
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)  # smooth-ish, compresses like a photo
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
        if suffix == ".jpg":
            img.save(folder / f"{i:05d}{suffix}", quality=90)
        else:
            img.save(folder / f"{i:05d}{suffix}")
    return scan_folder(root, 0.2).train


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("nan")


def loader_rate(split: FileSplit, feed: Feed, batch: int, n_batches: int) -> float:
    it = batches(split, batch, _generator(0), feed=feed)
    next(it)  # the workers' start-up is not throughput
    t0 = time.perf_counter()
    seen = sum(len(y) for _, (_, y) in zip(range(n_batches), it, strict=False))
    return rate(seen, time.perf_counter() - t0)


def train_rates(arch: str, split: FileSplit, feed: Feed, batch: int, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build(default_spec(arch, num_classes=2)).train()
    step = Stepper(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), feed)
    x = torch.randn(batch, 3, *feed.size)
    y = torch.randint(0, 2, (batch,))
    step(x, y)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    in_memory = rate(steps * batch, time.perf_counter() - t0)
    it = batches(split, batch, _generator(1), feed=feed)
    step(*next(it))
    t0 = time.perf_counter()
    seen = 0
    for _, (xb, yb) in zip(range(steps), it, strict=False):
        step(xb, yb)
        seen += len(yb)
    return in_memory, rate(seen, time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loader-workers", type=int, default=default_loader_workers())
    ap.add_argument("--quick", action="store_true", help="fewer images and steps (a smoke test)")
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, loader workers {args.loader_workers}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch, side, batch, image_size, suffix in CASES:
            large = side >= 96
            n_images = (96 if args.quick else 320) if large else (512 if args.quick else 4096)
            split = make_images(Path(tmp) / f"{arch}-{side}", n_images, image_size, suffix)
            size = (side, side)
            feed = Feed(3, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), style_for(size), 4,
                        loader_workers=args.loader_workers)
            n_batches = max(2, len(split) // batch - 1)
            loader = loader_rate(split, feed, batch, n_batches)
            loader0 = loader_rate(split, Feed(**{**feed.__dict__, "loader_workers": 0}), batch, n_batches)
            steps = (2 if args.quick else 4) if arch == "resnet50" else (3 if args.quick else 8)
            train, fed = train_rates(arch, split, feed, batch, min(steps, n_batches - 1))
            row = {"arch": arch, "input": f"3x{side}x{side}", "batch": batch, "style": feed.style,
                   "loader_images_per_s": loader, "loader_images_per_s_in_process": loader0,
                   "train_images_per_s": train, "fed_images_per_s": fed, "loader_over_train": loader / train}
            rows.append(row)
            print(f"{arch:<9} 3x{side}x{side}  loader {loader:7.0f}/s ({args.loader_workers} workers; "
                  f"{loader0:6.0f}/s in process)  train step {train:7.1f}/s  fed by the loader {fed:7.1f}/s  "
                  f"loader/train {loader / train:6.1f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"loader_workers": args.loader_workers, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
