"""What ``reidserve query import DIR`` sends: the gallery items of a folder of images (:func:`list_items`).

* A dataset in the Market-1501 layout (``bounding_box_test/``, ``query/``, ``bounding_box_train/``; DukeMTMC-reID
  too): the images of one split, the gallery (``bounding_box_test/``) unless another is asked for.
* Any other folder: the images directly in it (JPEG, PNG, WebP, BMP, GIF, PPM/PGM; not its sub-folders).

Each image becomes one item. Without a CSV its id is the file name without the extension (characters a gallery id
cannot hold become ``_``); a Market-1501 / DukeMTMC-style name (``0002_c1s1_000451_03.jpg``,
``0001_c2_f0046182.jpg``) also gives the camera (``c1``) and the person id (metadata ``pid``: ``-1`` junk, ``0`` a
distractor), and every item records its file name (metadata ``file``). Market names hold no clock time, so items get
none unless a CSV gives it.

With ``--csv FILE`` the CSV says what to import: a header row naming a ``file`` column (a path relative to the
folder, or absolute) and optionally ``id``, ``camera``, ``time`` (seconds since the epoch) and ``pid``; every other
column becomes metadata (numbers stay numbers). Only the files the CSV lists are imported. Empty cells are absent
values. Nothing here talks to a server; :mod:`reidserve.gallery_import` sends the items.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ReidserveError

__all__ = ["IMAGE_SUFFIXES", "SPLITS", "ImportItem", "ImportSourceError", "image_folder", "is_layout", "item_id",
           "list_items", "parse_name"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".ppm", ".pgm")
SPLITS = {"gallery": "bounding_box_test", "query": "query", "train": "bounding_box_train"}
_PERSON_CAMERA = re.compile(r"^(-?\d+)_c(\d+)")
_NOT_ID = re.compile(r"[^A-Za-z0-9_.:-]")
_RESERVED = {"file", "id", "camera", "time", "pid"}


class ImportSourceError(ReidserveError):
    """A folder or CSV that cannot be imported as given; the message says what to change."""


@dataclass(frozen=True)
class ImportItem:
    """One gallery item to import: its id, its image (a file, or bytes / an array in memory), camera, time and
    metadata. ``label`` names it in messages (the file)."""

    id: str
    image: Any  # a path, file bytes, a PIL image or a uint8 array (see reidserve.client.image_bytes)
    camera: str | None = None
    time: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


def parse_name(stem: str) -> tuple[int, str] | None:
    """``(person id, camera)`` of a Market-1501 / DukeMTMC-style file name without its extension (``0002_c1s1_..``
    -> ``(2, "c1")``), else None."""
    m = _PERSON_CAMERA.match(stem)
    return (int(m.group(1)), f"c{int(m.group(2))}") if m else None


def item_id(stem: str) -> str:
    """A gallery id made from a file name: characters outside ``A-Z a-z 0-9 _ . : -`` become ``_``, at most 128."""
    out = _NOT_ID.sub("_", stem)[:128]
    return "_" + out[1:] if out in (".", "..") else out


def is_layout(root: Path) -> bool:
    return any((root / sub).is_dir() for sub in SPLITS.values())


def image_folder(root: Path, split: str | None) -> Path:
    """The folder whose images are imported: ``root``'s ``split`` (default: the gallery) when ``root`` is in the
    Market-1501 layout, else ``root`` itself (where ``split`` cannot be asked for)."""
    if not root.is_dir():
        raise ImportSourceError(f"{root} is not a folder")
    if is_layout(root):
        folder = root / SPLITS[split or "gallery"]
        if not folder.is_dir():
            raise ImportSourceError(f"{root} is in the Market-1501 layout but has no {folder.name}/ (--split "
                                    f"{split or 'gallery'})")
        return folder
    if split is not None:
        raise ImportSourceError(f"--split {split}: {root} is not in the Market-1501 layout (no bounding_box_test/, "
                                "query/ or bounding_box_train/); give the folder of images itself without --split")
    return root


def _from_names(folder: Path) -> list[ImportItem]:
    names = sorted(e.name for e in os.scandir(folder)
                   if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES))
    items = []
    for name in names:
        stem = os.path.splitext(name)[0]
        parsed = parse_name(stem)
        meta: dict[str, Any] = {"pid": parsed[0]} if parsed else {}
        meta["file"] = name[:1024]
        items.append(ImportItem(item_id(stem), folder / name, parsed[1] if parsed else None, None, meta, name))
    return items


def _cell(value: str) -> Any:
    """A CSV cell as metadata: an int, a finite float, or the text."""
    text = value.strip()
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            break
        return number
    return text


def _from_csv(path: Path, folder: Path) -> list[ImportItem]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportSourceError(f"--csv {path} cannot be read ({exc})") from None
    if not rows or "file" not in (rows[0].keys()):
        raise ImportSourceError(f"--csv {path}: the first row must name the columns, one of them 'file' (and "
                                "optionally id, camera, time, pid and metadata columns)")
    items = []
    for n, row in enumerate(rows, 2):
        where = f"--csv {path} line {n}"
        name = (row.get("file") or "").strip()
        if not name:
            raise ImportSourceError(f"{where}: the file cell is empty")
        file = Path(name) if Path(name).is_absolute() else folder / name
        if not file.is_file():
            raise ImportSourceError(f"{where}: {file} does not exist")
        parsed = parse_name(file.stem)
        meta: dict[str, Any] = {k: _cell(v) for k, v in row.items()
                                if k and k not in _RESERVED and v is not None and v.strip()}
        pid = (row.get("pid") or "").strip()
        if pid or parsed:
            try:
                meta["pid"] = int(pid) if pid else parsed[0]  # type: ignore[index]
            except ValueError:
                raise ImportSourceError(f"{where}: pid {pid!r} is not an integer") from None
        meta["file"] = name[:1024]
        time_text = (row.get("time") or "").strip()
        try:
            time = float(time_text) if time_text else None
        except ValueError:
            raise ImportSourceError(f"{where}: time {time_text!r} is not a number (seconds since the epoch)") from None
        camera = (row.get("camera") or "").strip() or (parsed[1] if parsed else None)
        items.append(ImportItem((row.get("id") or "").strip() or item_id(file.stem), file, camera, time, meta, name))
    return items


def list_items(root: str | os.PathLike[str], *, split: str | None = None,
               csv_file: str | os.PathLike[str] | None = None) -> tuple[Path, list[ImportItem]]:
    """The folder imported from and its items (see the module docstring); ids are checked to be unique."""
    folder = image_folder(Path(root), split)
    items = _from_csv(Path(csv_file), folder) if csv_file is not None else _from_names(folder)
    if not items:
        raise ImportSourceError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise ImportSourceError(f"{seen[it.id]} and {it.label} would both be item {it.id!r}; rename one (or give "
                                    "ids in a --csv)")
        seen[it.id] = it.label
    return folder, items
