"""Datasets for the search: Fashion-MNIST from its standard IDX files (see :mod:`.fashion_mnist`; no torch)."""

from .fashion_mnist import (
    FashionMNIST,
    Split,
    load_fashion_mnist,
    locate,
    read_idx,
    search_dirs,
    train_val_split,
)

__all__ = ["FashionMNIST", "Split", "load_fashion_mnist", "locate", "read_idx", "search_dirs",
           "train_val_split"]
