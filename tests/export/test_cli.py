from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pruneopt.cli import main

from .conftest import Exported


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("pruneopt: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_export_a_subnetwork_folder(capsys: pytest.CaptureFixture[str], subnet_folders: tuple[Path, Path],
                                    tmp_path: Path) -> None:
    out_path = tmp_path / "half.onnx"
    code, out, _ = run(capsys, "export", str(subnet_folders[1]), "--onnx", "--out", str(out_path), "--exporter",
                       "legacy", "--verify-batches", "1,7", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["onnx"] == str(out_path) and data["exporter"] == "legacy"
    assert data["verification"]["passed"] and len(data["verification"]["checks"]) == 4
    assert data["metadata"]["pruneopt.arch"] == "resnet20" and out_path.is_file()


def test_export_arch_reference_human_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "export", "--arch", "resnet20", "--features-only", "--normalize", "--input",
                       "3x32x32", "--out", str(tmp_path / "r.onnx"), "--exporter", "legacy", "--verify-batches", "1")
    assert code == 0
    assert "legacy exporter" in out and "output embedding[64] L2-normalised" in out and "verified" in out


@pytest.mark.parametrize("argv, message", [
    (["export", "/no/such/winner", "--onnx"], "is not a model folder; give a subnetwork folder (spec.json + "),
    (["export", "--arch", "resnet20", "--fp16"], "--fp16 applies to TensorRT engines"),
    (["export", "--arch", "nope"], "unknown architecture"),
    (["export"], "exactly one"),
    (["export", "--arch", "resnet20", "--input", "3xAx4"], "--input must look like"),
    (["export", "--arch", "resnet20", "--mean", "0.5,0.5,0.5"], "both --mean and --std"),
    (["bench"], "at least one MODEL"),
    (["bench", "/no/such/model.onnx"], "does not exist"),
    (["bench", "--arch", "resnet20", "--runtimes", "tflite"], "unknown runtime 'tflite'"),
    (["bench", "--arch", "resnet20", "--batch", "0,4"], "batch sizes must be positive"),
])
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in one_error_line(err)


def test_onnx_path_without_trt_and_missing_tensorrt(capsys: pytest.CaptureFixture[str], r20: Exported,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run(capsys, "export", str(r20.path))
    assert code == 2 and "pass --trt" in one_error_line(err)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, _, err = run(capsys, "export", str(r20.path), "--trt", "--fp16")
    assert code == 2 and "tensorrt is not installed: pip install pruneopt[trt]" in one_error_line(err)


def test_broken_onnx_exits_2(capsys: pytest.CaptureFixture[str], r20: Exported, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(r20.path.read_bytes()[:5000])
    code, _, err = run(capsys, "bench", str(cut), "--runtimes", "ort-cpu", "--no-memory")
    assert code == 2 and "truncated or corrupted" in one_error_line(err)


def test_bench_an_onnx_with_json_and_plot(capsys: pytest.CaptureFixture[str], r20: Exported, tmp_path: Path) -> None:
    code, out, err = run(capsys, "bench", str(r20.path), "--runtimes", "ort-cpu,ort-cuda", "--batch", "1,2",
                         "--iters", "2", "--warmup", "0", "--threads", "1", "--no-memory", "--json",
                         str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"))
    assert code == 0, err
    assert "| r20 | ort-cpu | 1 |" in out and "| r20 | ort-cpu | 2 |" in out
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["meta"]["threads"] == 1 and len(data["results"]) == 2
    if "ort-cuda" not in {r["runtime"] for r in data["results"]}:
        assert "skipped: r20 on ort-cuda" in out
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_export_trt_with_a_fake_tensorrt_10_and_11(capsys: pytest.CaptureFixture[str], r20: Exported,
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from .fake_trt import make_fake_trt

    onnx_path = tmp_path / "r20.onnx"
    onnx_path.write_bytes(r20.path.read_bytes())
    for version, mode in (("10.3.0.26", "builder-flag"), ("11.1.0.4", "strongly-typed")):
        monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(version))
        code, out, err = run(capsys, "export", str(onnx_path), "--trt", "--fp16", "--trt-max-batch", "32",
                             "--workspace-mb", "64", "--json")
        assert code == 0, err
        data = json.loads(out)
        side = data["engine_sidecar"]
        assert data["engine"] == str(tmp_path / "r20-fp16.engine")
        assert (side["tensorrt_version"], side["fp16_mode"], side["precision"]) == (version, mode, "fp16")
        assert side["profile"] == {"min": 1, "opt": 8, "max": 32} and side["workspace_mb"] == 64
        assert (tmp_path / "r20-fp16.engine.json").is_file() and (tmp_path / "timing.cache").is_file()


def test_bench_arch_reference_against_a_subnetwork(capsys: pytest.CaptureFixture[str],
                                                   subnet_folders: tuple[Path, Path], tmp_path: Path) -> None:
    code, out, err = run(capsys, "bench", "--arch", "resnet20", str(subnet_folders[1]), "--runtimes", "ort-cpu",
                         "--batch", "1", "--iters", "2", "--warmup", "0", "--threads", "1", "--no-memory",
                         "--exporter", "legacy", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    rows = {r["model"]: r for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert set(rows) == {"resnet20", "half"}
    assert rows["resnet20"]["speedup_vs_first"] == 1.0
    assert 1.8 < rows["half"]["flops_ratio_vs_first"] < 2.2
    assert "speedup vs resnet20" in out
