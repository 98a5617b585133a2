from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import export.onnx as eonnx
from export.errors import ExportError, OnnxFileError, VerificationError
from export.inputs import load_calibration, random_inputs, realistic_inputs
from export.metadata import (
    ExportMetadata,
    check_standard_ops,
    load_onnx,
    metadata_of,
    nonstandard_ops,
    read_metadata,
    save_onnx,
    write_metadata,
)
from export.onnx import ExportFallbackWarning, export_onnx, verify_onnx
from export.runners import make_runner
from pruneopt.complexity import count
from pruneopt.models import build, default_spec
from pruneopt.thinning import thin
from tests.support.models import random_specs, randomise_bn

from .conftest import CIFAR, Exported

RE_ID_SMALL = (3, 64, 32)  # ImageNet-style nets on small inputs keep the tests fast


def torch_out(model: torch.nn.Module, x: np.ndarray, normalize: bool = False) -> np.ndarray:
    with torch.inference_mode():
        return eonnx.ExportWrapper(model, normalize).eval()(torch.from_numpy(x)).numpy()


def assert_close(got: np.ndarray, want: np.ndarray, rel: float = 1e-4) -> None:
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rel * np.abs(want).max()


def family_case(name: str) -> torch.nn.Module:
    """Full-width models of every family, and random pruned subnetworks (odd widths) thinned from a parent."""
    arch, _, kind = name.partition("-")
    parent = randomise_bn(build(default_spec(arch)), seed=3).eval()
    if kind == "pruned":
        spec = random_specs(arch, 1, seed=5)[0]
        return thin(parent, spec).eval()
    return parent


@pytest.mark.parametrize("case", ["resnet20", *(pytest.param(c, marks=pytest.mark.slow) for c in (
    "resnet56-pruned", "resnet18", "resnet50-pruned", "mobilenetv2-pruned"))])
def test_every_family_exports_verified_and_runs_at_1_7_64(case: str, tmp_path: Path) -> None:
    """CIFAR ResNets, ImageNet-style basic (resnet18) and bottleneck (resnet50) ResNets, MobileNetV2; pruned ones
    have random odd widths on every slot."""
    model = family_case(case)
    shape = RE_ID_SMALL if case == "resnet18" else CIFAR
    res = export_onnx(model, tmp_path / f"{case}.onnx", shape, exporter="legacy")
    assert res.exporter == "legacy" and res.verification is not None and res.verification.passed
    assert {(c.batch, c.inputs) for c in res.verification.checks} == {
        (b, k) for b in (1, 7, 64) for k in ("random", "realistic")}
    proto = load_onnx(res.path)
    assert nonstandard_ops(proto) == []
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    runner = make_runner("ort-cpu", res.path)
    for b in (1, 7, 64):
        x = realistic_inputs(b, shape, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), seed=b)
        assert_close(runner.run(x), torch_out(model, x))
    runner.close()
    meta = read_metadata(res.path)
    assert meta.spec_hash == model.spec.hash() and meta.macs == count(model.spec, shape[1:]).macs


@pytest.mark.slow
def test_dynamo_export_of_an_embedding_model(r20_embedding: Exported) -> None:
    res = r20_embedding.result
    assert res.exporter == "dynamo" and res.fallback_reason is None
    assert res.verification is not None and res.verification.passed
    assert res.verification.worst.rel < 1e-4
    meta = read_metadata(r20_embedding.path)
    assert (meta.exporter, meta.output_kind, meta.normalized, meta.output_name) == ("dynamo", "embedding", True,
                                                                                   "embedding")
    assert meta.output_dim == 64 and meta.opset == 18 and meta.slimmed
    runner = make_runner("ort-cpu", r20_embedding.path)
    for b in (1, 7, 64):
        x = random_inputs(b, CIFAR, seed=b)
        y = runner.run(x)
        assert y.shape == (b, 64)
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
        assert_close(y, torch_out(r20_embedding.model, x, normalize=True))
    assert runner.metadata is not None and runner.metadata.spec_hash == r20_embedding.model.spec.hash()


def test_metadata_round_trip_and_preprocessing(r20: Exported) -> None:
    meta = read_metadata(r20.path)
    spec = r20.model.spec
    assert meta.arch == "resnet20" and meta.spec == spec.to_dict() and meta.spec_hash == spec.hash()
    assert meta.input_shape == CIFAR and meta.input_name == "input" and meta.layout == "NCHW"
    assert meta.output_kind == "logits" and meta.output_dim == 10 and not meta.normalized
    assert meta.mean == (0.485, 0.456, 0.406) and meta.std == (0.229, 0.224, 0.225)
    assert meta.pruneopt_version and meta.torch_version == torch.__version__
    assert meta.verification is not None and meta.verification["passed"] is True
    assert len(meta.verification["checks"]) == 6
    again = ExportMetadata.from_props(meta.to_props())
    assert again == meta
    # ONNX Runtime sees the same strings
    import onnxruntime as ort

    props = ort.InferenceSession(str(r20.path), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert ExportMetadata.from_props(props.custom_metadata_map) == meta
    # the stored preprocessing turns uint8 images into what the model was verified on
    img = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    x = meta.preprocess(img)
    want = (img.astype(np.float32) / 255 - np.array(meta.mean, np.float32)) / np.array(meta.std, np.float32)
    np.testing.assert_allclose(x, want.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="resize"):
        meta.preprocess(img[:, :16])


def test_metadata_errors(tmp_path: Path, r20: Exported) -> None:
    with pytest.raises(OnnxFileError, match="no pruneopt metadata"):
        ExportMetadata.from_props({"other": "x"})
    with pytest.raises(OnnxFileError, match="unsupported pruneopt metadata format"):
        ExportMetadata.from_props({"pruneopt.format": "pruneopt.onnx/99"})
    props = read_metadata(r20.path).to_props()
    props["pruneopt.input_shape"] = "not json"
    with pytest.raises(OnnxFileError, match="malformed pruneopt metadata"):
        ExportMetadata.from_props(props)
    model = load_onnx(r20.path)
    del model.metadata_props[:]  # what a cut at the metadata field boundary leaves
    save_onnx(model, tmp_path / "bare.onnx")
    with pytest.raises(OnnxFileError, match="missing.*truncated or edited: export it again"):
        read_metadata(tmp_path / "bare.onnx")
    model.producer_name = "another-tool"  # an ONNX file from elsewhere
    save_onnx(model, tmp_path / "foreign.onnx")
    with pytest.raises(OnnxFileError, match="no pruneopt metadata.*re-export"):
        read_metadata(tmp_path / "foreign.onnx")


def _metadata_boundaries(data: bytes) -> list[int]:
    """Byte offsets at which the serialised file ends right after its k-th ``metadata_props`` entry (k = 0..n).

    Protobuf writes fields in field-number order and ``metadata_props`` (14) is the last field an export sets, so
    the file up to the end of entry k is the serialisation of the model with its first k entries."""
    model = onnx.load_from_string(data)
    entries = [(m.key, m.value) for m in model.metadata_props]
    out = []
    for k in range(len(entries) + 1):
        del model.metadata_props[:]
        for key, value in entries[:k]:
            e = model.metadata_props.add()
            e.key, e.value = key, value
        prefix = model.SerializeToString()
        assert data.startswith(prefix), "metadata_props is not the file's last field"
        out.append(len(prefix))
    assert out[-1] == len(data)
    return out[:-1]  # the whole file is not a cut


def _assert_refused(cut: Path) -> None:
    with pytest.raises(OnnxFileError, match="truncated|corrupted|empty") as info:
        load_onnx(cut)
    assert "\n" not in str(info.value)
    with pytest.raises(OnnxFileError, match="truncated|corrupted|empty"):
        read_metadata(cut)


def test_truncated_onnx_is_refused_at_every_metadata_boundary(r20: Exported, tmp_path: Path) -> None:
    """A cut between two metadata entries leaves a file protobuf parses: it must still be refused."""
    data = r20.path.read_bytes()
    bounds = _metadata_boundaries(data)
    n_pruneopt = sum(k.startswith("pruneopt.") for k in read_metadata(r20.path).to_props())
    assert len(bounds) >= n_pruneopt  # one boundary before each entry
    cut = tmp_path / "cut.onnx"
    for offset in bounds:
        cut.write_bytes(data[:offset])
        _assert_refused(cut)
    rng = np.random.default_rng(0)
    for offset in {0, 1, *rng.integers(1, len(data), 40).tolist(), *(b + 1 for b in bounds), len(data) - 1}:
        cut.write_bytes(data[:offset])
        _assert_refused(cut)
    with pytest.raises(OnnxFileError):
        make_runner("ort-cpu", cut)


def test_a_removed_metadata_entry_is_refused(r20: Exported, tmp_path: Path) -> None:
    """Editing out any one pruneopt entry (not only a trailing one), or the manifest, is refused."""
    model = load_onnx(r20.path)
    keys = [m.key for m in model.metadata_props if m.key.startswith("pruneopt.")]
    assert "pruneopt.keys" in keys and "pruneopt.graph_digest" in keys
    for key in keys:
        edited = onnx.ModelProto()
        edited.CopyFrom(model)
        kept = [(m.key, m.value) for m in edited.metadata_props if m.key != key]
        del edited.metadata_props[:]
        for k, v in kept:
            e = edited.metadata_props.add()
            e.key, e.value = k, v
        _assert_refused(save_onnx(edited, tmp_path / "edited.onnx"))
    # a file written before the manifest existed still loads when complete, and is refused without its digest
    old = onnx.ModelProto()
    old.CopyFrom(model)
    kept = [(m.key, m.value) for m in old.metadata_props if m.key != "pruneopt.keys"]
    del old.metadata_props[:]
    for k, v in kept:
        e = old.metadata_props.add()
        e.key, e.value = k, v
    old.producer_name = "pytorch"
    assert read_metadata(save_onnx(old, tmp_path / "old.onnx")) == read_metadata(r20.path)
    digestless = [(m.key, m.value) for m in old.metadata_props if m.key != "pruneopt.graph_digest"]
    del old.metadata_props[:]
    for k, v in digestless:
        e = old.metadata_props.add()
        e.key, e.value = k, v
    with pytest.raises(OnnxFileError, match="graph_digest.*export it again"):
        load_onnx(save_onnx(old, tmp_path / "old_cut.onnx"))
    # a plain ONNX model (no pruneopt keys, another producer) loads as before
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    del plain.metadata_props[:]
    plain.producer_name = "pytorch"
    load_onnx(save_onnx(plain, tmp_path / "plain.onnx"))


def test_corrupted_weights_are_refused_by_the_digest(r20: Exported, tmp_path: Path) -> None:
    model = load_onnx(r20.path)
    big = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    raw = bytearray(big.raw_data)
    raw[len(raw) // 2] ^= 0xFF  # a bit flip that protobuf still parses
    big.raw_data = bytes(raw)
    bad = save_onnx(model, tmp_path / "flipped.onnx")
    onnx.checker.check_model(onnx.load(str(bad)))  # the ONNX checker does not notice
    with pytest.raises(OnnxFileError, match="digest mismatch"):
        load_onnx(bad)
    with pytest.raises(OnnxFileError, match="digest mismatch"):
        make_runner("ort-cpu", bad)
    with pytest.raises(OnnxFileError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(OnnxFileError):
        load_onnx(tmp_path / "garbage.onnx")


def test_verification_detects_a_tampered_initializer(r20: Exported, tmp_path: Path) -> None:
    model = load_onnx(r20.path)
    conv_w = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 4)
    w = numpy_helper.to_array(conv_w)
    conv_w.CopyFrom(numpy_helper.from_array((w * 1.01).astype(np.float32), conv_w.name))
    write_metadata(model, metadata_of(model))  # re-stamp the digest: as if the exporter itself had been wrong
    path = save_onnx(model, tmp_path / "tampered.onnx")
    report = verify_onnx(path, eonnx.ExportWrapper(r20.model), CIFAR, batches=(1, 7))
    assert not report.passed and all(not c.ok for c in report.checks)
    assert report.worst.rel > 1e-3
    clean = verify_onnx(r20.path, eonnx.ExportWrapper(r20.model), CIFAR, batches=(1, 7))
    assert clean.passed


def test_export_fails_and_keeps_the_unverified_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = randomise_bn(build(default_spec("resnet20"))).eval()
    real_slim = eonnx._slim

    def buggy_slim(proto: onnx.ModelProto) -> onnx.ModelProto:  # a graph pass that corrupts one weight
        proto = real_slim(proto)
        t = next(t for t in proto.graph.initializer if numpy_helper.to_array(t).ndim == 4)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 0.5, t.name))
        return proto

    monkeypatch.setattr(eonnx, "_slim", buggy_slim)
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError, match="differs from PyTorch.*tolerance") as info:
        export_onnx(model, out, CIFAR, exporter="legacy", batches=(1, 7))
    assert "\n" not in str(info.value)
    assert not out.exists() and (tmp_path / "m.unverified.onnx").exists()


def test_fallback_to_the_legacy_exporter_warns_with_the_reason(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torch.export could not trace data-dependent control flow")

    monkeypatch.setattr(eonnx, "_export_dynamo", broken)
    model = build(default_spec("resnet20")).eval()
    with pytest.warns(ExportFallbackWarning, match="dynamo exporter failed.*data-dependent control flow.*legacy"):
        res = export_onnx(model, tmp_path / "m.onnx", CIFAR, batches=(1, 7))
    assert res.exporter == "legacy" and "data-dependent" in (res.fallback_reason or "")
    meta = read_metadata(res.path)
    assert meta.exporter == "legacy" and "data-dependent" in meta.extra["fallback_reason"]
    with pytest.raises(ExportError, match="dynamo exporter failed.*--exporter legacy"):
        export_onnx(model, tmp_path / "n.onnx", CIFAR, exporter="dynamo")


def test_nonstandard_ops_are_refused() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["h"]),
                               helper.make_node("FusedMultiPosLoss", ["h"], ["y"], domain="pruneopt.train")],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("pruneopt.train", 1)])
    assert nonstandard_ops(model) == ["pruneopt.train::FusedMultiPosLoss"]
    with pytest.raises(ExportError, match="non-standard ops pruneopt.train::FusedMultiPosLoss"):
        check_standard_ops(model)
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    check_standard_ops(plain)


def test_bad_export_requests(tmp_path: Path) -> None:
    classifier = build(default_spec("resnet20")).eval()
    with pytest.raises(ExportError, match="--normalize is for embedding networks"):
        export_onnx(classifier, tmp_path / "a.onnx", CIFAR, normalize=True)
    with pytest.raises(ExportError, match="channels"):
        export_onnx(classifier, tmp_path / "a.onnx", (1, 32, 32))
    with pytest.raises(ExportError, match="--mean and --std"):
        export_onnx(classifier, tmp_path / "a.onnx", CIFAR, mean=(0.5,), std=(0.5,))
    with pytest.raises(ExportError, match="unknown exporter"):
        export_onnx(classifier, tmp_path / "a.onnx", CIFAR, exporter="magic")
    with pytest.raises(ExportError, match=r"--out must end in \.onnx"):
        export_onnx(classifier, tmp_path / "a.bin", CIFAR, exporter="legacy", verify=False)
    with pytest.raises(ExportError, match="exactly one"):
        eonnx.load_model()
    with pytest.raises(ExportError, match=r"is not a model folder; give a subnetwork folder \(spec\.json \+ "):
        eonnx.load_model(tmp_path / "nowhere")


def test_calibration_images_and_arrays(tmp_path: Path, r20: Exported) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(50, 40, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = load_calibration(tmp_path, CIFAR, mean, std)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    lo = (0 - np.array(mean)) / np.array(std)
    hi = (1 - np.array(mean)) / np.array(std)
    assert np.all(x.min(axis=(0, 2, 3)) >= lo - 1e-5) and np.all(x.max(axis=(0, 2, 3)) <= hi + 1e-5)
    np.save(tmp_path / "u8.npy", rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8))
    assert load_calibration(tmp_path / "u8.npy", CIFAR, mean, std).shape == (4, 3, 32, 32)
    np.save(tmp_path / "f.npy", rng.standard_normal((5, 3, 32, 32)).astype(np.float32))
    assert load_calibration(tmp_path / "f.npy", CIFAR, mean, std).shape == (5, 3, 32, 32)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ExportError, match="expected float"):
        load_calibration(tmp_path / "bad.npy", CIFAR, mean, std)
    with pytest.raises(ExportError, match="does not exist"):
        load_calibration(tmp_path / "missing_dir", CIFAR, mean, std)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="holds no images"):
        load_calibration(tmp_path / "empty", CIFAR, mean, std)
    report = verify_onnx(r20.path, eonnx.ExportWrapper(r20.model), CIFAR, batches=(1, 7), real=x)
    assert report.passed and {c.inputs for c in report.checks} == {"random", "real"}


def test_export_does_not_warn_on_the_happy_path(r20: Exported, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_onnx(r20.model, tmp_path / "again.onnx", CIFAR, exporter="legacy", batches=(1,))
