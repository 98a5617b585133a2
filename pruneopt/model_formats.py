"""Model folders by format: which folder layouts ``pruneopt export`` (and bench) can load, and how.

A *model format* recognises a folder and loads it as a :class:`FolderModel`: the network in eval mode (its forward
takes the images' normalised input and gives the output that is exported), its width spec, and the preprocessing
record of the folder (:class:`~pruneopt.preprocess.Preprocess`, or ``None`` when it has none). The built-in format
is the *subnetwork* folder (``spec.json`` + ``weights.safetensors``, :mod:`pruneopt.checkpoint`). Other packages add
theirs as entry points of the group ``pruneopt.model_formats``, naming an object that implements
:class:`ModelFormat`::

    [project.entry-points."pruneopt.model_formats"]
    reid = "reidserve.model:FOLDER_FORMAT"

so that pruneopt reads a re-ID model folder (backbone + pooling + neck) without importing reidserve. A format's
module is imported the first time a folder is loaded. Registered formats are asked first, in name order, the
subnetwork format last (it claims every folder that has a ``spec.json``, to report what is missing there).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .errors import PruneoptError
from .preprocess import Preprocess, read_preprocess

if TYPE_CHECKING:
    from torch import nn

    from .models import ModelSpec

__all__ = ["GROUP", "FolderModel", "ModelFormat", "SubnetworkFormat", "available_formats", "find_format",
           "load_model_folder"]

GROUP = "pruneopt.model_formats"
BUILT_IN = "subnetwork"


@dataclass(frozen=True)
class FolderModel:
    """A model loaded from a folder: ``model`` (eval mode), its ``spec`` (a re-ID model: its backbone's), the
    folder's ``preprocess`` record (``None``: none), the ``format`` that read it and the ``folder`` its weights are
    in (a run folder resolves to its model folder)."""

    model: nn.Module
    spec: ModelSpec
    preprocess: Preprocess | None
    format: str
    folder: Path


@runtime_checkable
class ModelFormat(Protocol):
    """One folder layout: its ``name``, a ``description`` of the folders it reads (for messages), whether it
    ``recognises`` a folder and how it ``load``\\ s one."""

    name: str
    description: str

    def recognises(self, folder: Path) -> bool:
        """Whether ``folder`` (an existing directory) is of this format; cheap (file names only)."""
        ...

    def load(self, folder: Path) -> FolderModel:
        """The model of ``folder``; a :class:`~pruneopt.errors.PruneoptError` naming the file when it is broken."""
        ...


class SubnetworkFormat:
    """``spec.json`` + ``weights.safetensors`` (+ ``preprocess.json``): what :func:`~pruneopt.checkpoint.save_subnet`
    writes (a search's parent and winner)."""

    name = BUILT_IN
    description = "a subnetwork folder (spec.json + weights.safetensors, such as a search's winner/)"

    def recognises(self, folder: Path) -> bool:
        return (folder / "spec.json").is_file()

    def load(self, folder: Path) -> FolderModel:
        from .checkpoint import load_subnet  # lazy: torch, which listing the formats does not need

        model = load_subnet(folder)
        return FolderModel(model, model.spec, read_preprocess(folder), self.name, folder)  # type: ignore[arg-type]


_BUILT_IN_FORMAT = SubnetworkFormat()
_loaded: dict[str, ModelFormat] = {}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP) if ep.name != BUILT_IN}


def _load_entry(name: str, ep: EntryPoint) -> ModelFormat:
    fmt = _loaded.get(name)
    if fmt is not None:
        return fmt
    try:
        obj = ep.load()
    except ImportError as exc:
        raise PruneoptError(f"model format {name!r} ({ep.value}) cannot be loaded: {exc}") from None
    if not isinstance(obj, ModelFormat) or obj.name != name:
        raise PruneoptError(f"the entry point {name} = {ep.value} of the group {GROUP} is not a model format named "
                            f"{name!r}")
    _loaded[name] = obj
    return obj


def available_formats() -> list[ModelFormat]:
    """Every registered format, in the order folders are matched: plug-ins by name, then the subnetwork folder."""
    return [*(_load_entry(n, ep) for n, ep in sorted(_entry_points().items())), _BUILT_IN_FORMAT]


def _as_folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        p = p.parent
    if not p.is_dir():
        raise PruneoptError(f"{p} is not a model folder; give {_described()}")
    return p


def _described() -> str:
    formats = available_formats()
    text = [f.description for f in (formats[-1], *formats[:-1])]  # the built-in subnetwork folder first
    return ", ".join(text[:-1]) + f" or {text[-1]}" if len(text) > 1 else text[0]


def find_format(path: str | Path) -> ModelFormat:
    """The format of the folder ``path`` (or of the folder of a ``spec.json``); a one-line error when none knows it."""
    folder = _as_folder(path)
    for fmt in available_formats():
        if fmt.recognises(folder):
            return fmt
    raise PruneoptError(f"{folder} is not a model folder; give {_described()}")


def load_model_folder(path: str | Path) -> FolderModel:
    """Load the model of the folder ``path`` with the format that recognises it (see the module docstring)."""
    folder = _as_folder(path)
    return find_format(folder).load(folder)
