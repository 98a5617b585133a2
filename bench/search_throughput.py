"""Candidates per hour on this machine: in-process vs a local process pool vs Ray, side by side.

    python bench/search_throughput.py [--arch resnet20] [-n 12] [--workers 2] [--parent DIR] [--json FILE]
    python bench/search_throughput.py --data runs/fmnist-tree --devices cpu,cuda --runners in-process -n 8

Evaluates the same ``n`` subnetworks (resnet20 at 0.5 +- 0.01 of its FLOPs on Fashion-MNIST, the search's default
candidate budget: adaptive BN, 60 fine-tune steps, 2000 validation images) with each evaluation pool
(:mod:`pruneopt.pools`) and prints wall time, candidates per hour and the overhead of each parallel pool (its
start-up included) relative to ideal scaling of the in-process one. Without ``--parent`` a randomly initialised
parent is used: evaluation cost does not depend on the weights. The Ray row is skipped when Ray is not installed.
``--data`` takes any classification data (an image folder is decoded by ``--loader-workers`` processes) and
``--devices cpu,cuda`` repeats every runner on each device (candidates/hour CPU vs GPU; errors then differ in the
last digits, as float32 and bf16 do).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pruneopt.checkpoint import save_subnet
from pruneopt.devices import worker_devices
from pruneopt.loader import Feed
from pruneopt.models import build, get_arch
from pruneopt.pools import Outcome, make_evaluation_pool
from pruneopt.space import PruningSpace, Regime
from pruneopt.store import CandidateJob
from pruneopt.tasks.classification import ClassificationSection, ClassificationSettings
from pruneopt.tasks.classification_inputs import DataSettings, ParentSource, plan_feed


def _error(outcome: Outcome) -> float:
    if outcome.result is None:
        raise SystemExit(f"candidate {outcome.job.candidate_id} failed: {outcome.message}")
    return outcome.result.error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("-n", type=int, default=12, help="candidates per runner")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parent", help="a trained parent folder (default: random init)")
    ap.add_argument("--finetune-steps", type=int, default=ClassificationSection.finetune_steps)
    ap.add_argument("--data", default="fashion-mnist", help="as pruneopt search --data")
    ap.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    ap.add_argument("--runners", default="in-process,local,ray", help="which of in-process, local, ray")
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    data = DataSettings(args.data)
    facts = data.facts()
    feed = plan_feed(facts, ParentSource("trained", None, get_arch(args.arch).default_spec()), None, None, None)
    feed = Feed.from_dict({**feed.to_dict(), "loader_workers": args.loader_workers})

    with tempfile.TemporaryDirectory() as tmp:
        parent = args.parent
        spec = get_arch(args.arch).default_spec(in_chans=feed.channels, num_classes=facts.num_classes)
        if parent is None:
            torch.manual_seed(0)
            parent = str(save_subnet(build(spec), Path(tmp) / "parent"))
        specs = list(PruningSpace(spec, input_hw=feed.size).sample(args.n, Regime(0.5, 0.01), seed=0).specs())
        jobs = [CandidateJob(i, s.to_json(), 1000 + i) for i, s in enumerate(specs)]

        rows = []
        runners = {"in-process": ("in-process", "local", 1), "local": (f"local pool x{args.workers}", "local",
                                                                       args.workers),
                   "ray": (f"ray x{args.workers}", "ray", args.workers)}
        configs = [(f"{runners[key][0]} {device}", *runners[key][1:], device)
                   for device in args.devices.split(",") for key in args.runners.split(",")]
        errors: dict[str, list[float]] = {}
        for name, backend, workers, device in configs:
            settings = ClassificationSettings(parent_dir=parent, data=data, finetune_steps=args.finetune_steps,
                                              feed=feed.to_dict(), device=device).to_dict()
            if backend == "ray":
                try:
                    import ray  # noqa: F401
                except ImportError:
                    print(f"{name}: skipped (ray is not installed)")
                    continue
            t0 = time.perf_counter()
            got: dict[int, float] = {}
            with make_evaluation_pool(backend, "classification", settings, workers, threads=1,
                                      devices=worker_devices(device, workers)) as pool:
                started = time.perf_counter()
                def record(o: Outcome, got: dict[int, float] = got) -> None:
                    got[o.job.candidate_id] = _error(o)

                pool.map(jobs, lambda j, w: None, record)
            wall = time.perf_counter() - t0
            errors[name] = [got[i] for i in range(len(jobs))]
            rows.append({"runner": name, "workers": workers, "wall_s": wall, "startup_s": started - t0,
                         "candidates_per_hour": 3600 * len(jobs) / wall})
            print(f"{name:<18} {wall:7.1f} s (start-up {started - t0:5.1f} s)  "
                  f"{rows[-1]['candidates_per_hour']:7.0f} candidates/hour", flush=True)

    base = rows[0]
    print(f"\n{'runner':<18} {'cand/h':>8} {'x in-process':>13} {'efficiency vs ideal':>20}")
    for r in rows:
        speedup = r["candidates_per_hour"] / base["candidates_per_hour"]
        r["speedup"] = speedup
        r["efficiency"] = speedup / r["workers"]
        print(f"{r['runner']:<18} {r['candidates_per_hour']:8.0f} {speedup:13.2f} {r['efficiency']:20.2f}")
    same = all(v == errors[rows[0]["runner"]] for v in errors.values())
    print(f"identical errors across runners: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "identical": same}, indent=2))


if __name__ == "__main__":
    main()
