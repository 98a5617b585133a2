from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from pruneopt.data import fashion_mnist as fm
from pruneopt.data import load_fashion_mnist, read_idx, train_val_split
from pruneopt.errors import DataNotFoundError, PruneoptError


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fake_dataset(folder, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10, gz)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10, gz)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No system copy, an empty cache and no $PRUNEOPT_DATA: only what a test puts in place is found."""
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PRUNEOPT_DATA", raising=False)
    return tmp_path


def test_read_idx_round_trip(tmp_path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", arr, gz=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    assert np.array_equal(read_idx(tmp_path / "b"), arr)


def test_read_idx_rejects_bad_files(tmp_path) -> None:
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(PruneoptError, match="magic"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(PruneoptError, match="declares shape"):
        read_idx(tmp_path / "y")
    (tmp_path / "z.gz").write_bytes(b"not gzip")
    with pytest.raises(PruneoptError, match="cannot read"):
        read_idx(tmp_path / "z.gz")


def test_search_order_data_dir_env_system_cache(isolated, monkeypatch) -> None:
    tmp = isolated
    make_fake_dataset(tmp / "cache" / "pruneopt" / "fashion-mnist", n_train=10)
    assert len(load_fashion_mnist().train) == 10
    make_fake_dataset(tmp / "system", n_train=20)
    assert len(load_fashion_mnist().train) == 20
    make_fake_dataset(tmp / "env" / "FashionMNIST" / "raw", n_train=30, gz=False)  # torchvision's layout
    monkeypatch.setenv("PRUNEOPT_DATA", str(tmp / "env"))
    assert len(load_fashion_mnist().train) == 30
    make_fake_dataset(tmp / "given" / "fashion-mnist", n_train=40)
    data = load_fashion_mnist(tmp / "given")
    assert len(data.train) == 40 and data.root == tmp / "given" / "fashion-mnist"
    assert data.train.images.shape == (40, 28, 28) and data.train.labels.dtype == np.int64


def test_missing_data_names_every_place_and_the_remedy(isolated, monkeypatch) -> None:
    tmp = isolated
    monkeypatch.setenv("PRUNEOPT_DATA", str(tmp / "env"))
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist()
    msg = str(info.value)
    for place in (tmp / "env", tmp / "system", tmp / "cache" / "pruneopt" / "fashion-mnist"):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    assert "\n" not in msg


def test_a_data_dir_without_the_files_is_an_error_never_a_fallback(isolated, monkeypatch) -> None:
    """With --data-dir given, a copy in $PRUNEOPT_DATA, the system folder or the cache is not used instead."""
    tmp = isolated
    for place in (tmp / "env", tmp / "system", tmp / "cache" / "pruneopt" / "fashion-mnist"):
        make_fake_dataset(place, n_train=10)
    monkeypatch.setenv("PRUNEOPT_DATA", str(tmp / "env"))
    assert len(load_fashion_mnist().train) == 10  # found there without --data-dir
    (tmp / "given").mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(tmp / "given", download_missing=True)
    msg = str(info.value)
    assert msg.startswith(f"Fashion-MNIST not found in --data-dir {tmp / 'given'}") and "\n" not in msg
    assert "no other place is searched" in msg and str(tmp / "env") not in msg
    assert fm.search_dirs(tmp / "given") == [tmp / "given", tmp / "given" / "fashion-mnist",
                                             tmp / "given" / "FashionMNIST" / "raw"]
    assert fm.locate(tmp / "given") is None


def test_download_failure_is_a_clear_error(isolated) -> None:
    with pytest.raises(DataNotFoundError, match="download of .* failed"):
        fm.download(isolated / "dl", mirror="http://127.0.0.1:9/", timeout=2)


def test_train_val_split_is_deterministic_stratified_and_disjoint(isolated) -> None:
    make_fake_dataset(isolated / "system", n_train=600)
    train = load_fashion_mnist().train
    tr, va = train_val_split(train, 1 / 6, seed=0)
    tr2, va2 = train_val_split(train, 1 / 6, seed=0)
    _, va3 = train_val_split(train, 1 / 6, seed=1)
    assert len(tr) + len(va) == 600 and len(va) == 100
    assert np.array_equal(va.images, va2.images) and np.array_equal(tr.labels, tr2.labels)
    assert not np.array_equal(va.images, va3.images)
    assert np.bincount(va.labels).tolist() == [10] * 10
    rows = {r.tobytes() for r in tr.images}
    assert not any(r.tobytes() in rows for r in va.images)
    with pytest.raises(PruneoptError, match="val fraction"):
        train_val_split(train, 1.5)


@pytest.mark.slow
@pytest.mark.skipif(fm.locate() is None, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")
def test_the_real_dataset() -> None:
    data = load_fashion_mnist()
    assert data.train.images.shape == (60000, 28, 28) and data.test.images.shape == (10000, 28, 28)
    assert np.bincount(data.train.labels).tolist() == [6000] * 10
    assert abs(data.train.images.mean() / 255 - fm.MEAN) < 1e-3
    assert abs(data.train.images.std() / 255 - fm.STD) < 1e-3
