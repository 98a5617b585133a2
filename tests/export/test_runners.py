from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.errors import OnnxFileError, RuntimeUnavailableError
from export.inputs import random_inputs
from export.runners import OrtRunner, Runner, TorchRunner, make_runner, resolve_kind, runtime_available

from .conftest import CIFAR, Exported

ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


def test_ort_runner_needs_no_torch(r20: Exported) -> None:
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import export
        from export.runners import make_runner
        r = make_runner("ort-cpu", {str(r20.path)!r}, threads=1)
        y = r.run(np.zeros((3, 3, 32, 32), np.float32))
        assert y.shape == (3, 10), y.shape
        assert r.metadata.output_kind == "logits"
        r.close()
        import export.tensorrt, export.bench, export.metadata, export.fp16
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_ort_and_torch_runners_agree(r20: Exported) -> None:
    ort_runner = make_runner("ort-cpu", r20.path, threads=1, spin=False)
    torch_runner = TorchRunner(r20.model)
    assert isinstance(ort_runner, Runner) and isinstance(torch_runner, Runner)
    assert ort_runner.providers == ["CPUExecutionProvider"] and ort_runner.name == "ort-cpu"
    assert ort_runner.info()["threads"] == 1 and ort_runner.info()["spin"] is False
    assert torch_runner.name == "torch-cpu" and "CPU" in torch_runner.providers[0]
    for b in (1, 7, 64):
        x = random_inputs(b, CIFAR, seed=b)
        a, t = ort_runner.run(x), torch_runner.run(x)
        assert a.shape == (b, 10)
        assert np.abs(a - t).max() <= 1e-4 * np.abs(t).max()
    ort_runner.close()
    torch_runner.close()


def test_io_binding_path_gives_the_same_outputs(r20: Exported) -> None:
    x = random_inputs(5, CIFAR, seed=0)
    with OrtRunner(r20.path, io_binding=True) as bound, OrtRunner(r20.path, io_binding=False) as plain:
        assert bound.io_binding and not plain.io_binding
        np.testing.assert_array_equal(bound.run(x), plain.run(x))


@pytest.mark.skipif(HAS_CUDA_EP, reason="this machine has the CUDA execution provider")
def test_missing_gpu_provider_raises_or_falls_back_loudly(r20: Exported, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeUnavailableError, match="CUDAExecutionProvider is not available.*onnxruntime-gpu"):
        make_runner("ort-cuda", r20.path)
    with pytest.warns(RuntimeWarning, match="running on CPUExecutionProvider instead"):
        r = make_runner("ort-trt", r20.path, strict=False)
    assert r.providers == ["CPUExecutionProvider"] and "TensorrtExecutionProvider" in r.info()["fallback"]
    assert r.run(np.zeros((1, *CIFAR), np.float32)).shape == (1, 10)
    # a provider that is listed but fails to initialise: ONNX Runtime silently runs on the CPU; we do not
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeUnavailableError, match="requested but the session runs on CPUExecutionProvider"):
        OrtRunner(r20.path, "cuda")
    ok, why = runtime_available("ort-trt")
    assert not ok and "TensorrtExecutionProvider" in why


def test_runner_factory_errors(r20: Exported, tmp_path: Path, subnet_folders: tuple[Path, Path]) -> None:
    with pytest.raises(RuntimeUnavailableError, match="needs a subnetwork folder"):
        make_runner("torch-cpu", r20.path)
    with pytest.raises(OnnxFileError, match="needs an .onnx"):
        make_runner("ort-cpu", subnet_folders[0])
    with pytest.raises(OnnxFileError, match="needs a TensorRT .engine"):
        make_runner("trt", r20.path)
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'onnx'"):
        make_runner("onnx", r20.path)
    assert resolve_kind("torch") in ("torch-cpu", "torch-cuda")
    runner = make_runner("torch-cpu", subnet_folders[0])
    assert runner.run(np.zeros((2, *CIFAR), np.float32)).shape == (2, 10)
    with pytest.raises(OnnxFileError, match="does not exist"):
        make_runner("ort-cpu", tmp_path / "nothing.onnx")


def test_torch_runner_threads_apply_to_its_runs_only(r20: Exported) -> None:
    import torch

    before = torch.get_num_threads()
    runner = TorchRunner(r20.model, threads=before + 1)
    assert torch.get_num_threads() == before  # making a runner changes nothing for the process
    seen: list[int] = []
    runner.module.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    runner.run(np.zeros((2, *CIFAR), np.float32))
    assert seen == [before + 1] and torch.get_num_threads() == before
    assert runner.info()["threads"] == before + 1 and f"({before + 1} threads)" in runner.providers[0]
