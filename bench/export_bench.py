"""Side-by-side runtimes for resnet50 and a half-FLOPs subnetwork at the re-ID input size 3x256x128.

Builds the resnet50 parent (random weights, batch norms with realistic statistics), samples one subnetwork at
0.5 +- 0.01 of its FLOPs at 256x128 (``PruningSpace`` defaults: keep ratios 0.2..1, widths rounded to 8, seed 0),
thins the parent to it, saves both as subnetwork folders, and runs ``pruneopt bench`` on them: every runtime
interleaved round by round, so the shared machine's load hits all of them alike. Prints the markdown table
(ONNX Runtime vs torch throughput per model, pruned vs parent latency speedup next to the FLOPs ratio) and
writes ``bench.json`` / ``bench.png`` to the output folder.

    python bench/export_bench.py                           # CPU: torch-cpu, ort-cpu at batch 1 and 32
    python bench/export_bench.py --runtimes torch,ort-cuda,ort-trt,trt --batch 1,8,32 --out $OUT   # on a GPU

The same measurement by hand, once the folders exist:

    pruneopt bench runs/export_bench/resnet50 runs/export_bench/half --input 3x256x128 \\
        --runtimes torch-cpu,ort-cpu --batch 1,32
"""

from __future__ import annotations

import os

# OpenMP reads this when torch loads: torch's idle threads must not spin-wait while ONNX Runtime is timed
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402

from export.bench import run_bench  # noqa: E402
from export.inputs import parse_shape  # noqa: E402
from pruneopt.checkpoint import save_subnet  # noqa: E402
from pruneopt.common.logs import setup_logging  # noqa: E402
from pruneopt.complexity import count  # noqa: E402
from pruneopt.models import build, default_spec  # noqa: E402
from pruneopt.space import PruningSpace, Regime  # noqa: E402
from pruneopt.thinning import thin  # noqa: E402


def realistic_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batch norms with trained-looking statistics (fresh ones are identities, and activations then explode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 1.0)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def make_models(out: Path, arch: str, shape: tuple[int, int, int], regime: float, seed: int) -> tuple[Path, Path]:
    parent = realistic_bn(build(default_spec(arch))).eval()
    space = PruningSpace(parent.spec, input_hw=shape[1:])
    samples = space.sample(1, Regime(regime, 0.01), seed=seed)
    child = thin(parent, samples.spec(0)).eval()
    pm, cm = count(parent.spec, shape[1:]).macs, count(child.spec, shape[1:]).macs
    print(f"{arch} parent {pm / 1e9:.3f} GMACs, subnetwork {cm / 1e9:.3f} GMACs (FLOPs ratio {pm / cm:.2f}) at "
          f"{'x'.join(map(str, shape))}", file=sys.stderr)
    return save_subnet(parent, out / arch), save_subnet(child, out / "half")


def main() -> None:
    setup_logging("info")  # run_bench's progress lines on stderr
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--input", default="3x256x128")
    ap.add_argument("--regime", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runtimes", default="torch-cpu,ort-cpu")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fp16", action="store_true", help="FP16 for ort-trt / trt")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "runs" / "export_bench")))
    args = ap.parse_args()
    shape = parse_shape(args.input)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    parent, half = make_models(args.out, args.arch, shape, args.regime, args.seed)  # type: ignore[arg-type]
    res = run_bench([parent, half], args.runtimes.split(","), [int(b) for b in args.batch.split(",")],
                    input_shape=shape, warmup=args.warmup, iters=args.iters, threads=args.threads,  # type: ignore[arg-type]
                    memory=not args.no_memory, exporter=args.exporter, fp16=args.fp16, work_dir=args.out / "work")
    m = res.meta
    print(f"\n{args.arch} vs half-FLOPs subnetwork, input {args.input}, {m['threads']} threads on {m['machine']}, "
          f"{args.iters} interleaved rounds after {args.warmup} warm-up, OMP_WAIT_POLICY={m['omp_wait_policy']}, "
          f"ORT spinning {'on' if m['ort_spin'] else 'off'}; load average {m['load_avg_before']:.2f} -> "
          f"{m['load_avg_after']:.2f}; versions {json.dumps(m['versions'])}")
    print(res.markdown())
    (args.out / "bench.json").write_text(json.dumps(res.to_dict(), indent=2) + "\n")
    res.plot(args.out / "bench.png")
    print(f"\n-> {args.out / 'bench.json'}, {args.out / 'bench.png'} ({time.time() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
