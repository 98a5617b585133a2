"""Does channel rounding matter in ONNX Runtime? resnet50 subnetworks at ~half FLOPs, widths rounded to 1, 8, 16.

For each ``round_to`` in {1, 8, 16}, samples ``--specs`` subnetworks of resnet50 from
``PruningSpace(parent, round_to=k, input_hw=(256, 128))`` in the same regime (0.5 +- 0.01 of the parent's FLOPs)
with the same seed, exports each to ONNX (verified at batch 1), and times all of them in ONNX Runtime CPU at
3x256x128, batch 1 and 8, interleaved round by round (``pruneopt bench`` machinery). Latency is divided by the
subnetwork's MACs, so subnetworks whose FLOPs differ slightly inside the band compare fairly: the figure of merit
is nanoseconds per MAC per image (lower is better). Prints one row per subnetwork and one summary row per rounding
(median over its subnetworks, and the ratio to round_to=8, the current default for ImageNet-style nets).

    python bench/export_rounding.py                   # 4 specs per rounding, 8 rounds
    python bench/export_rounding.py --specs 6 --iters 12
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

from export.bench import run_bench  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from pruneopt.common.logs import setup_logging  # noqa: E402
from pruneopt.complexity import count  # noqa: E402
from pruneopt.models import build, default_spec  # noqa: E402
from pruneopt.space import PruningSpace, Regime  # noqa: E402


def main() -> None:
    setup_logging("info")  # run_bench's progress lines on stderr
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--rounding", default="1,8,16")
    ap.add_argument("--specs", type=int, default=4, help="subnetworks per rounding")
    ap.add_argument("--regime", type=float, default=0.5)
    ap.add_argument("--band", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--exporter", default="legacy", choices=["auto", "dynamo", "legacy"],
                    help="legacy is ~3x faster to export here; ONNX Runtime optimises both graphs the same way")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "runs" / "export_rounding")))
    args = ap.parse_args()
    shape = (3, 256, 128)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    parent = default_spec(args.arch)
    parent_macs = count(parent, shape[1:]).macs
    models, info = [], {}
    for k in (int(v) for v in args.rounding.split(",")):
        space = PruningSpace(parent, round_to=k, input_hw=shape[1:])
        for i, spec in enumerate(space.sample(args.specs, Regime(args.regime, args.band), seed=args.seed).specs()):
            label = f"r{k}-{i}"
            path = export_onnx(build(spec).eval(), args.out / f"{label}.onnx", shape, exporter=args.exporter,
                               batches=(1,)).path
            macs = count(spec, shape[1:]).macs
            odd = sum(w % 8 != 0 for w in spec.widths)
            info[label] = {"round_to": k, "macs": macs, "fraction": macs / parent_macs, "widths_not_mult_8": odd}
            models.append(path)
            print(f"{label}: {macs / 1e9:.3f} GMACs ({macs / parent_macs:.3f} of the parent), {odd} of "
                  f"{len(spec.widths)} widths not a multiple of 8", file=sys.stderr)
    batches = [int(b) for b in args.batch.split(",")]
    res = run_bench(models, ["ort-cpu"], batches, input_shape=shape, warmup=args.warmup, iters=args.iters,
                    threads=args.threads, memory=False)
    rows = []
    for c in res.cells:
        meta = info[c.model]
        ns_per_mac = c.median_ms * 1e6 / (meta["macs"] * c.batch)
        rows.append({"model": c.model, **meta, "batch": c.batch, "median_ms": c.median_ms, "p90_ms": c.p90_ms,
                     "ns_per_mac": ns_per_mac})
    print(f"\n{args.arch} subnetworks at {args.regime} +- {args.band} of the FLOPs, ONNX Runtime CPU, "
          f"{res.meta['threads']} threads on {res.meta['machine']}, input 3x256x128, {args.iters} interleaved rounds; "
          f"load average {res.meta['load_avg_before']:.2f} -> {res.meta['load_avg_after']:.2f}\n")
    print("| subnetwork | round_to | GMACs | widths not x8 | batch | median ms | p90 ms | ns / MAC |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['round_to']} | {r['macs'] / 1e9:.3f} | {r['widths_not_mult_8']} | {r['batch']} | "
              f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['ns_per_mac']:.4f} |")
    print("\n| round_to | batch | median ns / MAC over subnetworks | min..max | vs round_to=8 |")
    print("|---|---|---|---|---|")
    summary = {}
    for b in batches:
        for k in sorted({r["round_to"] for r in rows}):
            vals = [r["ns_per_mac"] for r in rows if r["round_to"] == k and r["batch"] == b]
            summary[(k, b)] = (statistics.median(vals), min(vals), max(vals))
        base = summary.get((8, b), (None,))[0]
        for k in sorted({r["round_to"] for r in rows}):
            med, lo, hi = summary[(k, b)]
            rel = f"{med / base:.3f}" if base else "-"
            print(f"| {k} | {b} | {med:.4f} | {lo:.4f}..{hi:.4f} | {rel} |")
    (args.out / "rounding.json").write_text(json.dumps({"rows": rows, "meta": res.meta}, indent=2) + "\n")
    print(f"\n-> {args.out / 'rounding.json'} ({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
