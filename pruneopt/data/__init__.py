"""Datasets for the search (no torch): Fashion-MNIST from its IDX files (:mod:`.fashion_mnist`), CIFAR-10/100 from
their pickles (:mod:`.cifar`), image folders (:mod:`.image_folder`, decoded by :mod:`.images`), all behind one
interface (:mod:`.sources`); splits in memory or as files (:mod:`.splits`)."""

from .fashion_mnist import FashionMNIST, load_fashion_mnist, locate, read_idx, search_dirs
from .splits import FileSplit, Split, train_val_split

__all__ = ["FashionMNIST", "FileSplit", "Split", "load_fashion_mnist", "locate", "read_idx", "search_dirs",
           "train_val_split"]
