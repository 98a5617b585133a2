"""What an exported ONNX file says about itself, and safe loading of ONNX files (no torch needed).

``pruneopt export`` stores everything a runtime needs next to the graph, in the model's ``metadata_props``
(``pruneopt.*`` keys, all strings): the input name, shape and layout, the preprocessing (pixels scaled by 1/255,
then ``(x - mean) / std`` per channel, RGB order), the output name and kind (``logits`` or ``embedding``, and
whether it is L2-normalised), the architecture, the width spec and its hash, MACs, the pruneopt / torch versions,
the exporter and opset, and the verification errors measured at export time. :func:`read_metadata` returns them
as an :class:`ExportMetadata`; ONNX Runtime exposes the same strings as ``session.get_modelmeta()
.custom_metadata_map`` (see :meth:`ExportMetadata.from_props`).

A SHA-256 *graph digest* over the initializers (name, type, shape, values) and the nodes (op, domain, inputs,
outputs, attributes) is stored too. :func:`load_onnx` recomputes it, so a file whose weights were flipped or cut
short, which protobuf may still parse, is refused with a message instead of running with wrong weights.

A file cut short can also lose whole trailing ``metadata_props`` entries and still parse. So the file says it was
written by pruneopt (``producer_name``, early in the file) and its first pruneopt entries are the format and a
*manifest* (``pruneopt.keys``: every pruneopt key written). :func:`load_onnx` refuses a pruneopt file that lacks
any key of its manifest, or (files written before the manifest) any required field, the digest included.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pruneopt.common.files import atomic_write
from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalise_pixels

from .errors import ExportError, OnnxFileError

FORMAT = "pruneopt.onnx/1"
PREFIX = "pruneopt."
PRODUCER = "pruneopt"
MANIFEST_KEY = PREFIX + "keys"
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


@dataclass
class ExportMetadata:
    """The facts ``pruneopt export`` writes into an ONNX file (see the module docstring)."""

    arch: str
    spec: dict[str, Any]
    spec_hash: str
    input_shape: tuple[int, int, int]  # C, H, W; the batch axis is dynamic
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output_kind: str  # "logits" or "embedding"
    output_dim: int
    normalized: bool = False
    input_name: str = "input"
    output_name: str = "output"
    layout: str = "NCHW"
    input_dtype: str = "float32"
    color: str = "RGB"
    pixel_scale: float = 1.0 / 255.0  # x = (pixel * pixel_scale - mean) / std
    max_batch: int = 4096
    macs: int = 0
    params: int = 0
    opset: int = 0
    exporter: str = ""
    slimmed: bool = False
    precision: str = "fp32"
    pruneopt_version: str = ""
    torch_version: str = ""
    created: str = ""
    graph_digest: str = ""
    verification: dict[str, Any] | None = None
    format: str = FORMAT
    extra: dict[str, str] = field(default_factory=dict)

    # -- serialisation to metadata_props ------------------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        """``{"pruneopt.<field>": string}``; lists, dicts and booleans as JSON."""
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            if key == "extra":
                continue
            if isinstance(value, str):
                out[PREFIX + key] = value
            elif value is None:
                continue
            else:
                out[PREFIX + key] = json.dumps(list(value) if isinstance(value, tuple) else value)
        for key, value in self.extra.items():
            out[PREFIX + key] = str(value)
        return out

    @classmethod
    def required_keys(cls) -> frozenset[str]:
        """The ``pruneopt.*`` keys every pruneopt file has (all fields but the optional verification and extras)."""
        return frozenset(PREFIX + f for f in cls.__dataclass_fields__ if f not in ("extra", "verification"))

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ExportMetadata:
        """Parse ``pruneopt.*`` metadata (an ONNX ``metadata_props`` map or ORT's ``custom_metadata_map``)."""
        mine = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not mine:
            raise OnnxFileError(
                f"{source} has no pruneopt metadata: it was not written by `pruneopt export` (or the file was cut "
                "short); re-export it with `pruneopt export PATH --onnx`"
            )
        fmt = mine.get("format", "")
        if fmt != FORMAT:
            raise OnnxFileError(f"{source}: unsupported pruneopt metadata format {fmt!r} (this version reads "
                                f"{FORMAT!r}); re-export it with this pruneopt version")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"} | {MANIFEST_KEY[len(PREFIX):]}
        kwargs: dict[str, Any] = {}
        try:
            for key, text in mine.items():
                if key not in known or PREFIX + key == MANIFEST_KEY:
                    continue
                ftype = cls.__dataclass_fields__[key].type
                kwargs[key] = text if ftype in ("str", str) else json.loads(text)
            kwargs["input_shape"] = tuple(int(v) for v in kwargs["input_shape"])
            kwargs["mean"] = tuple(float(v) for v in kwargs["mean"])
            kwargs["std"] = tuple(float(v) for v in kwargs["std"])
            meta = cls(**kwargs, extra={k: v for k, v in mine.items() if k not in known})
        except (KeyError, TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise OnnxFileError(f"{source}: malformed pruneopt metadata ({type(exc).__name__}: {exc}); "
                                "re-export the model") from exc
        return meta

    # -- what a runtime needs -----------------------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """``uint8`` images ``[N, H, W, C]`` (already at the input size, RGB) -> the model's ``float32`` input."""
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        c, h, w = self.input_shape
        if x.ndim == 4 and x.shape[-1] != c and c == 1 and x.shape[-1] == 3:
            x = x.mean(axis=-1, keepdims=True)
        if x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
            raise ValueError(f"expected images [N, {h}, {w}, {c}], got {tuple(x.shape)}; resize them to {h}x{w} "
                             f"first (pruneopt export --input {c}x{h}x{w})")
        y = normalise_pixels(x, self.mean, self.std, pixel_scale=self.pixel_scale)
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def default_mean_std(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for RGB inputs; their channel average for other channel counts."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (float(np.mean(IMAGENET_MEAN)),) * channels, (float(np.mean(IMAGENET_STD)),) * channels


# -- graph checks ---------------------------------------------------------------------------------------------
def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def nonstandard_ops(model: onnx.ModelProto) -> list[str]:
    """``domain::op`` of every node (in the graph, its subgraphs and local functions) outside the ONNX domains."""
    bad = {f"{n.domain}::{n.op_type}" for n in _all_nodes(model.graph) if n.domain not in STANDARD_DOMAINS}
    for fn in model.functions:
        bad.add(f"{fn.domain}::{fn.name} (local function)")
        bad.update(f"{n.domain}::{n.op_type}" for n in fn.node if n.domain not in STANDARD_DOMAINS)
    return sorted(bad)


def check_standard_ops(model: onnx.ModelProto) -> None:
    """Raise :class:`ExportError` if the graph holds any op outside the standard ONNX domains."""
    bad = nonstandard_ops(model)
    if bad:
        raise ExportError(
            f"the exported graph holds non-standard ops {', '.join(bad[:6])}: other runtimes cannot run them; "
            "export the model in eval mode without training-only modules"
        )


def graph_digest(model: onnx.ModelProto) -> str:
    """SHA-256 of the initializers (name, dtype, shape, values) and nodes; independent of metadata_props."""
    h = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        arr = numpy_helper.to_array(init)
        h.update(f"{init.name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    for node in _all_nodes(model.graph):
        h.update(f"{node.domain}::{node.op_type}({','.join(node.input)})->({','.join(node.output)})".encode())
        for attr in node.attribute:
            if attr.type not in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                h.update(attr.SerializeToString(deterministic=True))
    for vi in (*model.graph.input, *model.graph.output):
        h.update(f"io:{vi.name}|{vi.type.tensor_type.elem_type}".encode())
    return h.hexdigest()


# -- files ----------------------------------------------------------------------------------------------------
def load_onnx(path: str | Path, *, check: bool = True, verify_digest: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, turning every way it can be broken into an :class:`OnnxFileError` with a message.

    ``check`` runs ``onnx.checker``; ``verify_digest`` compares the pruneopt graph digest when the file has one.
    """
    p = Path(path)
    if not p.is_file():
        raise OnnxFileError(f"{p} does not exist (export one with `pruneopt export PATH --onnx --out {p.name}`)")
    if p.stat().st_size == 0:
        raise OnnxFileError(f"{p} is empty: the export did not finish; export it again")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError, external-data errors, ...
        raise OnnxFileError(
            f"{p} is not a readable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            "; the file is truncated or corrupted: export it again"
        ) from exc
    if not model.graph.node or not model.graph.output:
        raise OnnxFileError(f"{p} holds no graph (truncated or not an ONNX model): export it again")
    if check:
        try:
            onnx.checker.check_model(model)
        except (onnx.checker.ValidationError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxFileError(f"{p} fails the ONNX checker ({first}); the file is corrupted: export it again") \
                from exc
    props = {m.key: m.value for m in model.metadata_props}
    _check_complete(p, model, props)
    if verify_digest:
        stored = props.get(PREFIX + "graph_digest")
        if stored and stored != graph_digest(model):
            raise OnnxFileError(
                f"{p}: the weights or graph differ from what pruneopt export wrote (graph digest mismatch); the file "
                "is corrupted or was edited: export it again"
            )
    return model


def _check_complete(path: Path, model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Refuse a file written by ``pruneopt export`` whose pruneopt metadata lost entries (cut short or edited).

    Files without any pruneopt key and not produced by pruneopt are plain ONNX models and pass.
    """
    mine = {k for k in props if k.startswith(PREFIX)}
    if not mine and model.producer_name != PRODUCER:
        return
    manifest = props.get(MANIFEST_KEY)
    if manifest is not None:
        try:
            expected = set(json.loads(manifest))
        except (ValueError, TypeError):
            expected = set()
        if not expected:
            raise OnnxFileError(f"{path}: its pruneopt key manifest is malformed; the file is truncated or edited: "
                                "export it again")
    elif model.producer_name == PRODUCER:  # written with a manifest, which is gone
        expected = {MANIFEST_KEY}
    else:  # written before the manifest: the fields every pruneopt file has
        expected = set(ExportMetadata.required_keys())
    missing = sorted(expected - mine)
    if missing:
        shown = ", ".join(k[len(PREFIX):] for k in missing[:4]) + (", ..." if len(missing) > 4 else "")
        entries = "entry is" if len(missing) == 1 else "entries are"
        raise OnnxFileError(f"{path}: {len(missing)} pruneopt metadata {entries} missing ({shown}); the file is "
                            "truncated or edited: export it again")


def write_metadata(model: onnx.ModelProto, meta: ExportMetadata) -> ExportMetadata:
    """Store ``meta`` (with a fresh graph digest) in ``model.metadata_props``, replacing older pruneopt keys.

    The format and the key manifest come first, so a file cut short keeps them and is refused (see
    :func:`load_onnx`); the model's ``producer_name`` says pruneopt wrote it.
    """
    meta.graph_digest = graph_digest(model)
    keep = [(m.key, m.value) for m in model.metadata_props if not m.key.startswith(PREFIX)]
    props = meta.to_props()
    manifest = json.dumps(sorted([*props, MANIFEST_KEY]))
    first = {PREFIX + "format": props.pop(PREFIX + "format"), MANIFEST_KEY: manifest}
    model.producer_name, model.producer_version = PRODUCER, meta.pruneopt_version
    del model.metadata_props[:]
    for key, value in [*keep, *first.items(), *props.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return meta


def metadata_of(model: onnx.ModelProto, source: str = "model") -> ExportMetadata:
    """The :class:`ExportMetadata` of a loaded model."""
    return ExportMetadata.from_props({m.key: m.value for m in model.metadata_props}, source)


def read_metadata(path: str | Path, *, verify_digest: bool = True) -> ExportMetadata:
    """The pruneopt metadata of an exported ONNX file (raises :class:`OnnxFileError` if it has none)."""
    model = load_onnx(path, check=False, verify_digest=verify_digest)
    return metadata_of(model, str(path))


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` atomically (a crash never leaves a half-written file at ``path``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() >= 2**31 - 1:
        raise ExportError(f"{p}: the model is over 2 GB, which a single ONNX protobuf cannot hold")
    return atomic_write(p, model.SerializeToString())
