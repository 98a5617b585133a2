"""Datasets for the search: Fashion-MNIST from its standard IDX files (see :mod:`.fashion_mnist`)."""

from .fashion_mnist import (
    FashionMNIST,
    Split,
    as_tensors,
    load_fashion_mnist,
    locate,
    read_idx,
    search_dirs,
    train_val_split,
)

__all__ = ["FashionMNIST", "Split", "as_tensors", "load_fashion_mnist", "locate", "read_idx", "search_dirs",
           "train_val_split"]
