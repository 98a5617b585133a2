"""Readers for person re-identification datasets on disk.

Supported layouts
-----------------
* **Market-1501** (and the synthetic data written by :mod:`reidserve.data.synth`): folders
  ``bounding_box_train/``, ``bounding_box_test/`` (the gallery) and ``query/`` holding files named
  ``PPPP_cCsS_FFFFFF_BB.jpg`` (person id, camera, sequence, frame, box), e.g.
  ``0002_c1s1_000451_03.jpg``. Person id ``-1`` marks junk boxes and is dropped everywhere; person id
  ``0`` marks distractors and is kept in the gallery only (it has no true match, so it is dropped
  from the query and training splits).
* **DukeMTMC-reID**: the same three folders, names ``PPPP_cC_fFFFFFFF.jpg``, e.g.
  ``0001_c2_f0046182.jpg``. Every pid is a real identity.
* **MSMT17** (V1 and V2): list files ``list_train.txt``, ``list_val.txt``, ``list_query.txt`` and
  ``list_gallery.txt`` with lines ``relative/path.jpg pid``; train/val paths are relative to the
  ``train/`` folder (``mask_train_v2/`` for V2) and query/gallery paths to ``test/``
  (``mask_test_v2/``). The camera is the third ``_`` field of the file name, e.g. ``01`` in
  ``0000_000_01_0303morning_0015_0.jpg``. As is customary, the training split is
  ``list_train.txt`` + ``list_val.txt`` (the val images belong to training identities).

Conventions
-----------
* ``camid`` is **0-based**: ``c1`` in a file name becomes camid ``0``.
* ``pid`` is the identity number exactly as written in the file (no relabelling), except in
  :meth:`ReidDataset.relabeled_train` which maps the training pids to ``0..N-1``.
* Files whose extension is not ``.jpg``/``.jpeg`` (case-insensitive) and hidden files are ignored
  (``Thumbs.db``, ``.DS_Store``, ``readme.txt``...).
* A ``.jpg`` whose name does not follow the layout is an error naming the file
  (:class:`DatasetError`) by default; with ``strict=False`` such files are skipped instead, and
  their paths are recorded in :attr:`ReidDataset.skipped`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ReidserveError

__all__ = [
    "DatasetError",
    "Item",
    "ReidDataset",
    "IMAGE_EXTENSIONS",
    "KNOWN_DATASETS",
    "read_market1501",
    "read_dukemtmc",
    "read_msmt17",
    "load_dataset",
    "find_dataset",
    "default_search_roots",
    "relabel",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg")
KNOWN_DATASETS = ("market1501", "dukemtmc", "msmt17")

_MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_MARKET_RE = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)$")
_DUKE_RE = re.compile(r"^(-?\d+)_c(\d+)_f(\d+)$")
_MSMT_RE = re.compile(r"^(\d+)_(\d+)_(\d+)_")

# Folder names under which the datasets are commonly unpacked, most specific first.
_FOLDER_NAMES: dict[str, tuple[str, ...]] = {
    "market1501": (
        "Market-1501-v15.09.15",
        "market1501/Market-1501-v15.09.15",
        "Market-1501",
        "market1501",
    ),
    "dukemtmc": ("DukeMTMC-reID", "dukemtmc-reid/DukeMTMC-reID", "dukemtmcreid/DukeMTMC-reID", "dukemtmc"),
    "msmt17": ("MSMT17_V2", "MSMT17_V1", "msmt17/MSMT17_V2", "msmt17/MSMT17_V1", "MSMT17", "msmt17"),
}


class DatasetError(ReidserveError):
    """A dataset folder is missing, malformed or unusable; the message says what to fix."""


@dataclass(frozen=True, order=True)
class Item:
    """One image: absolute ``path``, person id ``pid`` and 0-based camera id ``camid``."""

    path: str
    pid: int
    camid: int


@dataclass(frozen=True)
class ReidDataset:
    """A re-ID dataset split into train / query / gallery items (tuples of :class:`Item`)."""

    name: str
    root: str
    train: tuple[Item, ...]
    query: tuple[Item, ...]
    gallery: tuple[Item, ...]
    skipped: tuple[str, ...] = field(default=(), compare=False)

    @property
    def num_train_pids(self) -> int:
        return len({it.pid for it in self.train})

    @property
    def num_query_pids(self) -> int:
        return len({it.pid for it in self.query})

    @property
    def num_gallery_pids(self) -> int:
        return len({it.pid for it in self.gallery})

    @property
    def num_cams(self) -> int:
        return len({it.camid for it in (*self.train, *self.query, *self.gallery)})

    def train_pid_map(self) -> dict[int, int]:
        """Map from original training pid to a contiguous label ``0..N-1`` (sorted by pid)."""
        return {pid: i for i, pid in enumerate(sorted({it.pid for it in self.train}))}

    def relabeled_train(self) -> tuple[Item, ...]:
        """The training items with pids relabelled to ``0..N-1`` (ordered by original pid)."""
        return relabel(self.train)[0]

    def summary(self) -> str:
        lines = [f"{self.name} at {self.root}", "  split    ids   images  cameras"]
        for split in ("train", "query", "gallery"):
            items: tuple[Item, ...] = getattr(self, split)
            n_ids, n_cams = len({i.pid for i in items}), len({i.camid for i in items})
            lines.append(f"  {split:<7} {n_ids:>5} {len(items):>8} {n_cams:>8}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file(s) with unexpected names")
        return "\n".join(lines)


def relabel(items: Iterable[Item]) -> tuple[tuple[Item, ...], dict[int, int]]:
    """Relabel pids to ``0..N-1`` (in increasing order of the original pid).

    Returns the relabelled items (same order as given) and the map ``original pid -> label``.
    """
    items = tuple(items)
    mapping = {pid: i for i, pid in enumerate(sorted({it.pid for it in items}))}
    return tuple(Item(it.path, mapping[it.pid], it.camid) for it in items), mapping


# ----------------------------------------------------------------------------------------------
# Market-1501 / DukeMTMC-reID
# ----------------------------------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DatasetError(
            f"missing folder {folder}: expected the Market-1501 layout "
            f"(bounding_box_train/, bounding_box_test/, query/)"
        )
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image_name(e.name))


def _parse_bbox_name(stem: str, style: str) -> tuple[int, int] | None:
    m = (_MARKET_RE if style == "market1501" else _DUKE_RE).match(stem)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2))


def _detect_bbox_style(root: Path) -> str:
    """``market1501`` or ``dukemtmc`` from the first parseable image name found."""
    for split in _MARKET_SPLITS.values():
        folder = root / split
        if not folder.is_dir():
            continue
        for name in _list_images(folder):
            stem = os.path.splitext(name)[0]
            if _MARKET_RE.match(stem):
                return "market1501"
            if _DUKE_RE.match(stem):
                return "dukemtmc"
    raise DatasetError(
        f"no image in {root} is named like Market-1501 (0002_c1s1_000451_03.jpg) or "
        f"DukeMTMC-reID (0001_c2_f0046182.jpg)"
    )


def _read_bbox_split(
    folder: Path, style: str, split: str, distractor_pid: int | None, strict: bool, skipped: list[str]
) -> tuple[Item, ...]:
    example = "0002_c1s1_000451_03.jpg" if style == "market1501" else "0001_c2_f0046182.jpg"
    items = []
    for name in _list_images(folder):
        path = folder / name
        parsed = _parse_bbox_name(os.path.splitext(name)[0], style)
        if parsed is not None and parsed[1] < 1:
            parsed = None
        if parsed is None:
            if strict:
                raise DatasetError(
                    f"unexpected file name {path}: {style} names look like {example} "
                    f"(remove the file, or read with strict=False to skip such files)"
                )
            skipped.append(str(path))
            continue
        pid, cam = parsed
        if pid == -1:
            continue  # junk
        if pid == distractor_pid and split != "gallery":
            continue  # distractors are only meaningful in the gallery
        items.append(Item(str(path), pid, cam - 1))
    return tuple(items)


def _read_bbox_layout(root: str | os.PathLike[str], style: str, name: str, strict: bool) -> ReidDataset:
    rootp = Path(root).expanduser().resolve()
    if not rootp.is_dir():
        raise DatasetError(f"dataset folder {rootp} does not exist")
    missing = [s for s in _MARKET_SPLITS.values() if not (rootp / s).is_dir()]
    if missing:
        raise DatasetError(
            f"{rootp} is not a {name} folder: missing {', '.join(m + '/' for m in missing)} "
            f"(expected bounding_box_train/, bounding_box_test/ and query/)"
        )
    distractor = 0 if style == "market1501" else None
    skipped: list[str] = []
    splits = {
        split: _read_bbox_split(rootp / folder, style, split, distractor, strict, skipped)
        for split, folder in _MARKET_SPLITS.items()
    }
    ds = ReidDataset(name, str(rootp), splits["train"], splits["query"], splits["gallery"], tuple(skipped))
    _check_nonempty(ds)
    return ds


def read_market1501(
    root: str | os.PathLike[str], *, strict: bool = True, name: str = "market1501"
) -> ReidDataset:
    """Read a folder in the Market-1501 layout (also used by ``reidserve synth``)."""
    return _read_bbox_layout(root, "market1501", name, strict)


def read_dukemtmc(root: str | os.PathLike[str], *, strict: bool = True) -> ReidDataset:
    """Read a DukeMTMC-reID folder (Market-1501 folders, names like ``0001_c2_f0046182.jpg``)."""
    return _read_bbox_layout(root, "dukemtmc", "dukemtmc", strict)


def _check_nonempty(ds: ReidDataset) -> None:
    for split in ("query", "gallery"):
        if not getattr(ds, split):
            raise DatasetError(f"{ds.name} at {ds.root}: the {split} split has no usable image")
    if not ds.train:
        raise DatasetError(f"{ds.name} at {ds.root}: the train split has no usable image")


# ----------------------------------------------------------------------------------------------
# MSMT17
# ----------------------------------------------------------------------------------------------


def _msmt_dirs(root: Path) -> tuple[Path, Path]:
    for train_dir, test_dir in (("train", "test"), ("mask_train_v2", "mask_test_v2")):
        if (root / train_dir).is_dir() and (root / test_dir).is_dir():
            return root / train_dir, root / test_dir
    raise DatasetError(
        f"{root} is not an MSMT17 folder: expected train/ and test/ (V1) or mask_train_v2/ and "
        f"mask_test_v2/ (V2) next to the list_*.txt files"
    )


def _read_msmt_list(
    list_file: Path, image_dir: Path, strict: bool, check_files: bool, skipped: list[str]
) -> list[Item]:
    if not list_file.is_file():
        raise DatasetError(f"missing MSMT17 list file {list_file}")
    items = []
    with open(list_file, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            parts = line.split()
            where = f"{list_file}:{lineno}"
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetError(f"{where}: expected 'relative/path.jpg pid', got {line!r}")
            rel, pid = parts[0], int(parts[1])
            fname = os.path.basename(rel)
            if not _is_image_name(fname):
                continue
            m = _MSMT_RE.match(fname)
            if m is None or int(m.group(3)) < 1:
                if strict:
                    raise DatasetError(
                        f"{where}: unexpected file name {fname!r}: MSMT17 names look like "
                        f"0000_000_01_0303morning_0015_0.jpg (third field = camera, from 01)"
                    )
                skipped.append(str(image_dir / rel))
                continue
            if pid < 0:
                continue
            path = image_dir / rel
            if check_files and not path.is_file():
                raise DatasetError(f"{where}: image {path} does not exist")
            items.append(Item(str(path), pid, int(m.group(3)) - 1))
    return items


def read_msmt17(
    root: str | os.PathLike[str], *, strict: bool = True, check_files: bool = True, use_val: bool = True
) -> ReidDataset:
    """Read an MSMT17 (V1 or V2) folder; ``use_val`` adds ``list_val.txt`` to the training split."""
    rootp = Path(root).expanduser().resolve()
    if not rootp.is_dir():
        raise DatasetError(f"dataset folder {rootp} does not exist")
    train_dir, test_dir = _msmt_dirs(rootp)
    skipped: list[str] = []
    train = _read_msmt_list(rootp / "list_train.txt", train_dir, strict, check_files, skipped)
    if use_val:
        train += _read_msmt_list(rootp / "list_val.txt", train_dir, strict, check_files, skipped)
    query = _read_msmt_list(rootp / "list_query.txt", test_dir, strict, check_files, skipped)
    gallery = _read_msmt_list(rootp / "list_gallery.txt", test_dir, strict, check_files, skipped)
    ds = ReidDataset("msmt17", str(rootp), tuple(train), tuple(query), tuple(gallery), tuple(skipped))
    _check_nonempty(ds)
    return ds


# ----------------------------------------------------------------------------------------------
# Layout detection and standard locations
# ----------------------------------------------------------------------------------------------


def _layout_of(folder: Path) -> str | None:
    """``bbox`` (Market/Duke layout), ``msmt17`` or ``None``."""
    if (folder / "list_train.txt").is_file() and (folder / "list_query.txt").is_file():
        return "msmt17"
    if all((folder / s).is_dir() for s in _MARKET_SPLITS.values()):
        return "bbox"
    return None


def default_search_roots() -> list[Path]:
    """Folders searched for datasets: ``$REID_DATA`` (``os.pathsep``-separated), ``~/.cache/reidserve``."""
    roots = [Path(p).expanduser() for p in os.environ.get("REID_DATA", "").split(os.pathsep) if p]
    roots.append(Path("~/.cache/reidserve").expanduser())
    return roots


def _normalise_name(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {
        "market": "market1501",
        "market1501": "market1501",
        "duke": "dukemtmc",
        "dukemtmc": "dukemtmc",
        "dukemtmcreid": "dukemtmc",
        "msmt": "msmt17",
        "msmt17": "msmt17",
        "msmt17v1": "msmt17",
        "msmt17v2": "msmt17",
        "synth": "market1501",
    }
    if key not in aliases:
        raise DatasetError(f"unknown dataset name {name!r}: choose one of {', '.join(KNOWN_DATASETS)}")
    return aliases[key]


def _candidates(base: Path, names: Sequence[str]) -> list[Path]:
    out = [base]
    for ds_name in names:
        out.extend(base / sub for sub in _FOLDER_NAMES[ds_name])
    return out


def find_dataset(root: str | os.PathLike[str] | None = None, name: str | None = None) -> Path:
    """Locate a dataset folder.

    ``root`` may be the dataset folder itself or a folder containing it under one of the standard
    names (``Market-1501-v15.09.15``, ``market1501``, ``DukeMTMC-reID``, ``MSMT17_V1``/``MSMT17_V2``).
    Without ``root``, :func:`default_search_roots` are searched. ``name`` restricts the search to one
    dataset (``market1501``, ``dukemtmc``, ``msmt17``).
    """
    wanted = [_normalise_name(name)] if name else list(KNOWN_DATASETS)
    bases = [Path(root).expanduser()] if root is not None else default_search_roots()
    if root is not None and not bases[0].exists():
        raise DatasetError(f"dataset folder {bases[0]} does not exist")
    tried: list[str] = []
    for base in bases:
        for cand in _candidates(base, wanted):
            tried.append(str(cand))
            layout = _layout_of(cand)
            if layout is None:
                continue
            if name and (layout == "msmt17") != (wanted[0] == "msmt17"):
                continue
            return cand
    hint = "" if root is not None else " (set $REID_DATA to the folder holding your datasets)"
    raise DatasetError(
        "no re-ID dataset found; looked for bounding_box_train/+bounding_box_test/+query/ or "
        f"list_train.txt+list_query.txt in: {', '.join(tried)}{hint}"
    )


def load_dataset(
    root: str | os.PathLike[str] | None = None, name: str | None = None, *, strict: bool = True
) -> ReidDataset:
    """Find and read a dataset, recognising its layout (see :func:`find_dataset`).

    A Market-style folder is read as DukeMTMC-reID when its image names follow the Duke pattern
    (or ``name='dukemtmc'``), otherwise as Market-1501. A folder written by ``reidserve synth``
    (it contains ``synth.json``) is named ``synth``.
    """
    folder = find_dataset(root, name)
    if _layout_of(folder) == "msmt17":
        return read_msmt17(folder, strict=strict)
    style = _normalise_name(name) if name else _detect_bbox_style(folder)
    if style == "dukemtmc":
        return read_dukemtmc(folder, strict=strict)
    label = "synth" if (folder / "synth.json").is_file() else "market1501"
    return read_market1501(folder, strict=strict, name=label)
