"""Compare pruneopt's analytic counts with independent counters (fvcore, ptflops), per architecture.

    pip install fvcore ptflops   # only for this benchmark
    python bench/complexity_check.py [--json FILE]

Prints, for every architecture at its default input, our MACs and params and the ratio of each independent
counter's figure to ours. fvcore counts one "flop" per multiply-accumulate of convs and linears (our convention);
ptflops' "aten" backend counts the same ops. Both count parameters from the module.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from pruneopt.complexity import count
from pruneopt.models import default_spec, get_arch, list_archs


def fvcore_macs(model: torch.nn.Module, shape: tuple[int, ...]) -> int | None:
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None
    fca = FlopCountAnalysis(model, torch.zeros(1, *shape))
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(fca.total())


def ptflops_counts(model: torch.nn.Module, shape: tuple[int, ...]) -> tuple[int | None, int | None]:
    try:
        from ptflops import get_model_complexity_info
    except ImportError:
        return None, None
    macs, params = get_model_complexity_info(model, shape, as_strings=False, print_per_layer_stat=False,
                                             backend="aten", verbose=False)
    return int(macs), int(params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    print(f"{'arch':<12} {'input':<10} {'MACs (ours)':>15} {'params (ours)':>14} {'fvcore/ours':>12} "
          f"{'ptflops/ours':>13} {'ptflops params/ours':>20}")
    for name in list_archs():
        a = get_arch(name)
        spec = default_spec(name)
        ours = count(spec)
        model = a.build(spec).eval()
        fv = fvcore_macs(model, a.default_input)
        pm, pp = ptflops_counts(model, a.default_input)

        def r(x: int | None, y: int) -> str:
            return "n/a" if x is None else f"{x / y:.4f}"

        row = {"arch": name, "input": list(a.default_input), "macs": ours.macs, "params": ours.params,
               "fvcore_macs": fv, "ptflops_macs": pm, "ptflops_params": pp}
        rows.append(row)
        print(f"{name:<12} {'x'.join(map(str, a.default_input)):<10} {ours.macs:>15,} {ours.params:>14,} "
              f"{r(fv, ours.macs):>12} {r(pm, ours.macs):>13} {r(pp, ours.params):>20}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
