from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import export.bench as eb
from export.bench import BenchModel, describe_model, run_bench
from export.errors import ExportError

from .conftest import CIFAR, Exported


@pytest.mark.slow
def test_bench_two_models_side_by_side(subnet_folders: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    parent, half = subnet_folders
    real = eb.runtime_available
    monkeypatch.setattr(eb, "runtime_available",
                        lambda kind: (False, "no GPU in this test") if kind == "trt" else real(kind))
    res = run_bench([parent, half], ["torch-cpu", "ort-cpu", "trt"], [1, 4], warmup=1, iters=3,
                    threads=1, memory=False, exporter="legacy", work_dir=tmp_path / "work", log=lambda m: None)
    measured = {(c.model, c.runtime, c.batch) for c in res.cells}
    assert measured == {(m, r, b) for m in ("parent", "half") for r in ("torch-cpu", "ort-cpu") for b in (1, 4)}
    for c in res.cells:
        assert len(c.times_s) == 3 and c.error is None
        assert c.median_ms > 0 and c.p90_ms >= c.median_ms and c.p99_ms >= c.p90_ms
        assert c.throughput == pytest.approx(c.batch / (c.median_ms / 1e3))
        if c.model == "parent":
            assert c.speedup_vs_first == 1.0 and c.flops_ratio_vs_first == 1.0
        else:
            assert c.speedup_vs_first == pytest.approx(res.cell("parent", c.runtime, c.batch).median_ms / c.median_ms)
            assert 1.8 < c.flops_ratio_vs_first < 2.2  # sampled at 0.5 +- 0.02 of the parent's FLOPs
        if c.runtime == "torch-cpu":
            assert c.throughput_vs_torch == 1.0
    assert res.skipped == [{"model": m, "runtime": "trt", "reason": "no GPU in this test"} for m in ("parent", "half")]
    assert (tmp_path / "work" / "parent-3x32x32.onnx").is_file()  # exported once, kept in the work dir
    assert res.meta["threads"] == 1 and res.meta["interleaved"] and res.meta["input_shape"] == list(CIFAR)
    table = res.markdown()
    assert "| model | runtime | batch | median ms" in table and "speedup vs parent" in table
    assert "skipped: half on trt: no GPU in this test" in table
    data = json.loads(json.dumps(res.to_dict()))
    assert len(data["results"]) == 8 and data["results"][0]["iters"] == 3
    png = res.plot(tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeRunner:
    def __init__(self, name: str, log: list[str], delay: float = 0.0, fail_at: int | None = None) -> None:
        self.name, self.log, self.delay, self.fail_at = name, log, delay, fail_at

    @property
    def providers(self) -> list[str]:
        return [self.name]

    def info(self) -> dict[str, Any]:
        return {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.fail_at is not None and len(batch) >= self.fail_at:
            raise MemoryError("out of memory at this batch")
        self.log.append(self.name)
        time.sleep(self.delay)
        return batch[:, :1, 0, 0]

    def close(self) -> None:
        pass


def fake_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **kinds: dict[str, Any]) -> list[str]:
    log: list[str] = []
    monkeypatch.setattr(eb, "runtime_available", lambda kind: (True, ""))
    monkeypatch.setattr(eb, "_artifact", lambda *a: tmp_path)
    monkeypatch.setattr(eb, "make_runner", lambda kind, path, **kw: FakeRunner(kind, log, **kinds.get(kind, {})))
    return log


def test_runners_are_interleaved_and_rotated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = fake_setup(monkeypatch, tmp_path)
    model = BenchModel("m", onnx=tmp_path / "m.onnx", input_shape=(3, 8, 8))
    res = run_bench([model], ["ort-cpu", "torch-cpu", "ort-cuda"], [2], warmup=0, iters=4, memory=False,
                    log=lambda m: None)
    rounds = [log[i:i + 3] for i in range(0, 12, 3)]
    assert rounds == [["ort-cpu", "torch-cpu", "ort-cuda"], ["torch-cpu", "ort-cuda", "ort-cpu"],
                      ["ort-cuda", "ort-cpu", "torch-cpu"], ["ort-cpu", "torch-cpu", "ort-cuda"]]
    assert all(len(c.times_s) == 4 for c in res.cells)


def test_time_budget_and_a_runner_failing_at_one_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_setup(monkeypatch, tmp_path, **{"ort-cpu": {"delay": 0.01}, "ort-cuda": {"fail_at": 4}})
    model = BenchModel("m", onnx=tmp_path / "m.onnx", input_shape=(3, 8, 8))
    res = run_bench([model], ["ort-cpu", "ort-cuda"], [1, 4], warmup=1, seconds=0.05, memory=False,
                    log=lambda m: None)
    ok = res.cell("m", "ort-cpu", 4)
    assert ok is not None and len(ok.times_s) >= 3 and sum(ok.times_s) >= 0.05
    failed = res.cell("m", "ort-cuda", 4)
    assert failed is not None and failed.times_s == [] and "out of memory" in (failed.error or "")
    assert len(res.cell("m", "ort-cuda", 1).times_s) >= 3
    assert "error: MemoryError" in res.markdown()


def test_memory_probe_in_a_subprocess(r20: Exported) -> None:
    mem = eb.probe_memory("ort-cpu", r20.path, CIFAR, [1, 16], threads=1, spin=False, normalize=False)
    assert set(mem) == {1, 16}
    assert 0 < mem[1]["peak_rss_mb"] <= mem[16]["peak_rss_mb"] < 2000
    assert mem[1]["gpu_mem_mb"] is None


def test_bench_model_descriptions_and_errors(r20: Exported, tmp_path: Path,
                                             subnet_folders: tuple[Path, Path]) -> None:
    m = describe_model(r20.path)
    assert (m.onnx, m.input_shape, m.arch, m.folder) == (r20.path, CIFAR, "resnet20", None)
    assert m.macs == 40_813_184
    f = describe_model(subnet_folders[0] / "spec.json")
    assert f.folder == subnet_folders[0] and f.label == "parent"
    with pytest.raises(ExportError, match="is not a model"):
        describe_model(tmp_path)
    with pytest.raises(ExportError, match="at least one model"):
        run_bench([], ["ort-cpu"], [1])
    with pytest.raises(ExportError, match="re-export it at that size"):
        run_bench([r20.path], ["ort-cpu"], [1], input_shape=(3, 64, 64), memory=False, log=lambda m: None)
    res = run_bench([r20.path], ["torch-cpu", "ort-cpu"], [1], iters=2, warmup=0, memory=False, log=lambda m: None)
    assert [s["runtime"] for s in res.skipped] == ["torch-cpu"]
    assert "needs a subnetwork folder" in res.skipped[0]["reason"]
    assert len(res.cell("r20", "ort-cpu", 1).times_s) == 2
