"""Parents from state-dict files: torchvision-named ResNets and MobileNetV2 in ``.pth``, ``.pt`` or
``.safetensors`` files.

pruneopt's networks name their modules as torchvision does, so a torchvision state dict (``resnet50-0676ba61.pth``,
or one saved from any training script with those names) fills the full-width network of its architecture. This
module reads such a file (a bare state dict, or one under ``state_dict`` / ``model`` / ``model_state_dict``, with
any ``module.`` prefix of DataParallel removed; ``.pth``/``.pt`` are read with ``weights_only=True``, so a file
cannot run code), finds the architecture whose expected tensors it holds (:func:`inspect_state_dict`), and builds the
network (:func:`load_state_dict_parent`). The expected names and shapes come from the architecture's channel graph,
so checking a file builds no network. A file that does not fit is one line naming the first few missing,
unexpected or misshapen tensors, and the architecture it does look like when there is one.

:func:`replace_head` swaps the classifier for one of another class count (e.g. ImageNet's 1000 classes for a
data set's 10), keeping every other weight.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .checkpoint import load_state_strict
from .errors import PruneoptError
from .models import ModelSpec, build, get_arch, list_archs

STATE_SUFFIXES = (".pth", ".pt", ".safetensors")
WRAPPERS = ("state_dict", "model", "model_state_dict")
BN_COUNTER = "num_batches_tracked"


def is_state_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in STATE_SUFFIXES


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file (see the module docstring); one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise PruneoptError(f"--parent {path}: no such file")
    try:
        if p.suffix.lower() == ".safetensors":
            raw: object = load_file(str(p), device="cpu")
        else:
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load fails in many ways on a file that is not a checkpoint
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PruneoptError(f"--parent {path}: cannot read this state dict ({first[:200]})") from None
    if isinstance(raw, Mapping):
        for key in WRAPPERS:
            inner = raw.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                raw = inner
                break
    if not isinstance(raw, Mapping) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise PruneoptError(f"--parent {path}: not a state dict (a mapping of tensor names to tensors)")
    state = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of ``spec``'s network, from its channel graph (no network is built)."""
    widths = spec.width_map()
    out: dict[str, tuple[int, ...]] = {}
    for layer in get_arch(spec.arch).layers(spec):
        cin, cout = layer.channels(widths)
        if layer.kind == "conv":
            out[f"{layer.name}.weight"] = (cout, 1 if layer.depthwise else cin, layer.kernel, layer.kernel)
        elif layer.kind == "linear":
            out[f"{layer.name}.weight"] = (cout, cin)
        else:
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{layer.name}.{name}"] = (cout,)
            out[f"{layer.name}.{BN_COUNTER}"] = ()
        if layer.bias or layer.kind == "linear":
            out[f"{layer.name}.bias"] = (cout,)
    return out


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec a network built by :mod:`pruneopt.models` carries."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise PruneoptError("only networks built by pruneopt.models carry a spec")
    return spec


def head_name(spec: ModelSpec) -> str:
    """The module name of the classifier (``fc``, ``classifier.1``)."""
    linear = [layer.name for layer in get_arch(spec.arch).layers(spec) if layer.kind == "linear"]
    if not linear:
        raise PruneoptError(f"a features-only {spec.arch} has no classifier")
    return linear[-1]


def _spec_for(arch: str, state: Mapping[str, torch.Tensor]) -> ModelSpec | None:
    """The full-width spec of ``arch`` with the input channels and classes the file's tensors say, or None."""
    a = get_arch(arch)
    probe = a.default_spec()
    layers = a.layers(probe)
    stem, head = f"{layers[0].name}.weight", f"{head_name(probe)}.weight"
    if stem not in state or head not in state or state[stem].dim() != 4 or state[head].dim() != 2:
        return None
    return a.default_spec(in_chans=int(state[stem].shape[1]), num_classes=int(state[head].shape[0]))


def _problems(spec: ModelSpec, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, misshapen) tensors of ``state`` for ``spec`` (batch-norm counters may be missing)."""
    want = expected_shapes(spec)
    missing = [k for k in want if k not in state and not k.endswith(BN_COUNTER)]
    unexpected = [k for k in state if k not in want]
    misshapen = [f"{k} {tuple(state[k].shape)} vs {want[k]}" for k in want
                 if k in state and tuple(state[k].shape) != want[k]]
    return missing, unexpected, misshapen


@dataclass(frozen=True)
class StateDictInfo:
    """What a state-dict file holds: the architecture's full-width spec (input channels and classes from the file)."""

    path: Path
    spec: ModelSpec

    @property
    def arch(self) -> str:
        return self.spec.arch


def _fits(arch: str, state: Mapping[str, torch.Tensor]) -> bool:
    spec = _spec_for(arch, state)
    return spec is not None and not any(_problems(spec, state))


def _listed(what: str, items: list[str]) -> str:
    return f"{len(items)} {what} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"


def inspect_state_dict(path: str | os.PathLike[str], arch: str | None = None,
                       state: Mapping[str, torch.Tensor] | None = None) -> StateDictInfo:
    """The architecture of a state-dict file: ``arch`` checked, or the one architecture it fits."""
    state = read_state_dict(path) if state is None else state
    fitting = [a for a in list_archs() if _fits(a, state)]
    if arch is None:
        if not fitting:
            raise PruneoptError(f"--parent {path}: its {len(state)} tensors fit none of {', '.join(list_archs())} in "
                                "torchvision naming (pass --arch NAME to see what differs)")
        arch = fitting[0]
    name = get_arch(arch).name
    spec = _spec_for(name, state)
    if spec is None:
        head = head_name(get_arch(name).default_spec())
        raise PruneoptError(f"--parent {path} is not a {name} in torchvision naming: it lacks its first conv or its "
                            f"classifier ({head}.weight)" + (f"; it looks like a {fitting[0]}" if fitting else ""))
    missing, unexpected, misshapen = _problems(spec, state)
    if missing or unexpected or misshapen:
        parts = [_listed(w, items) for w, items in (("missing", missing), ("unexpected", unexpected),
                                                     ("misshapen", misshapen)) if items]
        hint = f"; it looks like a {fitting[0]} (--arch {fitting[0]})" if fitting else ""
        raise PruneoptError(f"--parent {path} does not fit a full-width {name} (torchvision naming): "
                            f"{'; '.join(parts)}{hint}")
    return StateDictInfo(Path(path), spec)


def load_state_dict_parent(path: str | os.PathLike[str], arch: str | None = None) -> nn.Module:
    """The network a state-dict file holds (eval mode; its spec as ``model.spec``)."""
    state = read_state_dict(path)
    info = inspect_state_dict(path, arch, state)
    model = build(info.spec)
    full = model.state_dict()
    filled = {k: state.get(k, full[k]) for k in full}  # batch-norm counters may be missing from older files
    load_state_strict(model, filled, f"--parent {path}", PruneoptError)
    return model.eval()


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """``model`` with a freshly initialised classifier of ``num_classes`` outputs (drawn from torch's global
    generator; seed it first), every other weight kept."""
    spec = spec_of(model)
    new_spec = ModelSpec(spec.arch, spec.widths, spec.in_chans, num_classes, spec.last_stride, spec.features_only)
    fresh = build(new_spec)
    head = head_name(spec) + "."
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    state = {**fresh.state_dict(), **kept}
    load_state_strict(fresh, state, "head replacement")
    return fresh.train(model.training)
