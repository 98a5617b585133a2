"""Smoke test of bench/loss.py on tiny shapes (the real figures come from running it by hand)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "loss.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_loss", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_bench_runs_side_by_side_and_writes_json(compiled_backend: str, bench, tmp_path: Path, capsys) -> None:
    out = tmp_path / "loss.json"
    argv = ["--shape", "12,300,16", "--shape", "8,8,32,inbatch", "--methods", "ext,eager", "--reps", "2"]
    rows = bench.main(argv + ["--json", str(out)])
    printed = capsys.readouterr().out
    assert "x eager" in printed and "custom0" in printed and "custom1" in printed
    data = json.loads(out.read_text())
    assert data["meta"]["ext_backend"] == compiled_backend
    assert [(r["shape"], r["method"]) for r in data["results"]] == [
        ("custom0", "ext"),
        ("custom0", "eager"),
        ("custom1", "ext"),
        ("custom1", "eager"),
    ]
    for ext, eager in zip(rows[::2], rows[1::2], strict=True):
        assert ext.error is None and eager.error is None
        assert len(ext.times_s) == 2 and ext.median_s > 0
        assert math.isclose(ext.loss, eager.loss, rel_tol=1e-4)  # same problem, same loss
        assert ext.speedup_vs_eager == pytest.approx(eager.median_s / ext.median_s)
        if sys.platform.startswith("linux"):
            assert ext.peak_mem_bytes is not None and eager.peak_mem_bytes is not None
    assert rows[2].in_batch and rows[2].M == rows[2].B == 8


def test_bench_quick_flags_shrink_the_default_shapes(bench) -> None:
    args = bench.parse_args(["--quick"])
    shapes = bench.resolve_shapes(args, argv_has_shapes=False)
    assert args.reps == 2
    assert [s[0] for s in shapes] == ["inbatch", "bank16k", "bank100k"]
    inbatch, bank16k, bank100k = shapes
    assert inbatch[1] == inbatch[2] == 32 and inbatch[4]  # B = M for in-batch
    assert bank16k[1:4] == (512, 2048, 2048) and bank100k[1:4] == (1024, 12500, 256)
