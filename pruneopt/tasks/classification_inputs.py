"""What a classification search reads -- its data and its parent -- and the network input they imply.

* :class:`DataSettings` names the data (``--data``: fashion-mnist, cifar10, cifar100, or a folder; ``--data-dir``)
  and how its training images are split (``val_fraction`` held out to score candidates; ``train_limit``); its
  :meth:`~DataSettings.load` gives (train, val, test) splits (:mod:`pruneopt.data.sources`);
* :class:`ParentSource` is what ``--parent`` is before anything is trained: nothing (a parent trained in the run), a
  subnetwork folder, or a state-dict file (:mod:`pruneopt.pretrained`), with its spec and, for a folder, its
  recorded preprocessing;
* :func:`plan_feed` decides the input: channels from ``--input``, else the parent's, else the data's; size from
  ``--input``, else the data's; mean/std from ``--mean``/``--std``, else the parent's ``preprocess.json``, else
  ImageNet's for a colour state-dict parent (torchvision's weights expect them), else the data's. Augmentation
  follows the size (:func:`pruneopt.data.images.style_for`): pad-crop + flip below 96 pixels (2 pixels of padding
  for Fashion-MNIST, 1/8 of the side otherwise), random-resized crop + flip from 96 up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import SPEC_FILE, WEIGHTS_FILE
from ..data.images import style_for
from ..data.sources import ClassificationData, DataFacts, data_facts, open_data
from ..data.splits import AnySplit, FileSplit, train_val_split
from ..errors import PruneoptError
from ..loader import Feed
from ..models import ModelSpec, get_arch
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, read_preprocess
from ..pretrained import inspect_state_dict, is_state_file


@dataclass(frozen=True)
class DataSettings:
    """Which data, and how the training set is split (shared by parent training, candidates and finals)."""

    name: str = "fashion-mnist"  # --data: a name or a folder
    data_dir: str | None = None
    val_fraction: float = 1 / 6
    split_seed: int = 0
    train_limit: int | None = None  # use only N training images (quick runs)

    def open(self) -> ClassificationData:
        return open_data(self.name, self.data_dir, self.val_fraction, self.split_seed)

    def facts(self) -> DataFacts:
        """What the data says about the input, without reading a named data set's files."""
        return data_facts(self.name, self.val_fraction, self.split_seed)

    def load(self) -> tuple[AnySplit, AnySplit, AnySplit]:
        """(train, val, test) splits."""
        data = self.open()
        train_split, val = train_val_split(data.train, self.val_fraction, self.split_seed)
        if self.train_limit is not None:
            train_split = limit(train_split, self.train_limit, self.split_seed)
        return train_split, val, data.test


def limit(split: AnySplit, n: int, seed: int) -> AnySplit:
    """The first ``n`` images of an in-memory split (as the search always did), a seeded random ``n`` of files (an
    image folder lists its files class by class)."""
    if n >= len(split):
        return split
    if isinstance(split, FileSplit):
        return split.take(np.sort(np.random.default_rng(seed).permutation(len(split))[:n]))
    return split.take(slice(None, n))


@dataclass(frozen=True)
class ParentSource:
    """``--parent`` before anything is trained: ``kind`` is ``trained`` (none given: trained in the run),
    ``folder`` or ``state dict``; ``spec`` is the network as given (for ``trained``, the one to train)."""

    kind: str
    path: str | None
    spec: ModelSpec
    preprocess: Preprocess | None = None

    def describe(self) -> str:
        if self.kind == "trained":
            return f"{self.spec.arch} trained in the run"
        if self.kind == "state dict":
            return f"{self.spec.arch} from the state dict {self.path} (torchvision naming)"
        return f"{self.spec.arch} from {self.path}"


def parent_source(parent: str | None, arch: str, channels: int, num_classes: int) -> ParentSource:
    """What ``parent`` is (one-line errors for a folder or file that does not hold a fitting network); without one,
    the full-width ``arch`` for ``channels`` and ``num_classes``."""
    if parent is None:
        return ParentSource("trained", None, get_arch(arch).default_spec(in_chans=channels, num_classes=num_classes))
    if is_state_file(parent):
        info = inspect_state_dict(parent, arch)
        return ParentSource("state dict", parent, info.spec)
    folder = Path(parent)
    spec = ModelSpec.load(folder / SPEC_FILE)
    if not (folder / WEIGHTS_FILE).is_file():
        raise PruneoptError(f"--parent {parent}: {WEIGHTS_FILE} is missing (a subnetwork folder holds {SPEC_FILE} "
                            f"and {WEIGHTS_FILE})")
    if spec.arch != get_arch(arch).name:
        raise PruneoptError(f"--parent {parent} is a {spec.arch}, not a {arch} (leave --arch out to take the parent's)")
    if spec.features_only:
        raise PruneoptError(f"--parent {parent} is a features-only backbone; classification needs a classifier")
    return ParentSource("folder", parent, spec, read_preprocess(folder))


def plan_feed(data: DataFacts, source: ParentSource, input_shape: tuple[int, int, int] | None,
              mean: tuple[float, ...] | None, std: tuple[float, ...] | None, skip_bad: bool = False) -> Feed:
    """The input of the networks of a search (see the module docstring); device and loader processes are the
    caller's."""
    given = source.kind != "trained"
    channels = input_shape[0] if input_shape else (source.spec.in_chans if given else data.channels)
    if given and channels != source.spec.in_chans:
        raise PruneoptError(f"--input has {channels} channel(s) but --parent {source.path} takes "
                            f"{source.spec.in_chans}")
    if channels not in (1, 3):
        raise PruneoptError(f"images are fed with 1 (grey) or 3 (RGB) channels, not {channels}")
    size = (input_shape[1], input_shape[2]) if input_shape else data.size
    stats = _stats(data, source, channels)
    mean_t = _per_channel(mean, channels, "--mean") if mean else stats[0]
    std_t = _per_channel(std, channels, "--std") if std else stats[1]
    pad = 2 if data.kind == "fashion-mnist" else max(2, min(size) // 8)
    return Feed(channels, size, mean_t, std_t, style_for(size), pad, skip_bad=skip_bad)


def _stats(data: DataFacts, source: ParentSource, channels: int) -> tuple[tuple[float, ...], ...]:
    pre = source.preprocess
    if pre is not None and pre.input_shape[0] == channels:
        return pre.mean, pre.std
    if source.kind == "state dict" and channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return data.stats(channels)


def _per_channel(values: tuple[float, ...], channels: int, option: str) -> tuple[float, ...]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise PruneoptError(f"{option} needs 1 or {channels} values (one per input channel), got {len(values)}")
    return values


def feed_preprocess(feed: Feed) -> Preprocess:
    """The ``preprocess.json`` of the networks fed by ``feed``."""
    return Preprocess.for_channels((feed.channels, *feed.size), feed.mean, feed.std, output="logits")


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` -> a tuple of floats (``--std``: each > 0)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise PruneoptError(f"{option} must be comma-separated numbers, e.g. 0.485,0.456,0.406, got {text!r}") from None
    if not values or (option == "--std" and min(values) <= 0):
        raise PruneoptError(f"{option} needs one positive value or one per channel, got {text!r}")
    return values
