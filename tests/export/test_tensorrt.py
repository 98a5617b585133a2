"""TensorRT code paths that run without TensorRT: version switches, profiles, buffers, sidecars, errors.

A fake ``tensorrt`` module (``fake_trt``) stands in for TensorRT 10 and 11; nothing here claims to run an engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import export.tensorrt as et
from export.errors import EngineError, EngineVersionError, ExportError, RuntimeUnavailableError
from export.tensorrt import BatchProfile, EngineConfig, TrtRunner, build_engine, load_engine

from .conftest import CIFAR, Exported
from .fake_trt import Builder, Context, HostBackend, OnnxParser, make_fake_trt

GPU = {"name": "NVIDIA H100", "compute_capability": "9.0"}


@pytest.fixture(autouse=True)
def _reset_fakes():
    yield
    OnnxParser.fail_with = []
    Builder.return_none = False
    Context.memory.clear()


def build(onnx_path: Path, out: Path, version: str = "10.3.0.26", **config: object):  # noqa: ANN201
    trt = make_fake_trt(version)
    cfg = EngineConfig(BatchProfile(1, 8, 64), **config)  # type: ignore[arg-type]
    return trt, build_engine(onnx_path, out, cfg, trt=trt, device=GPU)


def test_fp16_strategy_follows_the_tensorrt_version() -> None:
    assert et.fp16_strategy(make_fake_trt("10.3.0.26")) == "builder-flag"
    assert et.fp16_strategy(make_fake_trt("11.1.0.4")) == "strongly-typed"
    with pytest.raises(RuntimeUnavailableError, match="too old"):
        et.fp16_strategy(make_fake_trt("8.6.1"))
    flagless_10 = make_fake_trt("10.12.0")
    flagless_10.BuilderFlag = make_fake_trt("11.0.0").BuilderFlag
    assert et.fp16_strategy(flagless_10) == "strongly-typed"
    assert et.network_flags(make_fake_trt("10.3.0"), strongly_typed=True) == 1 << 1
    assert et.network_flags(make_fake_trt("11.1.0"), strongly_typed=True) == 1 << 0
    assert et.network_flags(make_fake_trt("10.3.0"), strongly_typed=False) == 0
    assert et.trt_major(make_fake_trt("11.1.0.4")) == 11


def test_tensorrt_10_fp16_uses_the_builder_flag(r20: Exported, tmp_path: Path) -> None:
    trt, built = build(r20.path, tmp_path / "m.engine", fp16=True, workspace_mb=256,
                       timing_cache=tmp_path / "timing.cache")
    config, network = trt.last_config, trt.last_network
    assert config.flags == [trt.BuilderFlag.FP16]
    assert network.flags == 0
    assert config.pools[trt.MemoryPoolType.WORKSPACE] == 256 << 20
    assert config.profiles[0].shapes["input"] == ((1, *CIFAR), (8, *CIFAR), (64, *CIFAR))
    g = network.onnx.graph
    conv_w = {n.input[1] for n in g.node if n.op_type == "Conv"}
    assert all(t.data_type == TensorProto.FLOAT for t in g.initializer if t.name in conv_w)  # float32 network
    assert built.fp16_mode == "builder-flag"
    side = json.loads((tmp_path / "m.engine.json").read_text())
    data = (tmp_path / "m.engine").read_bytes()
    assert side["tensorrt_version"] == "10.3.0.26" and side["precision"] == "fp16"
    assert side["engine_bytes"] == len(data) and side["profile"] == {"min": 1, "opt": 8, "max": 64}
    assert side["device"] == GPU and side["input_name"] == "input" and side["input_shape"] == list(CIFAR)
    assert side["metadata"]["pruneopt.arch"] == "resnet20"
    assert (tmp_path / "timing.cache").read_bytes() == b"+entry" and not built.timing_cache_entries_reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "timing.cache"]  # no temp files
    _, again = build(r20.path, tmp_path / "m2.engine", fp16=True, timing_cache=tmp_path / "timing.cache")
    assert again.timing_cache_entries_reused
    assert (tmp_path / "timing.cache").read_bytes() == b"+entry+entry"


def test_tensorrt_11_fp16_uses_a_strongly_typed_fp16_onnx(r20: Exported, tmp_path: Path) -> None:
    trt, built = build(r20.path, tmp_path / "m.engine", version="11.1.0.4", fp16=True)
    assert not hasattr(trt.BuilderFlag, "FP16")
    assert trt.last_config.flags == []  # no weak-typing flag to set
    assert trt.last_network.flags == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    g = trt.last_network.onnx.graph
    conv_w = {n.input[1] for n in g.node if n.op_type == "Conv"}
    assert all(t.data_type == TensorProto.FLOAT16 for t in g.initializer if t.name in conv_w)
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # float32 I/O
    assert built.fp16_mode == "strongly-typed" and built.sidecar["precision"] == "fp16"
    trt32, built32 = build(r20.path, tmp_path / "m32.engine", version="11.1.0.4")
    assert trt32.last_network.flags == 0 and built32.fp16_mode is None
    assert all(t.data_type == TensorProto.FLOAT for t in trt32.last_network.onnx.graph.initializer
               if t.name in conv_w)


def test_engine_from_another_tensorrt_version_is_refused(r20: Exported, tmp_path: Path) -> None:
    build(r20.path, tmp_path / "m.engine", version="10.3.0.26")
    with pytest.raises(EngineVersionError, match=r"built by TensorRT 10\.3\.0\.26 but this is TensorRT 10\.4\.0"
                                                 r".*rebuild"):
        load_engine(tmp_path / "m.engine", trt=make_fake_trt("10.4.0.1"), device=GPU)
    with pytest.raises(EngineVersionError, match="compute capability 9.0.*8.6.*rebuild"):
        load_engine(tmp_path / "m.engine", trt=make_fake_trt("10.3.0.26"),
                    device={"name": "RTX 3090", "compute_capability": "8.6"})
    loaded = load_engine(tmp_path / "m.engine", trt=make_fake_trt("10.3.0.26"), device=GPU)
    assert loaded.engine.num_io_tensors == 2


def test_broken_engine_files_give_clear_errors(r20: Exported, tmp_path: Path) -> None:
    trt = make_fake_trt("10.3.0.26")
    build(r20.path, tmp_path / "m.engine")
    data = (tmp_path / "m.engine").read_bytes()
    (tmp_path / "m.engine").write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineError, match="truncated or corrupted.*rebuild"):
        load_engine(tmp_path / "m.engine", trt=trt, device=GPU)
    flipped = bytearray(data)
    flipped[5] ^= 1
    (tmp_path / "m.engine").write_bytes(bytes(flipped))
    with pytest.raises(EngineError, match="truncated or corrupted"):
        load_engine(tmp_path / "m.engine", trt=trt, device=GPU)
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(EngineError, match="not valid JSON"):
        load_engine(tmp_path / "m.engine", trt=trt, device=GPU)
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(EngineError, match="sidecar.*rebuild"):
        load_engine(tmp_path / "m.engine", trt=trt, device=GPU)
    with pytest.raises(EngineError, match="does not exist"):
        load_engine(tmp_path / "none.engine", trt=trt, device=GPU)


def test_build_failures_are_reported(r20: Exported, tmp_path: Path) -> None:
    OnnxParser.fail_with = ["In node 3 (Conv): unsupported attribute"]
    with pytest.raises(EngineError, match="cannot parse.*unsupported attribute"):
        build(r20.path, tmp_path / "a.engine")
    OnnxParser.fail_with = []
    Builder.return_none = True
    with pytest.raises(EngineError, match="failed to build"):
        build(r20.path, tmp_path / "b.engine")
    assert not (tmp_path / "b.engine").exists()
    with pytest.raises(ExportError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)
    with pytest.raises(ExportError, match="workspace"):
        EngineConfig(workspace_mb=0)


def test_missing_tensorrt_says_how_to_install(monkeypatch: pytest.MonkeyPatch, r20: Exported,
                                              tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # "import tensorrt" raises ImportError
    with pytest.raises(RuntimeUnavailableError, match=r"tensorrt is not installed: pip install pruneopt\[trt\]"):
        et.import_tensorrt()
    with pytest.raises(RuntimeUnavailableError, match="pip install pruneopt"):
        build_engine(r20.path, tmp_path / "m.engine")
    ok, why = et.tensorrt_available()
    assert not ok and "pip install pruneopt[trt]" in why


def test_buffer_sizes_and_growth() -> None:
    assert et.tensor_nbytes((4, 3, 32, 32), np.float32) == 4 * 3 * 32 * 32 * 4
    assert et.tensor_nbytes((4, 3, 32, 32), np.float16) == 4 * 3 * 32 * 32 * 2
    assert et.tensor_nbytes((0, 10), np.float32) == 0
    with pytest.raises(EngineError, match="unresolved shape"):
        et.tensor_nbytes((-1, 10), np.float32)
    assert [et.capacity_batch(b, 64) for b in (1, 2, 3, 5, 8, 33, 64)] == [1, 2, 4, 8, 8, 64, 64]
    assert et.capacity_batch(33, 40) == 40
    for bad in (0, 65):
        with pytest.raises(EngineError, match="outside the engine's profile"):
            et.capacity_batch(bad, 64)
    trt = make_fake_trt()
    assert et.numpy_dtype(trt.DataType.HALF) == np.float16 and et.numpy_dtype(trt.DataType.INT64) == np.int64
    with pytest.raises(EngineError, match="BF16 has no numpy equivalent"):
        et.numpy_dtype(trt.DataType.BF16)


def test_runner_drives_the_v3_api(r20: Exported, tmp_path: Path) -> None:
    trt, _ = build(r20.path, tmp_path / "m.engine")
    backend = HostBackend()
    runner = TrtRunner(tmp_path / "m.engine", backend=backend, trt=trt, device_info=GPU)
    assert [(t.name, t.mode, t.dtype, t.shape) for t in runner.tensors] == [
        ("input", "input", np.dtype(np.float32), (-1, *CIFAR)), ("logits", "output", np.dtype(np.float32), (-1, 10))]
    assert runner.max_batch == 64 and runner.providers == ["TensorRT 10.3.0.26 (fp32, host)"]
    rng = np.random.default_rng(0)
    for b in (3, 2, 7):
        x = rng.standard_normal((b, *CIFAR)).astype(np.float32)
        y = runner.run(x)
        assert y.shape == (b, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y[:, 0], x.reshape(b, -1).mean(axis=1), rtol=1e-5)
    per_image_in, per_image_out = int(np.prod(CIFAR)) * 4, 10 * 4
    # buffers for 4 images (first call, batch 3), then grown once to 8 (batch 7); batch 2 reused them
    assert backend.allocs == [4 * per_image_in, 4 * per_image_out, 8 * per_image_in, 8 * per_image_out]
    assert len(backend.freed) == 2 and backend.syncs == 3
    calls = runner.context.calls
    assert calls[0] == ("set_input_shape", "input", (3, *CIFAR))
    assert [c[0] for c in calls[:4]] == ["set_input_shape", "set_tensor_address", "set_tensor_address",
                                         "execute_async_v3"]
    assert calls[3] == ("execute_async_v3", backend.stream)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner.run(np.zeros((65, *CIFAR), np.float32))
    with pytest.raises(ValueError, match=r"takes \[batch, 3, 32, 32\]"):
        runner.run(np.zeros((2, 3, 16, 16), np.float32))
    runner.close()
    assert len(backend.freed) == 4


def test_unknown_backend_and_backends_without_their_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeUnavailableError, match="unknown TensorRT buffer backend"):
        et.make_backend("opencl")
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(RuntimeUnavailableError, match="cuda-python is not installed"):
        et.make_backend("cuda-python")
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(RuntimeUnavailableError, match=r"pycuda is not installed: pip install pruneopt\[pycuda\]"):
        et.make_backend("pycuda")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeUnavailableError, match="CUDA build of torch"):
            et.make_backend("torch")
    assert et.device_facts() is None or "compute_capability" in et.device_facts()  # type: ignore[operator]


def test_build_refuses_onnx_it_cannot_feed(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3, 8, 8])
    z = onnx.helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 8, 8])
    g = onnx.helper.make_graph([onnx.helper.make_node("Add", ["a", "b"], ["y"])], "g", [x, z], [y])
    onnx.save(onnx.helper.make_model(g), tmp_path / "two.onnx")
    with pytest.raises(EngineError, match="2 inputs"):
        build_engine(tmp_path / "two.onnx", tmp_path / "two.engine", trt=make_fake_trt(), device=GPU)
