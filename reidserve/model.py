"""The re-ID embedding model: a ``pruneopt`` backbone, GeM pooling, a BNNeck and L2 normalisation.

``ReidModel(backbone)`` wraps any backbone built by :mod:`pruneopt.models` with ``features_only=True``
(it returns the last feature map ``[N, C, H, W]``; build it with last-stage stride 1, as re-ID does)::

    feature map -> GeM pooling (learnable p, init 3) -> BatchNorm1d (bias frozen at 0) -> L2 normalise

The forward pass returns the L2-normalised ``[N, C]`` embedding in training and in eval mode; in eval
mode it is made of plain torch operations only (``clamp``, ``pow``, ``mean``, batch norm, ``normalize``),
so it exports to ONNX as is.

On disk a re-ID model is a folder (see :func:`save_reid_model`)::

    spec.json          the backbone's pruneopt spec (features_only, last_stride 1)
    model.safetensors  the whole ReidModel state dict (backbone.*, pool.p, neck.*)
    reid.json          the head configuration (pooling, neck, embedding size, input size, mean/std)
    preprocess.json    how images become the input, and the output (an L2-normalised embedding); see
                       :mod:`pruneopt.preprocess`

``reidserve train`` writes one into its run folder's ``model/``; a re-ID search writes its winner as one. The
folder is a *model format* of pruneopt (:data:`FOLDER_FORMAT`, the entry point ``reid`` of the group
``pruneopt.model_formats``), so ``pruneopt export`` exports the whole model -- backbone, GeM, BNNeck and L2 -- from
a model folder or a run folder, without pruneopt importing reidserve.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pruneopt.checkpoint import WEIGHTS_FILE as SUBNET_WEIGHTS
from pruneopt.checkpoint import load_state_strict, read_subnet, write_subnet
from pruneopt.common.files import atomic_write_json
from pruneopt.errors import SpecError
from pruneopt.model_formats import FolderModel
from pruneopt.models import ModelSpec, Network, build, default_spec
from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, read_preprocess

from .errors import ReidserveError

__all__ = [
    "FOLDER_FORMAT",
    "GeM",
    "HeadConfig",
    "MODEL_FORMAT",
    "ModelError",
    "ReidFolderFormat",
    "ReidModel",
    "backbone_from_module",
    "backbone_from_subnet",
    "backbone_spec",
    "build_reid_model",
    "is_model_folder",
    "load_reid_model",
    "reid_spec",
    "resolve_model_folder",
    "save_reid_model",
]

MODEL_FORMAT = "reidserve.model/1"
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
HEAD_FILE = "reid.json"


class ModelError(ReidserveError):
    """A re-ID model (or backbone) folder that is missing, malformed or does not fit its spec."""


class GeM(nn.Module):
    """Generalised-mean pooling ``(mean(x.clamp(eps) ** p)) ** (1 / p)`` over H and W, with learnable ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0 or eps <= 0:
            raise ValueError(f"GeM needs p > 0 and eps > 0, got p={p}, eps={eps}")
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


@dataclass(frozen=True)
class HeadConfig:
    """What sits on top of the backbone, and the input the model expects (for export and serving)."""

    gem_p: float = 3.0
    gem_eps: float = 1e-6
    input_size: tuple[int, int] = (256, 128)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self, embed_dim: int) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "pooling": {"type": "gem", "p_init": self.gem_p, "eps": self.gem_eps},
            "neck": {"type": "bnneck", "bias": "frozen"},
            "normalize": "l2",
            "embed_dim": int(embed_dim),
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "weights": WEIGHTS_FILE,
            "backbone_spec": SPEC_FILE,
            **({"extra": self.extra} if self.extra else {}),
        }

    def preprocess(self, pixel_scale: float = 1.0 / 255.0) -> Preprocess:
        """What a model with this head takes (RGB at ``input_size``, ``mean``/``std``) and gives (an L2-normalised
        embedding), as the folder's ``preprocess.json`` records it."""
        return Preprocess((3, *self.input_size), self.mean, self.std, color="RGB",
                          output="embedding", normalized=True, pixel_scale=pixel_scale)

    @classmethod
    def from_dict(cls, data: Any, where: str = "reid.json") -> HeadConfig:
        if not isinstance(data, dict):
            raise ModelError(f"{where}: expected a JSON object")
        if data.get("format") != MODEL_FORMAT:
            raise ModelError(
                f"{where}: unsupported format {data.get('format')!r} (this version reads {MODEL_FORMAT!r})"
            )
        try:
            pooling = data["pooling"]
            if pooling.get("type") != "gem":
                raise ModelError(f"{where}: unsupported pooling {pooling.get('type')!r} (only 'gem')")
            size = tuple(int(s) for s in data["input_size"])
            if len(size) != 2:
                raise ValueError("input_size must be [height, width]")
            return cls(
                gem_p=float(pooling["p_init"]),
                gem_eps=float(pooling["eps"]),
                input_size=(size[0], size[1]),
                mean=tuple(float(m) for m in data["mean"]),
                std=tuple(float(s) for s in data["std"]),
                extra=dict(data.get("extra", {})),
            )
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{where}: malformed head configuration ({type(exc).__name__}: {exc})") from exc


class ReidModel(nn.Module):
    """``backbone`` (features-only pruneopt network) -> GeM -> BNNeck -> L2-normalised embedding.

    ``output_normalized`` tells :class:`export.onnx.ExportWrapper` that the output is L2-normalised already; the
    model saves itself as a re-ID model folder wherever a stage saves "the model" (``save_folder``, see
    :func:`pruneopt.checkpoint.save_subnet`).
    """

    output_normalized = True

    def __init__(self, backbone: nn.Module, head: HeadConfig | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, Network) or not backbone.spec.features_only:
            raise ModelError(
                "the backbone must be a pruneopt.models network built with features_only=True "
                "(use reid_spec(spec) to convert a classification spec)"
            )
        self.head = head or HeadConfig()
        self.backbone: Network = backbone
        self.pool = GeM(self.head.gem_p, self.head.gem_eps)
        dim = int(backbone.out_channels)
        self.neck = nn.BatchNorm1d(dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)  # BNNeck: no shift, so the embedding stays centred

    @property
    def spec(self) -> ModelSpec:
        return self.backbone.spec

    @property
    def embed_dim(self) -> int:
        return int(self.neck.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.pool(self.backbone(x))
        return F.normalize(self.neck(feat), dim=1)

    def save_folder(self, folder: Path, preprocess: Preprocess | None) -> Path:
        """:func:`save_reid_model` (the hook of :func:`pruneopt.checkpoint.save_subnet`)."""
        return save_reid_model(self, folder, preprocess)


def reid_spec(spec: ModelSpec) -> ModelSpec:
    """The features-only, last-stride-1 version of ``spec`` (same widths, so the same conv weights fit)."""
    return dataclasses.replace(spec, features_only=True, last_stride=1).validate()


def build_reid_model(
    arch_or_spec: str | ModelSpec, head: HeadConfig | None = None, *, seed: int | None = None
) -> ReidModel:
    """A freshly initialised :class:`ReidModel` from an architecture name (full width) or any spec.

    ``seed`` makes the initialisation reproducible (it seeds a forked torch RNG; global state is untouched).
    """
    spec = default_spec(arch_or_spec, in_chans=3) if isinstance(arch_or_spec, str) else arch_or_spec
    spec = reid_spec(spec)
    if spec.in_chans != 3:
        raise ModelError(f"re-ID images are RGB: the backbone spec must have in_chans=3, got {spec.in_chans}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return ReidModel(build(spec), head)


def _adapt_state(state: dict[str, torch.Tensor], spec: ModelSpec) -> tuple[dict[str, torch.Tensor], ModelSpec]:
    """Drop the classifier and turn a single/odd-channel stem into an RGB one (weights averaged over channels)."""
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
    if spec.in_chans != 3:
        stem_key = "conv1.weight" if "conv1.weight" in state else "features.0.0.weight"
        if stem_key not in state:
            raise ModelError(f"cannot find the stem convolution to adapt in_chans={spec.in_chans} to RGB")
        w = state[stem_key]
        state[stem_key] = w.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1) * (w.shape[1] / 3.0)
        spec = dataclasses.replace(spec, in_chans=3)
    return state, spec


def backbone_from_subnet(folder: str | os.PathLike[str]) -> Network:
    """A features-only, last-stride-1 backbone from a pruned winner (``spec.json`` + ``weights.safetensors``), a
    re-ID model folder or a ``reidserve train`` run folder (the backbone of its model; the head is left out).

    A subnetwork folder is read by :func:`pruneopt.checkpoint.read_subnet`. The classifier (``fc.*`` /
    ``classifier.*``) is dropped. A winner trained on grey images (``in_chans=1``, e.g. Fashion-MNIST) gets an RGB
    stem whose weights are the original ones divided by 3 per channel, so a grey image replicated to RGB gives the
    same activations.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ModelError(f"backbone folder {root} does not exist (expected spec.json + {SUBNET_WEIGHTS}, a re-ID "
                         "model folder or a training run folder)")
    if _reid_folder(root) is not None:
        return load_reid_model(root).backbone
    spec, state = _read(root, SUBNET_WEIGHTS)
    state, spec = _adapt_state(state, spec)
    model = build(reid_spec(spec))
    load_state_strict(model, state, f"{root / SUBNET_WEIGHTS} does not fit {root / SPEC_FILE}", ModelError)
    return model


def _read(root: Path, weights_file: str, device: str = "cpu") -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """:func:`pruneopt.checkpoint.read_subnet`, its errors as :class:`ModelError`."""
    try:
        return read_subnet(root, weights_file=weights_file, device=device)
    except SpecError as exc:
        raise ModelError(str(exc)) from exc


def backbone_from_module(module: nn.Module) -> Network:
    """A features-only, last-stride-1 copy of a pruneopt network (weights copied, classifier dropped)."""
    spec = getattr(module, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ModelError("the backbone must be built by pruneopt.models (model.spec is missing)")
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    state, spec = _adapt_state(state, spec)
    model = build(reid_spec(spec))
    load_state_strict(model, state, f"the weights of the given {spec.arch} do not fit its spec", ModelError)
    return model


# ----------------------------------------------------------------------------------------------
# on disk
# ----------------------------------------------------------------------------------------------


def save_reid_model(model: ReidModel, folder: str | os.PathLike[str], preprocess: Preprocess | None = None) -> Path:
    """Write ``spec.json``, ``model.safetensors``, ``reid.json`` and ``preprocess.json`` into ``folder`` (each
    written atomically).

    The preprocessing record is the head's (:meth:`HeadConfig.preprocess`: the model outputs an L2-normalised
    embedding); a given ``preprocess`` (e.g. a search task's) must agree with it on the input, and gives its pixel
    scale.
    """
    record = model.head.preprocess(preprocess.pixel_scale if preprocess is not None else 1.0 / 255.0)
    if preprocess is not None:
        clash = [d for d in record.differences(preprocess) if not d.startswith(("output", "normalized"))]
        if clash:
            raise ModelError(f"the preprocessing to record does not fit the model's head: {'; '.join(clash)}")
    out = write_subnet(folder, model.spec, model.state_dict(), weights_file=WEIGHTS_FILE,
                       metadata={"format": MODEL_FORMAT, "spec_hash": model.spec.hash()})
    atomic_write_json(out / HEAD_FILE, model.head.to_dict(model.embed_dim))
    record.save(out)
    return out


def is_model_folder(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / HEAD_FILE).is_file()


def _reid_folder(path: Path) -> Path | None:
    """``path`` when it is a re-ID model folder, ``path/model`` when it is a training run folder, else None."""
    if is_model_folder(path):
        return path
    if is_model_folder(path / "model"):
        return path / "model"
    return None


def backbone_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The backbone spec of a subnetwork folder, a re-ID model folder or a training run folder (read, not built)."""
    p = Path(path)
    root = _reid_folder(p) or p
    try:
        return ModelSpec.load(root / SPEC_FILE)
    except SpecError as exc:
        raise ModelError(str(exc)) from None


def resolve_model_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a model folder, ``path/model`` when it is a training run folder."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model path {p} does not exist")
    root = _reid_folder(p)
    if root is not None:
        return root
    raise ModelError(
        f"{p} is neither a re-ID model folder ({HEAD_FILE}, {SPEC_FILE}, {WEIGHTS_FILE}) nor a training run "
        f"folder holding one in model/ (train one with `reidserve train --out {p} ...`)"
    )


def load_reid_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> ReidModel:
    """Rebuild a model saved by :func:`save_reid_model` (or the ``model/`` of a run folder), in eval mode."""
    root = resolve_model_folder(path)
    try:
        head_data = json.loads((root / HEAD_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{root / HEAD_FILE}: cannot read: {exc}") from exc
    head = HeadConfig.from_dict(head_data, str(root / HEAD_FILE))
    spec, state = _read(root, WEIGHTS_FILE, str(map_location))
    if not spec.features_only:
        raise ModelError(f"{root / SPEC_FILE}: a re-ID backbone spec must have features_only=true")
    model = ReidModel(build(spec), head)
    load_state_strict(model, state, f"{root / WEIGHTS_FILE} does not fit {root / SPEC_FILE}", ModelError)
    return model.to(map_location).eval()


class ReidFolderFormat:
    """The re-ID model folder as a pruneopt model format (see the module docstring): a model folder or a training
    run folder loads as the whole :class:`ReidModel`, with its preprocessing record (or, for folders written before
    there was one, the record its ``reid.json`` implies)."""

    name = "reid"
    description = (f"a re-ID model folder ({HEAD_FILE} + {SPEC_FILE} + {WEIGHTS_FILE}, such as a re-ID search's "
                   "winner/) or a `reidserve train` run folder")

    def recognises(self, folder: Path) -> bool:
        return _reid_folder(folder) is not None

    def load(self, folder: Path) -> FolderModel:
        root = resolve_model_folder(folder)
        model = load_reid_model(root)
        preprocess = read_preprocess(root) or model.head.preprocess()
        return FolderModel(model, model.spec, preprocess, self.name, root)


FOLDER_FORMAT = ReidFolderFormat()
