"""TMP training figures: Jaccard-distance cost, training throughput, and TMP vs. the cluster-centroid loss.

The cluster-centroid loss (`--loss centroid`) is another loss family (InfoNCE against cluster centroids), not
TMP's loss with one positive; the fair in-batch single-positive arms are in `bench/claims.py tmp`.

Sub-commands (each takes ``--threads``, default 1: on a shared 2-core machine one thread is much faster
than two)::

    # k-reciprocal Jaccard distance + DBSCAN on random clustered features (Market-1501's training size)
    python bench/tmp_train.py jaccard --n 12936 --dim 2048 --ids 751

    # training images per second (two augmented views each) and feature-extraction images per second
    python bench/tmp_train.py throughput --data runs/synth200_64x32 --arch resnet18 --size 64x32 --batch 16x4

    # mAP/R1 before training, after TMP, after the same budget with the cluster-centroid loss
    python bench/tmp_train.py compare --data runs/synth200_64x32 --out runs/cmp --arch resnet18 --size 64x32 \\
        --epochs 8 --iters 25 --batch 16x4 --eval-every 2

    # a source-domain backbone (supervised, on *other* synthetic people and cameras), the stand-in for the
    # ImageNet weights unsupervised re-ID starts from; then compare from it with --backbone
    python bench/tmp_train.py pretrain --data runs/synth200_64x32_seed1 --out runs/src_r18 --arch resnet18 \\
        --size 64x32 --steps 150
    python bench/tmp_train.py compare ... --backbone runs/src_r18

``compare`` runs ``reidserve eval --random`` and ``reidserve train --loss tmp|centroid`` as subprocesses
into ``OUT/{tmp,centroid}``; an interrupted comparison resumes where it stopped (the runs are resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pruneopt.common.logs import setup_logging
from pruneopt.common.params import parse_pair

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cmd_jaccard(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from reidserve.cluster import jaccard_distance, k_reciprocal_encoding, knn

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.ids, args.dim)).astype(np.float32)
    labels = rng.integers(0, args.ids, args.n)
    x = centres[labels] + args.spread * rng.standard_normal((args.n, args.dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rss0 = _peak_rss_mb()
    print(f"N={args.n} D={args.dim} ids={args.ids} threads={args.threads} k1={args.k1} k2={args.k2}", flush=True)
    t = time.perf_counter()
    knn(x, args.k1, threads=args.threads)
    t_knn = time.perf_counter() - t
    t = time.perf_counter()
    v = k_reciprocal_encoding(x, args.k1, args.k2, threads=args.threads)
    t_enc = time.perf_counter() - t
    enc_nnz = v.nnz / args.n
    del v
    t = time.perf_counter()
    cut = jaccard_distance(x, args.k1, args.k2, max_distance=args.eps, threads=args.threads)
    t_cut = time.perf_counter() - t
    rss_cut = _peak_rss_mb() - rss0  # peak so far: what clustering needs (pairs within eps only)
    t = time.perf_counter()
    full = jaccard_distance(x, args.k1, args.k2, threads=args.threads)
    t_full = time.perf_counter() - t
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import adjusted_rand_score

    t = time.perf_counter()
    pred = DBSCAN(eps=args.eps, min_samples=4, metric="precomputed").fit(cut).labels_
    t_db = time.perf_counter() - t
    res = {
        "knn_s": round(t_knn, 2),
        "encoding_s (incl. knn)": round(t_enc, 2),
        "jaccard_all_pairs_s": round(t_full, 2),
        "jaccard_within_eps_s": round(t_cut, 2),
        "dbscan_s": round(t_db, 3),
        "encoding_nnz_per_row": round(enc_nnz, 1),
        "stored_pairs_per_row_all": round(full.nnz / args.n, 1),
        "stored_pairs_per_row_within_eps": round(cut.nnz / args.n, 1),
        "dense_matrix_MB": round(args.n * args.n * 4 / 2**20, 1),
        "sparse_all_pairs_MB": round(full.nnz * 12 / 2**20, 1),
        "peak_rss_MB_knn_to_clustering": round(rss_cut, 1),
        "peak_rss_MB_incl_all_pairs": round(_peak_rss_mb() - rss0, 1),
        "clusters": int(pred.max()) + 1,
        "outliers": int((pred < 0).sum()),
        "ari_vs_planted": round(float(adjusted_rand_score(labels, pred)), 4),
    }
    print(json.dumps(res, indent=2))


def cmd_throughput(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from reidserve.data import load_dataset
    from reidserve.model import HeadConfig, build_reid_model
    from reidserve.train import (
        DecodedImages,
        TwoViewSet,
        compute_loss,
        extract_features,
        parse_batch,
        train_transform,
    )

    p, k = parse_batch(args.batch)
    ds = load_dataset(args.data)
    size = parse_pair(args.size, "--size", "HxW, e.g. 64x32")
    model = build_reid_model(args.arch, HeadConfig(input_size=size), seed=0)
    images = DecodedImages(ds.train, size, cache=True)
    for i in range(min(len(images), p * k * (args.steps + 1))):
        images.get(i)  # decode outside the timing
    views = TwoViewSet(images, train_transform(size), seed=0)
    views.labels = np.repeat(np.arange(len(images) // k + 1), k)[: len(images)]
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=3.5e-4, weight_decay=5e-4)
    model.train()
    times = []
    for step in range(args.steps + 1):
        keys = [(step * p * k + j, step, j) for j in range(p * k)]
        t = time.perf_counter()
        batch = [views[key] for key in keys]
        x = torch.cat([torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])])
        y = torch.tensor([b[2] for b in batch] * 2)
        loss = compute_loss(model(x), y, None, loss="tmp")["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    per_step = float(np.median(times[1:]))  # the first step warms up
    n_eval = min(len(images), 512)
    t = time.perf_counter()
    extract_features(model, DecodedImages(ds.train[:n_eval], size, cache=False), batch_size=128)
    t_ext = time.perf_counter() - t
    print(
        json.dumps(
            {
                "arch": args.arch,
                "size": args.size,
                "batch": args.batch,
                "threads": args.threads,
                "train_images_per_s": round(p * k / per_step, 2),
                "train_views_per_s": round(2 * p * k / per_step, 2),
                "extract_images_per_s (incl. decoding)": round(n_eval / t_ext, 1),
            },
            indent=2,
        )
    )


def cmd_pretrain(args: argparse.Namespace) -> None:
    from reidserve.train import PretrainConfig, parse_batch, pretrain_backbone

    p, k = parse_batch(args.batch)
    cfg = PretrainConfig(data=args.data, arch=args.arch, size=parse_pair(args.size, "--size", "HxW, e.g. 64x32"),
                         p=p, k=k, steps=args.steps, lr=args.lr, seed=args.seed, color_jitter=args.color_jitter,
                         eval_every=args.eval_every, threads=args.threads)
    pretrain_backbone(cfg, args.out)
    print(f"backbone -> {args.out} (use it with --backbone)")


def _run(cmd: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    print(r.stdout, end="", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"command failed with exit code {r.returncode}")
    return r.stdout


def cmd_compare(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "reidserve.cli"]
    common = ["--data", args.data, "--size", args.size, "--threads", str(args.threads)]
    source = ["--backbone", args.backbone] if args.backbone else ["--arch", args.arch]
    before_file = out / "before.json"
    if not before_file.is_file():
        fresh = source if args.backbone else [*source, "--random"]
        text = _run([*cli, "eval", *fresh, "--seed", str(args.seed), *common, "--json"], args.threads)
        before_file.write_text(text.strip().splitlines()[-1] + "\n")
    before = json.loads(before_file.read_text())
    train = [
        "train", *source, *common, "--epochs", str(args.epochs), "--iters", str(args.iters),
        "--batch", args.batch, "--eval-every", str(args.eval_every), "--seed", str(args.seed), "--no-progress",
    ]  # fmt: skip
    runs = {"tmp": ["--loss", "tmp"], "centroid": ["--loss", "centroid"]}
    if args.with_memory:
        runs["tmp+memory"] = ["--loss", "tmp", "--memory"]
    rows = []
    for name, extra in runs.items():
        folder = out / name.replace("+", "_")
        t = time.perf_counter()
        _run([*cli, *train, "--out", str(folder), *extra], args.threads)
        recs = [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines() if x.strip()]
        rows.append((name, recs, time.perf_counter() - t))
    print()
    print(f"{'model':<14} {'mAP':>6} {'R1':>6} {'mINP':>6}   clusters/outliers/ARI per epoch")
    start = "backbone" if args.backbone else "random init"
    print(f"{start:<14} {100 * before['mAP']:6.2f} {100 * before['rank1']:6.2f} {100 * before['mINP']:6.2f}")
    for name, recs, _ in rows:
        val = recs[-1]["val"]
        traj = " ".join(f"{r['clusters']}/{r['outliers']}/{r['ari']:.2f}" for r in recs)
        print(f"{name:<14} {100 * val['mAP']:6.2f} {100 * val['rank1']:6.2f} {100 * val['mINP']:6.2f}   {traj}")
    print()
    for name, recs, _ in rows:
        curve = ", ".join(f"e{r['epoch']} {100 * r['val']['mAP']:.2f}/{100 * r['val']['rank1']:.2f}"
                          for r in recs if r.get("val"))
        secs = sum(sum(r["seconds"].values()) for r in recs)
        ips = np.mean([r["train_images_per_s"] for r in recs])
        print(f"{name}: mAP/R1 by epoch: {curve}; {secs / 60:.1f} min logged, {ips:.1f} train images/s")


def main() -> None:
    setup_logging("info")  # the progress lines of pretrain_backbone on stderr
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    j = sub.add_parser("jaccard", help="Jaccard distance + DBSCAN timing on random clustered features")
    j.add_argument("--n", type=int, default=12936)
    j.add_argument("--dim", type=int, default=2048)
    j.add_argument("--ids", type=int, default=751)
    j.add_argument("--spread", type=float, default=0.9, help="noise norm relative to the centre norm")
    j.add_argument("--k1", type=int, default=30)
    j.add_argument("--k2", type=int, default=6)
    j.add_argument("--eps", type=float, default=0.6)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--threads", type=int, default=1)
    t = sub.add_parser("throughput", help="training and extraction images per second")
    t.add_argument("--data", required=True)
    t.add_argument("--arch", default="resnet18")
    t.add_argument("--size", default="64x32")
    t.add_argument("--batch", default="16x4")
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("compare", help="random init vs TMP vs cluster-centroid loss, same budget")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--arch", default="resnet18")
    c.add_argument("--size", default="64x32")
    c.add_argument("--epochs", type=int, default=8)
    c.add_argument("--iters", type=int, default=25)
    c.add_argument("--batch", default="16x4")
    c.add_argument("--eval-every", type=int, default=2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--with-memory", action="store_true", help="also run TMP + centroid memory")
    c.add_argument("--backbone", default=None, help="start from this backbone folder instead of --arch at random")
    c.add_argument("--threads", type=int, default=1)
    pt = sub.add_parser("pretrain", help="supervised source-domain backbone (cosine softmax on true ids)")
    pt.add_argument("--data", required=True)
    pt.add_argument("--out", required=True)
    pt.add_argument("--arch", default="resnet18")
    pt.add_argument("--size", default="64x32")
    pt.add_argument("--batch", default="16x4")
    pt.add_argument("--steps", type=int, default=150, help="optimiser steps of P x K images")
    pt.add_argument("--eval-every", type=int, default=50, help="steps between source-domain evaluations")
    pt.add_argument("--lr", type=float, default=3e-3)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--color-jitter", type=float, default=0.0, help="camera-like colour jitter strength (0: off)")
    pt.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    commands = {"jaccard": cmd_jaccard, "throughput": cmd_throughput, "compare": cmd_compare, "pretrain": cmd_pretrain}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
