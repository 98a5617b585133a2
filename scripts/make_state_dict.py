"""Train a network on a classification data set and save its state dict in torchvision naming -- the kind of file
`pruneopt search --parent FILE.pth` takes (here: a stand-in for an ImageNet checkpoint, with its 1000-class head).

    python scripts/make_state_dict.py --data runs/fmnist-tree --arch resnet18 --classes 1000 --epochs 2 \\
        --out runs/r18-fmnist.pth

The network takes RGB input normalised with ImageNet's mean/std (what `pruneopt search` assumes for a colour
state-dict parent; grey images are repeated into three channels), at the data's size unless --input says
otherwise. With ``--classes`` larger than the data's class count, the head has that many outputs (the data's
labels are the first ones), as a network trained on a larger label set would. Resumes from ``OUT.ckpt``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pruneopt.common.params import parse_shape
from pruneopt.data.images import style_for
from pruneopt.loader import Feed
from pruneopt.models import build, get_arch
from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD
from pruneopt.tasks.classification_inputs import DataSettings
from pruneopt.train import TrainConfig, top1_error, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="as pruneopt search --data")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--classes", type=int, default=1000, help="outputs of the saved head")
    ap.add_argument("--input", default=None, help="HxW or 3xHxW (default: the data's size)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None, help="use only N training images")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    settings = DataSettings(args.data, args.data_dir, train_limit=args.train_limit)
    facts = settings.facts()
    size = parse_shape(args.input, default_channels=3)[1:] if args.input else facts.size
    feed = Feed(3, size, IMAGENET_MEAN, IMAGENET_STD, style_for(size), max(2, min(size) // 8),
                loader_workers=args.loader_workers)
    train_split, val, test = settings.load()
    if args.classes < facts.num_classes:
        raise SystemExit(f"--classes must be at least the data's {facts.num_classes}")
    torch.manual_seed(args.seed)
    model = build(get_arch(args.arch).default_spec(in_chans=3, num_classes=args.classes))
    t0 = time.perf_counter()
    steps = len(train_split) // args.batch_size

    def tick(step: int, total: int, loss: float) -> None:
        if step % max(1, steps // 5) == 0:
            rate = step * args.batch_size / (time.perf_counter() - t0)
            print(f"step {step}/{total} loss {loss:.3f} ({rate:.0f} images/s)", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    train(model, train_split, TrainConfig(args.epochs, args.batch_size, args.lr), args.seed,
          checkpoint=args.out.with_suffix(".ckpt"), progress=tick, feed=feed)
    val_err, test_err = top1_error(model, val, feed=feed), top1_error(model, test, feed=feed)
    torch.save(model.state_dict(), args.out)
    print(f"{args.out}: {args.arch}, {args.classes}-class head, input 3x{size[0]}x{size[1]}; val error {val_err:.4f}, "
          f"test error {test_err:.4f} after {args.epochs} epochs ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
