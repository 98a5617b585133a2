"""FP16 ONNX for strongly typed TensorRT networks (TensorRT 11 removed ``BuilderFlag.FP16``; numpy + onnx only).

:func:`convert_to_fp16` rewrites a float32 graph so that it computes in float16 while keeping float32 at the
edges: the graph inputs and outputs stay float32 (a ``Cast`` follows each input and precedes each output), and
numerically fragile ops stay float32 together with everything after them (by default the L2-normalisation tail
of an embedding model: ``ReduceL2``/``LpNormalization``/``ReduceSumSquare``/``Sqrt``/``Pow``/``Div``, whose sums of
squares overflow float16's 65504). ``Cast`` nodes are inserted wherever a float16 tensor meets a float32 node and
the reverse. Float32 initializers are converted (values beyond float16's range are clipped, and counted in the
returned report). This is the role NVIDIA's ModelOpt AutoCast plays in the TensorRT 11 migration guide, for the
plain CNN graphs pruneopt exports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ExportError

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
KEEP_FP32_OPS = frozenset({"ReduceL2", "LpNormalization", "ReduceSumSquare", "Sqrt", "Pow", "Div"})
# inputs that the ONNX spec requires to be float32 whatever the data type (op -> input positions)
FLOAT32_ONLY_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Fp16Report:
    """What :func:`convert_to_fp16` did."""

    fp16_nodes: int
    fp32_nodes: int
    casts: int
    clipped_values: int


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    names = {vi.name for vi in (*g.value_info, *g.input, *g.output) if vi.type.tensor_type.elem_type == FLOAT}
    names |= {t.name for t in g.initializer if t.data_type == FLOAT}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                    names.update(node.output)
    return names


def _to_half(arr: np.ndarray) -> tuple[np.ndarray, int]:
    over = int(np.count_nonzero(np.abs(arr) > FP16_MAX))
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), over


def convert_to_fp16(model: onnx.ModelProto, keep_fp32_ops: Iterable[str] = KEEP_FP32_OPS
                    ) -> tuple[onnx.ModelProto, Fp16Report]:
    """A float16 copy of ``model`` with float32 inputs/outputs; see the module docstring."""
    keep = frozenset(keep_fp32_ops)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    if any(n.domain not in ("", "ai.onnx") for n in g.node) or model.functions:
        raise ExportError("fp16 conversion handles standard-domain graphs without local functions only")
    is_float = _float_tensors(model)
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {vi.name for vi in g.input}
    graph_outputs = {vi.name for vi in g.output if vi.type.tensor_type.elem_type == FLOAT}

    # 1. precision of every node: fp32 if its op is kept, or if it reads a tensor of the fp32 tail
    tail: set[str] = set()  # outputs of fp32 nodes
    half_out: set[str] = set()  # float outputs of fp16 nodes
    node_fp32: list[bool] = []
    for node in g.node:
        fp32 = node.op_type in keep or any(i in tail for i in node.input if i)
        node_fp32.append(fp32)
        for o in node.output:
            if o in is_float:
                (tail if fp32 else half_out).add(o)

    # 2. rewire inputs, inserting casts, and decide which initializers are needed in which precision
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    need16: set[str] = set()
    need32: set[str] = set()
    init16_name: dict[str, str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}/{'fp16' if to == FLOAT16 else 'fp32'}"
            casts[key] = out
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}"))
        return casts[key]

    rewired: list[tuple[onnx.NodeProto, bool]] = []
    for node, fp32 in zip(g.node, node_fp32, strict=True):
        fixed = FLOAT32_ONLY_INPUTS.get(node.op_type, set())
        for k, name in enumerate(node.input):
            if not name or name not in is_float:
                continue
            want16 = not fp32 and k not in fixed
            if name in inits:
                (need16 if want16 else need32).add(name)
            elif want16 and name not in half_out:  # a float32 tensor (graph input, fp32 node) into fp16
                node.input[k] = cast(name, FLOAT16)
            elif not want16 and name in half_out:  # a float16 tensor into an fp32 node / fp32-only input
                node.input[k] = cast(name, FLOAT)
        if not fp32:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                    half, _ = _to_half(numpy_helper.to_array(a.t))
                    a.t.CopyFrom(numpy_helper.from_array(half, a.t.name))
        new_nodes.append(node)
        rewired.append((node, fp32))

    # 3. initializers: convert in place, or add a float16 twin when fp32 nodes read them too
    clipped = 0
    for name in need16:
        arr = numpy_helper.to_array(inits[name])
        half, over = _to_half(arr)
        clipped += over
        if name in need32:
            init16_name[name] = f"{name}/fp16"
            g.initializer.append(numpy_helper.from_array(half, init16_name[name]))
        else:
            inits[name].CopyFrom(numpy_helper.from_array(half, name))
    for node, fp32 in rewired:
        if not fp32:
            for k, name in enumerate(node.input):
                if name in init16_name and k not in FLOAT32_ONLY_INPUTS.get(node.op_type, set()):
                    node.input[k] = init16_name[name]

    # 4. outputs: float16 results are cast back to float32 under the output's own name
    for out in graph_outputs & half_out:
        producer = next(n for n in new_nodes if out in n.output)
        inner = f"{out}/fp16_result"
        producer.output[list(producer.output).index(out)] = inner
        for n in new_nodes:
            for k, name in enumerate(n.input):
                if name == out:
                    n.input[k] = inner
        new_nodes.append(helper.make_node("Cast", [inner], [out], to=FLOAT, name=f"cast_{out}/fp32"))

    del g.node[:]
    g.node.extend(_toposort(new_nodes, graph_inputs | set(inits) | {t.name for t in g.initializer}))
    del g.value_info[:]
    try:
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(model, strict_mode=True))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"fp16 conversion produced an invalid graph: {str(exc).splitlines()[0]}") from exc
    n32 = sum(node_fp32)
    return model, Fp16Report(len(node_fp32) - n32, n32, len(casts) + len(graph_outputs & half_out), clipped)


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before it is read (casts were appended at the end)."""
    have = set(available) | {""}
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ExportError(f"fp16 conversion: cannot order nodes, unresolved inputs of {rest[0].op_type} "
                              f"{list(rest[0].input)}")
        pending = rest
    return out
