"""Do the papers' claims hold here? Fair, seeded, resumable tests with intervals and plain verdicts.

One sub-command per protocol. Each writes ``OUT/results.json``, ``OUT/table.md`` and a plot, prints the table,
and saves every finished cell (arm x condition x seed) in ``OUT/cells/`` so that a re-run skips it:

``tmp``  -- "Take More Positives": multi-positive vs single-positive in-batch losses, first with the true
            identities and 0 / 20 / 40 % injected label noise, then with DBSCAN pseudo-labels on data where the
            clusters mean something (``bench/claims_tmp.py``).
``pruning`` -- pruning spaces: one well-trained parent, one search per seed; refined vs initial, R* tested on
            held-out halves and against a random-R band, per-stage ("bucket") vs global R
            (``bench/claims_pruning.py``).

Example (3 seeds per arm; about an hour on an idle 2-core machine)::

    python bench/claims.py tmp --out runs/claims_tmp --jobs 2
    python bench/claims.py pruning --out runs/claims_pruning --workers 2   # --smoke: a few minutes

Shared pieces: :mod:`claims_stats` (mean ± SD, paired t intervals, verdicts, Markdown tables, grouped bar
plots) and :mod:`claims_cells` (resumable cells run in parallel processes). A new protocol is a module with an
``add_<name>_parser(sub)`` registered in :func:`main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for folder in (BENCH.parent, BENCH):  # the repository (pruneopt, reidserve) and the protocol modules
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from claims_pruning import add_pruning_parser  # noqa: E402
from claims_tmp import add_tmp_parser  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="protocol", required=True)
    add_tmp_parser(sub)
    add_pruning_parser(sub)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
