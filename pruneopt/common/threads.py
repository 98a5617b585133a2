"""Set a thread count for a block of code and restore the previous one afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block (``None``: unchanged)."""
    if not threads:
        yield
        return
    import torch  # lazy: the serving process imports this module and must not load torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads set to ``threads`` inside the block (``None``: unchanged)."""
    if not threads:
        yield
        return
    import faiss  # lazy: FAISS is only needed where indexes are built or searched

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
