"""How hard is the synthetic re-ID data? Untrained baselines on its test split.

Generates a synthetic dataset (or reads ``--data``), then prints mAP / rank-1 / mINP on the test
split (Market-1501 protocol) for:

(a) a randomly initialised small conv net (global-average-pooled features, cosine distance),
(b) raw pixels (downscaled to 32x16, L2-normalised),
(c) same-camera vs cross-camera retrieval for both: the gallery restricted to the query's camera
    (same-id same-camera images count as matches there) vs. to the other cameras,
(d) learnability checks: part-based colour histograms (hand-crafted, no training), the same
    features projected with LDA fitted on the *training* identities, and optionally
    (``--train-epochs N``) the small conv net trained with softmax on the training split using
    the P x K sampler and augmentations of :mod:`reidserve.data`.

Usage::

    python bench/synth_hardness.py --ids 100 --cams 6 --seed 0 [--train-epochs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reidserve.data import (
    PKSampler,
    ReidDataset,
    ReidImageDataset,
    SynthConfig,
    TestTransform,
    TrainTransform,
    generate,
    load_dataset,
    load_image,
    relabel,
)
from reidserve.metrics import ReidMetrics, evaluate, pairwise_distance


class TinyNet(nn.Module):
    """Four stride-2 stages of two conv-BN-ReLU each and global average pooling (``8 * width``-d features)."""

    def __init__(self, num_classes: int = 0, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.bnneck = nn.BatchNorm1d(chans[-1])
        self.head = nn.Linear(chans[-1], num_classes, bias=False) if num_classes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x).mean(dim=(2, 3))
        if self.training and self.head is not None:
            return self.head(self.bnneck(f))
        return f


@torch.no_grad()
def net_features(net: nn.Module, images: np.ndarray, batch: int = 256) -> np.ndarray:
    net.eval()
    out = [net(torch.from_numpy(images[i : i + batch])).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out)


def load_split(items, size: tuple[int, int]) -> np.ndarray:
    tf = TestTransform(size)
    return np.stack([tf(load_image(it.path)) for it in items])


def pixel_features(items) -> np.ndarray:
    tf = TestTransform((32, 16))
    x = np.stack([tf(load_image(it.path)).ravel() for it in items])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def colour_histograms(items, parts: int = 6, bins: int = 8) -> np.ndarray:
    """Per horizontal stripe, a joint-free HSV histogram (bins per channel), sqrt-normalised."""
    from PIL import Image

    feats = []
    for it in items:
        hsv = np.asarray(Image.open(it.path).convert("RGB").convert("HSV"), dtype=np.int64) * bins // 256
        h = hsv.shape[0]
        f = []
        for p in range(parts):
            band = hsv[p * h // parts : (p + 1) * h // parts].reshape(-1, 3)
            for c in range(3):
                f.append(np.bincount(band[:, c], minlength=bins) / band.shape[0])
        feats.append(np.sqrt(np.concatenate(f)))
    x = np.asarray(feats, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ids_cams(items) -> tuple[np.ndarray, np.ndarray]:
    return np.array([it.pid for it in items]), np.array([it.camid for it in items])


def run_protocols(qf: np.ndarray, gf: np.ndarray, ds: ReidDataset, metric: str) -> dict[str, ReidMetrics]:
    d = pairwise_distance(qf, gf, metric)
    qp, qc = ids_cams(ds.query)
    gp, gc = ids_cams(ds.gallery)
    return {p: evaluate(d, qp, gp, qc, gc, protocol=p) for p in ("market", "same_camera", "cross_camera")}


def train_tiny(ds: ReidDataset, size: tuple[int, int], epochs: int, seed: int) -> TinyNet:
    torch.manual_seed(seed)
    items, mapping = relabel(ds.train)
    net = TinyNet(num_classes=len(mapping), width=16)
    data = ReidImageDataset(items, TrainTransform(size, pad=max(2, size[1] // 12)), seed=seed, cache=True)
    sampler = PKSampler.from_items(items, p=16, k=4, seed=seed)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(epochs):
        net.train()
        data.set_epoch(epoch)
        total, n = 0.0, 0
        for x, y, _, _ in loader:
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / max(n, 1):.3f}", flush=True)
    return net


def report(results: dict[str, dict[str, ReidMetrics]]) -> bool:
    """Print the table and the two checks (random features score low, cross-camera is harder); both passed?"""
    print()
    print(f"{'features':<32} {'protocol':<13} {'mAP':>6} {'R1':>6} {'R5':>6} {'mINP':>6} {'queries':>7}")
    for name, per in results.items():
        for proto, m in per.items():
            print(
                f"{name:<32} {proto:<13} {100 * m.mAP:6.2f} {100 * m.rank1:6.2f} {100 * m.rank5:6.2f} "
                f"{100 * m.mINP:6.2f} {m.num_valid_queries:7d}"
            )
    rnd = results["random_init_convnet"]["market"].mAP
    pix = results["raw_pixels"]
    print()
    print(f"random-init conv net mAP {100 * rnd:.2f}% (target < 20%): {'OK' if rnd < 0.2 else 'TOO EASY'}")
    harder = pix["cross_camera"].mAP < pix["same_camera"].mAP
    print(
        f"raw pixels: same-camera mAP {100 * pix['same_camera'].mAP:.2f}% vs cross-camera "
        f"{100 * pix['cross_camera'].mAP:.2f}%: cross-camera {'harder (OK)' if harder else 'NOT harder'}"
    )
    return rnd < 0.2 and harder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="existing dataset folder (default: generate one in a temp folder)")
    ap.add_argument("--ids", type=int, default=100)
    ap.add_argument("--cams", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train-epochs", type=int, default=0, help="also train the tiny net this many epochs")
    ap.add_argument("--json", help="write the figures to this JSON file")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is often fastest for this tiny net on small CPUs)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="synth_hardness_") as tmp:
        if args.data:
            ds = load_dataset(args.data)
        else:
            t0 = time.perf_counter()
            res = generate(
                SynthConfig(ids=args.ids, cams=args.cams, seed=args.seed), tmp, workers=args.workers
            )
            print(
                f"generated {res.num_train + res.num_query + res.num_gallery} images "
                f"({args.ids} ids x {args.cams} cams, seed {args.seed}) in {time.perf_counter() - t0:.1f}s"
            )
            ds = load_dataset(tmp)
        print(ds.summary())
        size = load_image(ds.query[0].path).shape[:2]
        results: dict[str, dict[str, ReidMetrics]] = {}

        torch.manual_seed(args.seed)
        net = TinyNet()
        q_img, g_img = load_split(ds.query, size), load_split(ds.gallery, size)
        results["random_init_convnet"] = run_protocols(
            net_features(net, q_img), net_features(net, g_img), ds, "cosine"
        )
        results["raw_pixels"] = run_protocols(
            pixel_features(ds.query), pixel_features(ds.gallery), ds, "euclidean"
        )
        qh, gh = colour_histograms(ds.query), colour_histograms(ds.gallery)
        results["colour_histograms"] = run_protocols(qh, gh, ds, "euclidean")

        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        th = colour_histograms(ds.train)
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=0.1).fit(th, [it.pid for it in ds.train])
        results["colour_histograms_lda_trained"] = run_protocols(
            lda.transform(qh), lda.transform(gh), ds, "cosine"
        )
        if args.train_epochs > 0:
            t0 = time.perf_counter()
            trained = train_tiny(ds, size, args.train_epochs, args.seed)
            print(f"  trained in {time.perf_counter() - t0:.1f}s")
            results[f"convnet_trained_{args.train_epochs}ep"] = run_protocols(
                net_features(trained, q_img), net_features(trained, g_img), ds, "cosine"
            )

    ok = report(results)
    if args.json:
        Path(args.json).write_text(
            json.dumps({k: {p: m.to_dict() for p, m in v.items()} for k, v in results.items()}, indent=2)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
