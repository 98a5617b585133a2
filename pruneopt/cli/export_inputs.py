"""What ``pruneopt export FOLDER`` feeds the model: the folder's preprocessing record against the command's flags.

A folder that records its preprocessing (``preprocess.json``, :mod:`pruneopt.preprocess`) gives the input size,
mean/std, colour, pixel scale and whether the output is L2-normalised; ``--input``, ``--mean`` and ``--std`` may
repeat those values but not contradict them, unless ``--override-preprocess`` is given. A folder without a record
keeps the old defaults (the architecture's input size, ImageNet statistics), and the export says which it assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from export.metadata import default_mean_std

from ..errors import PruneoptError
from ..model_formats import FolderModel
from ..models import get_arch
from ..preprocess import PREPROCESS_FILE

__all__ = ["InputChoice", "choose_input"]


@dataclass(frozen=True)
class InputChoice:
    """The input of an export: shape (C, H, W), mean/std, pixel scale, whether to append L2 normalisation, where
    the values came from (``source``) and what to tell the user about them (``notes``)."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool = False
    pixel_scale: float = 1.0 / 255.0
    source: str = "given"
    notes: tuple[str, ...] = field(default=())


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in shape)


def _values_text(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=0, atol=1e-6))


def choose_input(loaded: FolderModel, shape: tuple[int, int, int] | None, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None, *, normalize: bool, override: bool) -> InputChoice:
    """The input of ``loaded``'s export given the flags (``None``: not given); see the module docstring."""
    pre, spec, where = loaded.preprocess, loaded.spec, loaded.folder / PREPROCESS_FILE
    if pre is None:
        assumed = []
        if shape is None:
            shape = (spec.in_chans, *get_arch(spec.arch).default_input[1:])
            assumed.append(f"input {_shape_text(shape)} (the {spec.arch} default)")
        if mean is None or std is None:
            mean, std = default_mean_std(shape[0])
            assumed.append(f"mean {_values_text(mean)} and std {_values_text(std)} (ImageNet's)")
        told = () if not assumed else (
            f"{loaded.folder} records no preprocessing ({PREPROCESS_FILE}); assumed {' and '.join(assumed)}: pass "
            "--input, --mean and --std if the model was trained otherwise",)
        return InputChoice(shape, mean, std, normalize, source="assumed" if assumed else "given",
                           notes=told)
    kind = "embedding" if spec.features_only else "logits"
    if pre.output != kind:
        raise PruneoptError(f"{where} says the model outputs {pre.output}, but its spec ({spec.arch}) gives "
                            f"{kind}: the record does not belong to this model; save the model again")
    clash = []
    if shape is not None and tuple(shape) != pre.input_shape:
        clash.append(f"--input {_shape_text(shape)} (recorded {_shape_text(pre.input_shape)})")
    if mean is not None and not _same(mean, pre.mean):
        clash.append(f"--mean {_values_text(mean)} (recorded {_values_text(pre.mean)})")
    if std is not None and not _same(std, pre.std):
        clash.append(f"--std {_values_text(std)} (recorded {_values_text(pre.std)})")
    notes: tuple[str, ...] = ()
    if clash and not override:
        raise PruneoptError(f"{'; '.join(clash)} contradict{'s' if len(clash) == 1 else ''} {where}: leave "
                            f"{'it' if len(clash) == 1 else 'them'} out to export with the recorded preprocessing, or "
                            "add --override-preprocess")
    if clash:
        notes = (f"overriding {where}: {'; '.join(clash)}",)
    return InputChoice(tuple(shape or pre.input_shape), tuple(mean or pre.mean),  # type: ignore[arg-type]
                       tuple(std or pre.std), normalize or pre.normalized, pre.pixel_scale,
                       source="recorded" + (", overridden" if clash else ""), notes=notes)
