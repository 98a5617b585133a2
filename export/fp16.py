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
    node_fp32, half_out = _precisions(g, keep, is_float)
    rw = _Rewiring(is_float, inits, half_out)
    for node, fp32 in zip(g.node, node_fp32, strict=True):
        rw.add(node, fp32)
    clipped = _convert_initializers(g, inits, rw)
    cast_back = graph_outputs & half_out
    _cast_outputs(rw.nodes, cast_back)
    del g.node[:]
    g.node.extend(_toposort(rw.nodes, graph_inputs | set(inits) | {t.name for t in g.initializer}))
    del g.value_info[:]
    try:
        onnx.checker.check_model(onnx.shape_inference.infer_shapes(model, strict_mode=True))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"fp16 conversion produced an invalid graph: {str(exc).splitlines()[0]}") from exc
    n32 = sum(node_fp32)
    return model, Fp16Report(len(node_fp32) - n32, n32, len(rw.casts) + len(cast_back), clipped)


def _precisions(g: onnx.GraphProto, keep: frozenset[str], is_float: set[str]) -> tuple[list[bool], set[str]]:
    """Step 1: whether each node stays float32 (its op is kept, or it reads a tensor of the fp32 tail), and the
    float outputs of the float16 nodes."""
    tail: set[str] = set()  # outputs of fp32 nodes
    half_out: set[str] = set()  # float outputs of fp16 nodes
    node_fp32: list[bool] = []
    for node in g.node:
        fp32 = node.op_type in keep or any(i in tail for i in node.input if i)
        node_fp32.append(fp32)
        for o in node.output:
            if o in is_float:
                (tail if fp32 else half_out).add(o)
    return node_fp32, half_out


class _Rewiring:
    """Step 2: the nodes in their new precision, with casts inserted where precisions meet, and which
    initializers are needed in float16 (``need16``) and float32 (``need32``)."""

    def __init__(self, is_float: set[str], inits: dict[str, onnx.TensorProto], half_out: set[str]) -> None:
        self.is_float, self.inits, self.half_out = is_float, inits, half_out
        self.nodes: list[onnx.NodeProto] = []
        self.casts: dict[tuple[str, int], str] = {}
        self.need16: set[str] = set()
        self.need32: set[str] = set()
        self.rewired: list[tuple[onnx.NodeProto, bool]] = []

    def cast(self, name: str, to: int) -> str:
        key = (name, to)
        if key not in self.casts:
            out = f"{name}/{'fp16' if to == FLOAT16 else 'fp32'}"
            self.casts[key] = out
            self.nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}"))
        return self.casts[key]

    def add(self, node: onnx.NodeProto, fp32: bool) -> None:
        fixed = FLOAT32_ONLY_INPUTS.get(node.op_type, set())
        for k, name in enumerate(node.input):
            if not name or name not in self.is_float:
                continue
            want16 = not fp32 and k not in fixed
            if name in self.inits:
                (self.need16 if want16 else self.need32).add(name)
            elif want16 and name not in self.half_out:  # a float32 tensor (graph input, fp32 node) into fp16
                node.input[k] = self.cast(name, FLOAT16)
            elif not want16 and name in self.half_out:  # a float16 tensor into an fp32 node / fp32-only input
                node.input[k] = self.cast(name, FLOAT)
        if not fp32:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                    half, _ = _to_half(numpy_helper.to_array(a.t))
                    a.t.CopyFrom(numpy_helper.from_array(half, a.t.name))
        self.nodes.append(node)
        self.rewired.append((node, fp32))


def _convert_initializers(g: onnx.GraphProto, inits: dict[str, onnx.TensorProto], rw: _Rewiring) -> int:
    """Step 3: initializers read in float16 are converted in place, or get a float16 twin when float32 nodes read
    them too; returns how many values were clipped to float16's range."""
    clipped = 0
    init16_name: dict[str, str] = {}
    for name in rw.need16:
        arr = numpy_helper.to_array(inits[name])
        half, over = _to_half(arr)
        clipped += over
        if name in rw.need32:
            init16_name[name] = f"{name}/fp16"
            g.initializer.append(numpy_helper.from_array(half, init16_name[name]))
        else:
            inits[name].CopyFrom(numpy_helper.from_array(half, name))
    for node, fp32 in rw.rewired:
        if not fp32:
            for k, name in enumerate(node.input):
                if name in init16_name and k not in FLOAT32_ONLY_INPUTS.get(node.op_type, set()):
                    node.input[k] = init16_name[name]
    return clipped


def _cast_outputs(nodes: list[onnx.NodeProto], outputs: set[str]) -> None:
    """Step 4: float16 results of graph outputs are cast back to float32 under the output's own name."""
    for out in outputs:
        producer = next(n for n in nodes if out in n.output)
        inner = f"{out}/fp16_result"
        producer.output[list(producer.output).index(out)] = inner
        for n in nodes:
            for k, name in enumerate(n.input):
                if name == out:
                    n.input[k] = inner
        nodes.append(helper.make_node("Cast", [inner], [out], to=FLOAT, name=f"cast_{out}/fp32"))


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
