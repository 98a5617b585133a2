"""Re-ID data: dataset readers, augmentations, a torch Dataset, a P x K sampler, synthetic data.

Names are imported lazily, so ``reidserve.data.synth`` or the readers do not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # datasets
    "IMAGE_EXTENSIONS": "datasets",
    "KNOWN_DATASETS": "datasets",
    "DatasetError": "datasets",
    "Item": "datasets",
    "ReidDataset": "datasets",
    "default_search_roots": "datasets",
    "find_dataset": "datasets",
    "load_dataset": "datasets",
    "read_dukemtmc": "datasets",
    "read_market1501": "datasets",
    "read_msmt17": "datasets",
    "relabel": "datasets",
    # transforms
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "TestTransform": "transforms",
    "TrainTransform": "transforms",
    "hflip": "transforms",
    "load_image": "transforms",
    "normalize": "transforms",
    "pad_random_crop": "transforms",
    "random_erasing": "transforms",
    "resize": "transforms",
    # torch
    "ReidImageDataset": "torch_dataset",
    "PKSampler": "sampler",
    # synthetic data
    "SynthConfig": "synth",
    "SynthResult": "synth",
    "generate": "synth",
}

__all__ = [
    "DatasetError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "Item",
    "KNOWN_DATASETS",
    "PKSampler",
    "ReidDataset",
    "ReidImageDataset",
    "SynthConfig",
    "SynthResult",
    "TestTransform",
    "TrainTransform",
    "default_search_roots",
    "find_dataset",
    "generate",
    "hflip",
    "load_dataset",
    "load_image",
    "normalize",
    "pad_random_crop",
    "random_erasing",
    "read_dukemtmc",
    "read_market1501",
    "read_msmt17",
    "relabel",
    "resize",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .datasets import (
        IMAGE_EXTENSIONS,
        KNOWN_DATASETS,
        DatasetError,
        Item,
        ReidDataset,
        default_search_roots,
        find_dataset,
        load_dataset,
        read_dukemtmc,
        read_market1501,
        read_msmt17,
        relabel,
    )
    from .sampler import PKSampler
    from .synth import SynthConfig, SynthResult, generate
    from .torch_dataset import ReidImageDataset
    from .transforms import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        TestTransform,
        TrainTransform,
        hflip,
        load_image,
        normalize,
        pad_random_crop,
        random_erasing,
        resize,
    )
