"""The seed-to-seed spread of a search's parent: train the parent `pruneopt search` would train, for several
seeds, and print its validation and test accuracy -- the noise any comparison of two searches' figures lives in.

    python scripts/parent_spread.py --data fashion-mnist --seeds 0,1,2 [--epochs 1] [--train-limit 12000]
    python scripts/parent_spread.py --data runs/fmnist-tree --seeds 0,1,2

Seed ``s`` trains exactly the parent of ``pruneopt search --seed s`` with the same options (the quick preset's by
default: 1 epoch of 12,000 images, batch 128), on the same input (the data's size, channels and mean/std).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pruneopt.models import build
from pruneopt.search_config import SearchConfig
from pruneopt.seeds import derive_seed
from pruneopt.tasks.classification import TASK
from pruneopt.train import TrainConfig, top1_error, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        cfg = SearchConfig.quick(arch=args.arch, data=args.data, seed=seed, parent_epochs=args.epochs,
                                 train_limit=args.train_limit)
        feed = TASK.feed(cfg, "cpu", args.loader_workers)
        train_split, val, test = TASK.data(cfg, args.data_dir).load()
        t0 = time.perf_counter()
        torch.manual_seed(derive_seed(seed, "init"))
        model = build(TASK.source(cfg).spec)
        s = cfg.section
        train(model, train_split, TrainConfig(epochs=s.parent_epochs, batch_size=s.batch_size, lr=s.parent_lr),
              derive_seed(seed, "parent"), feed=feed)
        row = {"seed": seed, "val_accuracy": 1 - top1_error(model, val, feed=feed),
               "test_accuracy": 1 - top1_error(model, test, feed=feed), "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{args.data} seed {seed}: val accuracy {row['val_accuracy']:.4f}, test accuracy "
              f"{row['test_accuracy']:.4f} ({row['seconds']:.0f} s)", flush=True)
    test_acc = np.array([r["test_accuracy"] for r in rows])
    print(f"{args.data}: test accuracy {test_acc.mean():.4f} +- {test_acc.std(ddof=1) if len(rows) > 1 else 0:.4f} "
          f"(mean +- sd over {len(rows)} seeds), range {test_acc.min():.4f}-{test_acc.max():.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
