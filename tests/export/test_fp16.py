from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from export.errors import ExportError
from export.fp16 import convert_to_fp16
from export.inputs import random_inputs
from export.metadata import load_onnx

from .conftest import CIFAR, Exported


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.mark.slow
def test_fp16_graph_keeps_float32_io_and_the_normalisation_tail(r20_embedding: Exported) -> None:
    model = load_onnx(r20_embedding.path)
    half, report = convert_to_fp16(model)
    g = half.graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in g.output] == [TensorProto.FLOAT]
    conv_weights = {n.input[1] for n in g.node if n.op_type == "Conv"}
    assert conv_weights and all(t.data_type == TensorProto.FLOAT16 for t in g.initializer if t.name in conv_weights)
    inferred = onnx.shape_inference.infer_shapes(half)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    l2 = next(n for n in g.node if n.op_type == "ReduceL2")
    assert types[l2.output[0]] == TensorProto.FLOAT  # the sum of squares stays in float32
    assert report.fp32_nodes >= 2 and report.fp16_nodes > 20 and report.casts >= 2
    x = random_inputs(7, CIFAR, seed=0)
    want, got = run(model, x), run(half, x)
    assert got.dtype == np.float32
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-6 < rel < 1e-2  # float16 arithmetic: different, but close
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-3)


def test_fp16_logits_model_casts_the_output_back(r20: Exported) -> None:
    model = load_onnx(r20.path)
    half, report = convert_to_fp16(model)
    assert report.fp32_nodes == 0
    last = next(n for n in half.graph.node if half.graph.output[0].name in n.output)
    assert last.op_type == "Cast" and last.attribute[0].i == TensorProto.FLOAT
    x = random_inputs(3, CIFAR, seed=1)
    want = run(model, x)
    assert np.abs(run(half, x) - want).max() < 1e-2 * np.abs(want).max()


def test_fp16_clips_out_of_range_weights(r20: Exported) -> None:
    model = load_onnx(r20.path)
    t = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 4)
    w = numpy_helper.to_array(t).copy()
    w.flat[0] = 1e6
    t.CopyFrom(numpy_helper.from_array(w, t.name))
    half, report = convert_to_fp16(model)
    assert report.clipped_values == 1
    h = numpy_helper.to_array(next(i for i in half.graph.initializer if i.name == t.name))
    assert h.dtype == np.float16 and h.flat[0] == np.finfo(np.float16).max


def test_fp16_refuses_custom_domains() -> None:
    x = onnx.helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = onnx.helper.make_graph([onnx.helper.make_node("Op", ["input"], ["y"], domain="custom")], "g", [x], [y])
    with pytest.raises(ExportError, match="standard-domain"):
        convert_to_fp16(onnx.helper.make_model(g))
