"""Write Fashion-MNIST (or CIFAR-10/100) out as an image-folder tree of PNGs, the layout `pruneopt search --data DIR`
reads: ``OUT/train/<k>-<class>/NNNNN.png`` and ``OUT/val/<k>-<class>/NNNNN.png`` (the test set), class folders
numbered so that their sorted order is the data set's label order.

    python scripts/write_image_folder.py --data fashion-mnist --out runs/fmnist-tree [--data-dir DIR] [--limit N]

Grey images stay grey (mode L); ``--rgb`` writes them as three equal channels. Files that exist are kept, so
re-running resumes. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pruneopt.data.sources import open_data
from pruneopt.data.splits import Split


def folder_names(classes: tuple[str, ...]) -> list[str]:
    """``0-T-shirt_top``, ``1-Trouser``...: safe names whose sorted order is the label order."""
    width = len(str(len(classes) - 1))
    return [f"{i:0{width}d}-{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_') or 'class'}"
            for i, name in enumerate(classes)]


def write_split(split: Split, root: Path, names: list[str], rgb: bool, limit: int | None) -> int:
    """Write ``split`` under ``root/<class>/``; returns how many files were written (existing ones are kept)."""
    n = len(split) if limit is None else min(limit, len(split))
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(n):
        path = root / names[int(split.labels[i])] / f"{i:05d}.png"
        if path.exists():
            continue
        img = Image.fromarray(split.images[i])
        (img.convert("RGB") if rgb else img).save(path)
        written += 1
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist", choices=("fashion-mnist", "cifar10", "cifar100"))
    ap.add_argument("--data-dir", default=None, help="where the data set's files are (see pruneopt search --help)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rgb", action="store_true", help="write grey images as RGB")
    ap.add_argument("--limit", type=int, default=None, help="at most N images per split (a smaller tree)")
    args = ap.parse_args()
    data = open_data(args.data, args.data_dir)
    if not isinstance(data.train, Split) or not isinstance(data.test, Split):
        raise SystemExit(f"{args.data} is not held in memory")
    names = folder_names(data.classes)
    t0 = time.perf_counter()
    counts = {split: write_split(images, args.out / split, names, args.rgb, args.limit)
              for split, images in (("train", data.train), ("val", data.test))}
    total = sum(len(list((args.out / s).rglob("*.png"))) for s in ("train", "val"))
    print(f"{args.out}: wrote {counts['train']} training and {counts['val']} test images "
          f"({total} in the tree, {len(names)} classes) in {time.perf_counter() - t0:.0f} s")
    assert total == sum(np.minimum(len(s), args.limit or len(s)) for s in (data.train, data.test))


if __name__ == "__main__":
    main()
