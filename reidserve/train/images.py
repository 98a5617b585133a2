"""Decoded, resized training and evaluation images, kept per run and shared between the runs of a process.

A search worker fine-tunes candidate after candidate on the same data, and decoding the images again was ~6% of
each candidate's time. So :class:`DecodedImages` (the images of one run) also files every image it decodes in
:data:`SHARED_IMAGES`, keyed by (path, modification time, file size, output size) so that a changed file is read
again, up to ``$REIDSERVE_IMAGE_CACHE_MB`` (default 1024) MiB; past that, images are kept per run only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..data import Item, load_image, resize

__all__ = [
    "SHARED_IMAGES",
    "DecodedImages",
    "SharedImageCache",
    "clear_shared_image_cache",
    "shared_image_cache_limit",
]

ImageKey = tuple[str, int, int, tuple[int, int]]


def shared_image_cache_limit() -> int:
    """Bytes the process-wide decoded-image cache may hold ($REIDSERVE_IMAGE_CACHE_MB, default 1024 MiB)."""
    try:
        return max(0, int(float(os.environ.get("REIDSERVE_IMAGE_CACHE_MB", "1024")) * 2**20))
    except ValueError:
        return 1024 * 2**20


class SharedImageCache:
    """Read-only decoded images shared by every run of this process, within :func:`shared_image_cache_limit`."""

    def __init__(self) -> None:
        self._images: dict[ImageKey, np.ndarray] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._images)

    def get(self, key: ImageKey) -> np.ndarray | None:
        return self._images.get(key)

    def offer(self, key: ImageKey, image: np.ndarray) -> bool:
        """Keep ``image`` (made read-only by the caller) if it fits under the limit; whether it was kept."""
        if self.nbytes + image.nbytes > shared_image_cache_limit():
            return False
        self._images[key] = image
        self.nbytes += image.nbytes
        return True

    def clear(self) -> None:
        self._images.clear()
        self.nbytes = 0


SHARED_IMAGES = SharedImageCache()


def clear_shared_image_cache() -> None:
    """Forget the process-wide decoded images."""
    SHARED_IMAGES.clear()


class DecodedImages:
    """Images of ``items`` resized to ``size`` (``uint8`` HxWx3); when ``cache`` is on, decoded once per run and
    shared with later runs of this process (see :data:`SHARED_IMAGES`)."""

    def __init__(self, items: Sequence[Item], size: tuple[int, int], cache: bool) -> None:
        self.items = list(items)
        self.size = size
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int) -> np.ndarray:
        if self._cache is None:
            return resize(load_image(self.items[index].path), self.size)
        img = self._cache.get(index)
        if img is not None:
            return img
        path = str(self.items[index].path)
        try:
            st = os.stat(path)
            key: ImageKey | None = (path, st.st_mtime_ns, st.st_size, tuple(self.size))  # type: ignore[assignment]
        except OSError:
            key = None  # load_image reports the problem
        img = SHARED_IMAGES.get(key) if key is not None else None
        if img is None:
            img = resize(load_image(path), self.size)
            img.setflags(write=False)  # shared between runs: a transform must not change it in place
            if key is not None:
                SHARED_IMAGES.offer(key, img)
        self._cache[index] = img
        return img
